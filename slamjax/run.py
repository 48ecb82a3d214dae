"""One runner for every :class:`~slamjax.Algorithm`: seeds × a hyperparameter grid, one program.

* :func:`iterate` — ``num_steps`` steps with ``lax.scan`` (pure, differentiable; optional
  rematerialised chunks). Step t uses the key ``fold_in(run_key, t)``.
* :func:`solve` — ``init`` + :func:`iterate` from (x0, y0): the pure end-to-end function.
* :func:`run` — the people-facing run: ``seeds=[...]`` and ``grid=...`` (a dict of value
  lists, crossed, or a list of points) become vmapped lanes of **one** compiled program;
  metrics every ``log_every`` steps; a host loop over compiled chunks gives one progress bar,
  NaN/Inf detection per lane (a diverged lane keeps its last finite state and is marked with
  the step of divergence, the others go on), an optional early-stop callback and JSON output.

:func:`drive` and :func:`progress_bar` are the host-loop pieces, shared with the RL trainer.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import itertools
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.algorithm import (COUNTERS, Algorithm, evaluate, merge_static, problem_of,
                               split_static)
from slamjax.caches import ProgramCache
from slamjax.problem import (DATA_AXES, check_finite, check_precision, ll_min_curvature,
                             probe_problem)

__all__ = ["RunResult", "run", "solve", "checked", "iterate", "drive", "progress_bar",
           "DivergenceWarning", "CurvatureWarning", "grid_points", "compiled_programs",
           "as_key", "check_output_dir", "check_output_file", "write_text"]


class DivergenceWarning(RuntimeWarning):
    """A run (or a lane of a batched run) produced NaN/Inf and was stopped."""


class CurvatureWarning(RuntimeWarning):
    """The lower-level Hessian ∇²_yy g is not positive definite at the start point: the
    hypergradient solve of eq. (23) (CG / Neumann / exact) then returns garbage."""


# ----------------------------------------------------------------------------------------
# input checks shared by solve and run (eager: on concrete values, before any compile)
# ----------------------------------------------------------------------------------------
def as_key(key, name: str = "key"):
    """A PRNG key from any of the forms JAX users hold: ``None`` (seed 0), an int seed, a
    typed key (``jax.random.key``) or a raw ``uint32[2]`` key (``jax.random.PRNGKey``)."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    shape = tuple(jnp.shape(key)) if dtype is not None else None
    if shape == () and jnp.issubdtype(dtype, jnp.integer):
        return jax.random.key(key)  # an integer seed array (traced or not)
    if shape == (2,) and dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)  # jax.random.PRNGKey(seed)
    raise TypeError(f"{name} must be an int seed, jax.random.key(seed) or "
                    f"jax.random.PRNGKey(seed); got {type(key).__name__}"
                    + (f" of shape {shape} and dtype {dtype}" if dtype is not None else ""))


def _concrete(tree) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


#: CG iterations of the start-point curvature check (exact when dim(y) per agent ≤ this)
CURVATURE_ITERS = 32


def _ll_curvature_impl(x, y, data, *, problem, iters):
    """(min, max) curvature CG meets on each agent's ∇²_yy g at (x, y): arrays over agents."""
    key = jax.random.key(0)  # one fixed minibatch for every agent (stochastic problems)

    def one(xi, yi, di):
        return ll_min_curvature(problem, xi, yi, di, problem.sample_batch(key, di), iters)

    return jax.vmap(one, in_axes=(0, 0, DATA_AXES))(x, y, data)


_ll_curvature = jax.jit(_ll_curvature_impl, static_argnames=("problem", "iters"))
_CURVATURE: dict = {}  # compiled curvature checks, keyed like the runner's chunks


def _curvature_check(problem, x, y, data) -> None:
    """A :class:`CurvatureWarning` if CG meets pᵀHp ≤ 0 on some agent's ∇²_yy g at (x, y)."""
    dim = sum(int(np.prod(jnp.shape(leaf)[1:])) for leaf in jax.tree.leaves(y))
    args = (x, y, data)
    statics = dict(problem=problem, iters=min(dim, CURVATURE_ITERS))
    sig = (problem, statics["iters"], _signature(args))
    if sig not in _CURVATURE:  # a one-off computation: compiled without optimization passes
        _CURVATURE[sig] = _ll_curvature.lower(*args, **statics).compile(
            compiler_options={"xla_backend_optimization_level": 0})
    lo, hi = jax.device_get(_CURVATURE[sig](*args))
    bad = np.nonzero(~(lo > 0))[0]
    if not bad.size:
        return
    worst = int(bad[np.argmin(lo[bad])]) if np.isfinite(lo[bad]).any() else int(bad[0])
    warnings.warn(
        f"the lower-level Hessian ∇²_yy g is not positive definite at (x0, y0): conjugate "
        f"gradients meets curvature pᵀHp/pᵀp = {lo[worst]:.3g} ≤ 0 on agent {worst} "
        f"({bad.size} of {lo.size} agents; largest curvature seen {np.max(hi):.3g}). "
        f"The hypergradient (eq. 23) solves ∇²_yy g·v = ∇_y f, which needs g strongly convex "
        f"in y: CG/Neumann return garbage and the run will diverge. Make g strongly convex in "
        f"y, e.g. add a ridge (mu/2)·‖y‖² to g with mu well above {-float(lo[worst]):.3g} "
        f"(the most negative curvature seen; the smallest eigenvalue can be lower), or fix "
        f"the problem's hvp_yy.", CurvatureWarning, stacklevel=4)


def _check_precision(data, x0, y0) -> None:
    check_precision("x0", x0)
    check_precision("y0", y0)
    check_precision("data", data)


def _eager_checks(algorithm, params, data, x0, y0, state) -> None:
    """What :func:`solve` and :func:`run` validate before any compile: the algorithm's own
    check (shapes, hyperparameter values), half precision, NaN/Inf in x0, y0 and the data,
    per-agent shapes against the problem's f and g, and the LL curvature at the start.
    Values that are traced (under jit/grad/vmap) are skipped: see :func:`checked`.
    (:func:`_check_precision` runs before ``init``.)"""
    if algorithm.check is not None:
        algorithm.check(params, state, data)  # shapes always; numbers if concrete
    check_finite("x0", x0)
    check_finite("y0", y0)
    check_finite("data", data)
    problem = problem_of(algorithm)
    if problem is None or not hasattr(state, "x") or not hasattr(state, "y"):
        return
    if not _concrete((state.x, state.y)):
        return
    probe_problem(problem, state.x, state.y, data, jax.eval_shape(jax.random.key, 0))
    if problem.ul_grad is None and _concrete(data):
        _curvature_check(problem, state.x, state.y, data)


# ----------------------------------------------------------------------------------------
# checks under tracing (jax.experimental.checkify)
# ----------------------------------------------------------------------------------------
#: set by :func:`checked` while it traces: ``solve(check=True)`` then also emits the
#: value checks as ``checkify.check`` s, which run inside the compiled program
_TRACED_CHECKS = contextvars.ContextVar("slamjax_traced_checks", default=False)


def _traced_input_checks(algorithm, params, data, x0, y0) -> None:
    from jax.experimental import checkify

    from slamjax.slam import SLAMParams

    if isinstance(params, SLAMParams):
        rule, cond = "> 0", lambda v: v > 0  # noqa: E731
    elif problem_of(algorithm) is not None:  # the library's peers: eager rule is ≥ 0
        rule, cond = "≥ 0", lambda v: v >= 0  # noqa: E731
    else:
        rule, cond = "finite", lambda v: True  # noqa: E731
    for field in getattr(params, "_fields", ()):
        v = jnp.ravel(jnp.asarray(getattr(params, field)))
        if not jnp.issubdtype(v.dtype, jnp.inexact):
            continue
        ok = jnp.isfinite(v) & cond(v)
        checkify.check(jnp.all(ok), f"solve (checked under jit): {type(params).__name__}."
                       f"{field}={{}} must be finite" + ("" if rule == "finite" else
                                                         f" and {rule}"),
                       v[jnp.argmin(ok)])
    for name, tree in (("x0", x0), ("y0", y0), ("data", data)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                checkify.check(jnp.all(jnp.isfinite(leaf)),
                               f"solve (checked under jit): {name}"
                               f"{jax.tree_util.keystr(path)} has NaN/Inf entries; pass "
                               "finite values")


def checked(fn: Callable, errors=None) -> Callable:
    """``fn`` (e.g. :func:`solve`, or a loss that calls it) with the value checks compiled in:
    ``checked(fn)(*args, **kw) -> (error, out)``, ``jax.experimental.checkify`` style::

        err, state = jax.jit(checked(slamjax.solve), static_argnames="num_steps")(
            alg, params, data, x0, y0, key, num_steps=200)
        err.throw()   # raises if a check failed; a no-op otherwise

    Every :func:`solve` traced inside ``fn`` checks its hyperparameters (SLAM: finite and
    > 0), that x0, y0 and the data are finite, and that the final state is finite.
    ``errors`` (default ``checkify.user_checks``) can add checkify's own per-operation checks,
    e.g. ``checkify.user_checks | checkify.nan_checks`` to locate the first NaN. Wrap before
    jitting — ``jax.jit(checked(f))``, not ``checked(jax.jit(f))`` (a jitted function may
    reuse a trace made without the checks; that order is refused). Non-array arguments
    (``num_steps``, Python numbers) stay static, so they are checked eagerly as usual.
    """
    from jax.experimental import checkify

    if hasattr(fn, "lower"):
        raise TypeError("checked() must wrap the function before jit: use "
                        "jax.jit(checked(f)), not checked(jax.jit(f)) (a jitted "
                        "function may reuse a trace made without the checks)")
    errs = checkify.user_checks if errors is None else errors

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        dyn, static = split_static((args, kwargs))

        def inner(dyn):
            a, kw = merge_static(dyn, static)
            return fn(*a, **kw)

        token = _TRACED_CHECKS.set(True)
        try:
            return checkify.checkify(inner, errors=errs)(dyn)
        finally:
            _TRACED_CHECKS.reset(token)

    return wrapped


# ----------------------------------------------------------------------------------------
# pure pieces
# ----------------------------------------------------------------------------------------
def _check_algorithm(algorithm):
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"expected a slamjax.Algorithm (e.g. slamjax.slam(problem, graph, "
                        f"config)), got {type(algorithm).__name__}")


def iterate(algorithm: Algorithm, params, data, state, key, num_steps: int, *,
            checkpoint_every: int | None = None, start=0):
    """``num_steps`` steps of ``algorithm`` from ``state`` with ``lax.scan``; step t (counted
    from ``start``) uses ``fold_in(key, t)``. Pure and differentiable.

    ``checkpoint_every=c`` runs an outer scan over T/c rematerialised chunks of c steps, so
    reverse-mode memory grows like O(T/c + c) instead of O(T).
    """
    num_steps = int(num_steps)

    def body(carry, _):
        s, t = carry
        s, _info = algorithm.step(jax.random.fold_in(key, t), s, params, data)
        return (s, t + 1), None

    carry = (state, jnp.asarray(start, jnp.int32))
    if not checkpoint_every or checkpoint_every >= num_steps:
        return lax.scan(body, carry, None, length=num_steps)[0][0]
    c = int(checkpoint_every)
    outer, rem = divmod(num_steps, c)

    @jax.checkpoint
    def chunk(cr, _):
        return lax.scan(body, cr, None, length=c)[0], None

    carry = lax.scan(chunk, carry, None, length=outer)[0]
    if rem:
        carry = lax.scan(body, carry, None, length=rem)[0]
    return carry[0]


def solve(algorithm: Algorithm, params, data, x0, y0, key, num_steps: int, *,
          checkpoint_every: int | None = None, check: bool | str = True):
    """Pure end-to-end solve: ``init`` then ``num_steps`` steps. Differentiable with respect
    to ``params``, ``data``, ``x0`` and ``y0`` (``jax.grad`` / ``jax.jvp``). ``key``: an int
    seed, ``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``.

    ``check=True`` validates eagerly whatever is concrete (shapes and dtypes always;
    hyperparameter values, NaN/Inf in x0/y0/data, the problem's f and g at the per-agent
    shapes and the LL curvature when the values are concrete — skipped under tracing).
    ``check="traced"`` also emits the value checks as ``checkify.check`` s so that they run
    inside a compiled program (the call must then be inside ``jax.experimental.checkify``;
    :func:`checked` does both). ``check=False`` checks nothing."""
    _check_algorithm(algorithm)
    if check not in (True, False, "traced"):
        raise ValueError(f"check must be True, False or 'traced', got {check!r}")
    key = as_key(key)
    if check:
        _check_precision(data, x0, y0)
    state = algorithm.init(x0, y0, data)
    traced = check == "traced" or (check is True and _TRACED_CHECKS.get())
    if check:
        _eager_checks(algorithm, params, data, x0, y0, state)
    if traced:
        _traced_input_checks(algorithm, params, data, x0, y0)
    out = iterate(algorithm, params, data, state, key, num_steps,
                  checkpoint_every=checkpoint_every)
    if traced:
        from jax.experimental import checkify

        checkify.check(_all_finite(out), f"solve (checked under jit): the state after "
                       f"{int(num_steps)} steps has NaN/Inf (the run diverged): reduce the "
                       "step sizes or the penalty (for SLAM: raise alpha/beta or lower rho), "
                       "or use slamjax.run, which stops a diverged lane at its last finite "
                       "state")
    return out


# ----------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`run`.

    ``history[name]`` has shape (num_logs,), with leading axes (grid points,) if ``grid`` and
    (seeds,) if ``seeds`` were given — e.g. (G, S, num_logs). ``steps`` is the iteration
    index of each log. ``state`` is the last finite state (same leading axes).
    ``diverged_at``: ``None`` if every lane stayed finite; else, for a single run, the step by
    which it diverged, and for a batched run an int array over the lanes (−1 = finite).
    ``messages`` / ``minibatches`` histories (when the algorithm reports them) are cumulative
    counts since step 0.
    """

    state: Any
    history: dict
    steps: np.ndarray
    compile_time: float
    run_time: float
    num_steps: int
    diverged_at: Any = None
    grid: list | None = None
    seeds: list | None = None

    @property
    def steps_per_sec(self) -> float:
        return self.num_steps / self.run_time if self.run_time > 0 else float("nan")

    def final(self) -> dict:
        """Last logged value of every metric (mean over lanes when batched)."""
        return {k: float(np.mean(np.asarray(v)[..., -1])) for k, v in self.history.items()}

    def to_dict(self) -> dict:
        div = self.diverged_at
        return {
            "steps": self.steps.tolist(),
            "history": {k: np.asarray(v).tolist() for k, v in self.history.items()},
            "final": self.final(),
            "grid": self.grid,
            "seeds": self.seeds,
            "compile_time_s": self.compile_time,
            "run_time_s": self.run_time,
            "steps_per_sec": self.steps_per_sec,
            "num_steps": self.num_steps,
            "final_step": int(self.steps[-1]) if len(self.steps) else None,
            "diverged_at": np.asarray(div).tolist() if div is not None else None,
        }

    def save_json(self, path, **meta) -> Path:
        """Write :meth:`to_dict` (and ``meta``) as JSON to the file ``path``. A bad path
        (a directory, a path under a file, an unwritable place) is a ``ValueError`` naming
        it before anything is written; the file is replaced atomically, so an earlier
        result at ``path`` is never left half-written."""
        path = check_output_file(path, "save_json: path")
        return write_text(path, json.dumps({**meta, **self.to_dict()}, indent=1,
                                           default=_jsonable))


# ----------------------------------------------------------------------------------------
# output paths: checked before any compute, written atomically
# ----------------------------------------------------------------------------------------
def _existing_ancestor(path: Path, arg: str) -> Path:
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{arg} {path}: {anc} is a file, so nothing can be created under "
                         f"it; pass a path under a directory (e.g. {arg} "
                         f"{anc.parent / 'results'})")
    return anc


def _check_writable(where: Path, target: Path, arg: str) -> None:
    try:  # a probe write (os.access says yes to root even on read-only file systems)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        alt = Path(tempfile.gettempdir()) / "slamjax-results"
        raise ValueError(f"{arg} {target}: cannot write in {where} ({e.strerror or e}); "
                         f"pass a writable place (e.g. {arg} {alt})") from None


def check_output_dir(path, arg: str = "--out") -> Path:
    """``path`` as an output *directory* that can be created and written, else a
    ``ValueError`` naming ``arg`` and a valid alternative. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{arg} {path} is an existing file, not a directory: pass a "
                             f"directory (e.g. {arg} {path.parent / 'results'}) or move "
                             "the file away")
        _check_writable(path, path, arg)
    else:
        _check_writable(_existing_ancestor(path, arg), path, arg)
    return path


def check_output_file(path, arg: str = "--out") -> Path:
    """``path`` as an output *file* (an existing file is replaced): not a directory, under a
    directory that exists or can be created, writable. Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{arg} {path} is a directory, but it names an output file: pass a "
                         f"file path (e.g. {arg} {path / 'results.json'})")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{arg} {path}: {parent} is a file, so nothing can be created under "
                         f"it; pass a path under a directory (e.g. {arg} "
                         f"{parent.parent / path.name})")
    where = parent if parent.exists() else _existing_ancestor(path, arg)
    _check_writable(where, path, arg)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{arg} {path} exists and is read-only: pass another file name "
                         f"(e.g. {arg} {path.with_name(path.stem + '-new' + path.suffix)})")
    return path


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same directory, then
    ``os.replace``): a failed write leaves an earlier file at ``path`` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(o):
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if dataclasses.is_dataclass(o):
        return {"type": type(o).__name__, **dataclasses.asdict(o)}
    return repr(o)


# ----------------------------------------------------------------------------------------
# the compiled chunk: nlogs × (log_every steps, metrics) for one lane, vmapped over lanes
# ----------------------------------------------------------------------------------------
def _all_finite(tree) -> jax.Array:
    ok = jnp.asarray(True)
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def _lane_chunk(alg, params, data, carry, key, log_every, nlogs):
    def one_log(c, _):
        state, t, alive, div = c

        def body(sc, _):
            s, tt = sc
            s, info = alg.step(jax.random.fold_in(key, tt), s, params, data)
            return (s, tt + 1), info

        (new, t2), infos = lax.scan(body, (state, t), None, length=log_every)
        mets = evaluate(alg, new, data)
        for k, v in dict(infos).items():
            if jnp.ndim(v) != 1:
                continue  # only scalar info entries are logged
            mets[k] = jnp.sum(v) if k in COUNTERS else v[-1]
        ok = _all_finite(new) & _all_finite({k: v for k, v in mets.items()
                                             if k not in COUNTERS})
        keep = alive & ok
        state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
        div = jnp.where(alive & ~ok, t2, div)
        nan = lambda v: jnp.where(alive, v, jnp.full_like(v, jnp.nan))  # noqa: E731
        mets = {k: nan(jnp.asarray(v, jnp.result_type(float))) for k, v in mets.items()}
        return (state, t2, keep, div), mets

    return lax.scan(one_log, carry, None, length=nlogs)


def _vmapped(fn, batch):
    """``fn(params, key, carry)`` vmapped over seeds (key, carry) and over grid points
    (params, key, carry) as ``batch = (grid, seeds)`` says."""
    grid, seeds = batch
    if seeds:
        fn = jax.vmap(fn, in_axes=(None, 0, 0))
    if grid:
        fn = jax.vmap(fn, in_axes=(0, 0, 0))
    return fn


def _chunk_impl(dyn, params, data, carry, key, *, static, log_every, nlogs, batch):
    alg = merge_static(dyn, static)
    lane = lambda p, k, c: _lane_chunk(alg, p, data, c, k, log_every, nlogs)  # noqa: E731
    return _vmapped(lane, batch)(params, key, carry)


_chunk = jax.jit(_chunk_impl, static_argnames=("static", "log_every", "nlogs", "batch"))

#: compiled chunk programs, keyed on the static arguments and the abstract signature of the
#: traced ones (shape, dtype, weak type, sharding): a new run with other numbers — other
#: hyperparameters, data values, seeds — reuses the program; compile time is measured apart.
#: Bounded (least recently used out): each live program holds memory mappings
#: (:mod:`slamjax.caches`); ``slamjax.clear_caches()`` empties it.
_PROGRAMS = ProgramCache(maxsize=32)


def _signature(args):
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((jnp.shape(a), str(jnp.result_type(a)), getattr(a, "weak_type", False),
                           getattr(a, "sharding", None)) for a in leaves)


def _compiled(fn, args, statics):
    key = (fn, tuple(sorted(statics.items())), _signature(args))
    return _PROGRAMS.get(key, lambda: fn.lower(*args, **statics).compile())


def compiled_programs() -> int:
    """How many chunk programs :func:`run` has compiled in this process (a run with new
    numbers but the same shapes and static configuration adds none)."""
    return _PROGRAMS.compiles


def _eval_impl(dyn, data, state, *, static, batch):
    alg = merge_static(dyn, static)
    fn = _vmapped(lambda p, k, s: evaluate(alg, s, data), batch)
    return fn(None, None, state)


_eval = jax.jit(_eval_impl, static_argnames=("static", "batch"))


# ----------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------
def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "step"):
    """The library's one progress display (tqdm; ``None`` when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=True, dynamic_ncols=True)


def drive(chunk_fn: Callable, carry, sizes: Sequence[int], *, desc: str, progress: bool = True,
          unit: str = "step", per_unit: int = 1,
          on_chunk: Callable[[Any, Any, int], dict | bool | None] | None = None):
    """Host loop over compiled chunks: ``carry, out = chunk_fn(size, carry)`` for each size.

    ``on_chunk(carry, out, done)`` sees every chunk's output after it ran (``done`` units so
    far); it may return a dict (shown beside the progress bar) or ``True`` to stop early.
    Returns (carry, list of outputs, wall seconds).
    """
    bar = progress_bar(sum(sizes) * per_unit, desc, progress, unit)
    outs, done, t0 = [], 0, time.perf_counter()
    try:
        for size in sizes:
            carry, out = chunk_fn(size, carry)
            out = jax.device_get(out)
            outs.append(out)
            done += size
            note = on_chunk(carry, out, done) if on_chunk is not None else None
            if bar is not None:
                bar.update(size * per_unit)
                if isinstance(note, dict):
                    bar.set_postfix(note, refresh=False)
            if note is True:
                break
    finally:
        if bar is not None:
            bar.close()
    jax.block_until_ready(carry)
    return carry, outs, time.perf_counter() - t0


def grid_points(params, grid) -> list[dict] | None:
    """The grid as a list of points: a dict of value lists is crossed (in the order given),
    a list of dicts is taken as it is. Names must be fields of ``params``."""
    if grid is None:
        return None
    fields = getattr(params, "_fields", None)
    if fields is None:
        raise TypeError("grid needs params to be a NamedTuple (e.g. SLAMParams)")
    if isinstance(grid, dict):
        names = list(grid)
        values = [list(np.atleast_1d(np.asarray(v, dtype=float))) for v in grid.values()]
        points = [dict(zip(names, map(float, c))) for c in itertools.product(*values)]
    else:
        points = [{k: float(v) for k, v in dict(p).items()} for p in grid]
    if not points:
        raise ValueError("grid is empty")
    for p in points:
        bad = set(p) - set(fields)
        if bad:
            raise ValueError(f"grid names {sorted(bad)} are not fields of "
                             f"{type(params).__name__} {fields}")
    return points


def _chunk_logs(num_logs: int, updates: int = 20) -> int:
    """Logs per compiled chunk: about ``updates`` progress updates, preferring a divisor of
    ``num_logs`` so that a single chunk size is compiled."""
    target = max(1, math.ceil(num_logs / updates))
    for d in range(target, min(num_logs, 4 * target) + 1):
        if num_logs % d == 0:
            return d
    return target


def run(algorithm: Algorithm, params, data, x0, y0, *, num_steps: int = 1000,
        log_every: int = 10, seed: int = 0, seeds: Sequence[int] | None = None,
        grid: dict | Sequence[dict] | None = None, batched_init: bool = False,
        progress: bool = True, desc: str | None = None, logs_per_chunk: int | None = None,
        callback: Callable[[np.ndarray, dict], Any] | None = None) -> RunResult:
    """Run ``algorithm`` for ``num_steps`` steps, logging its metrics every ``log_every``.

    ``seeds=[...]`` runs every seed and ``grid`` every hyperparameter point (a dict
    ``{"rho": [...], "alpha": [...]}`` is crossed; a list of dicts is taken as given) as lanes
    of one vmapped, compiled program: histories get leading axes (grid, seeds). The same seed
    always gives the same numbers, whatever the chunking or the other lanes.
    ``batched_init=True``: x0 and y0 carry a leading axis of ``len(seeds)`` (one start per
    seed). ``callback(steps, history)`` runs after every chunk on the host: return ``True`` to
    stop, an int to set the total number of steps to run (rounded up to a chunk), else None.
    """
    _check_algorithm(algorithm)
    num_steps, log_every = int(num_steps), int(log_every)
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    if log_every < 1 or num_steps % log_every:
        raise ValueError(f"log_every={log_every} must be ≥ 1 and divide num_steps={num_steps}")
    if not hasattr(params, "_fields"):
        raise TypeError(f"params must be the algorithm's NamedTuple of hyperparameters (e.g. "
                        f"slamjax.SLAMParams), got {type(params).__name__}")
    # strong-typed arrays: a Python float and a float32 array give the same program
    params = type(params)(*(jnp.asarray(np.asarray(p)) for p in params))
    points = grid_points(params, grid)
    seed_list = None if seeds is None else [int(s) for s in seeds]
    if seed_list is not None and not seed_list:
        raise ValueError("seeds is empty")
    if batched_init and seed_list is None:
        raise ValueError("batched_init=True needs seeds=[...] (one x0, y0 per seed)")

    # eager checks on concrete values: once, or once per grid point
    _check_precision(data, x0, y0)
    if batched_init:
        state0 = jax.vmap(algorithm.init, in_axes=(0, 0, None))(x0, y0, data)
        one_state = jax.tree.map(lambda a: a[0], state0)
    else:
        state0 = one_state = algorithm.init(x0, y0, data)
    for i, p in enumerate(points or [{}]):
        if i == 0:  # all input checks once; the algorithm's parameter check per grid point
            _eager_checks(algorithm, params._replace(**p), data, x0, y0, one_state)
        elif algorithm.check is not None:
            algorithm.check(params._replace(**p), one_state, data)
    if not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state0)
               if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)):
        # the runner's "last finite state" starts here: it must be finite
        raise ValueError("the initial state built by the algorithm's init from x0, y0 has "
                         "NaN/Inf entries although x0, y0 and the data are finite (overflow?): "
                         "rescale x0, y0 or the data")

    G = len(points) if points else None
    S = len(seed_list) if seed_list is not None else None
    lead = tuple(d for d in (G, S) if d is not None)
    batch = (G is not None, S is not None)
    if G is not None:
        params = type(params)(*(jnp.asarray([pt.get(f, np.asarray(getattr(params, f)))
                                             for pt in points],
                                            dtype=jnp.result_type(getattr(params, f)))
                                for f in params._fields))
    keys = jax.random.key(int(seed)) if S is None else \
        jax.vmap(jax.random.key)(jnp.asarray(seed_list, dtype=jnp.uint32))
    if G is not None:
        keys = jnp.broadcast_to(keys, (G,) + keys.shape) if S is not None else \
            jnp.broadcast_to(keys, (G,))
    skip = 1 if batched_init else 0  # state0 already carries the seed axis
    state = jax.tree.map(lambda a: jnp.broadcast_to(a, lead + jnp.shape(a)[skip:]), state0)
    carry = (state, jnp.zeros(lead, jnp.int32), jnp.ones(lead, bool), jnp.full(lead, -1,
                                                                              jnp.int32))

    dyn, static = split_static(algorithm)
    num_logs = num_steps // log_every
    per_chunk = min(logs_per_chunk or _chunk_logs(num_logs), num_logs)
    kw = dict(static=static, log_every=log_every, batch=batch)

    t0 = time.perf_counter()

    def get(nlogs):
        return _compiled(_chunk, (dyn, params, data, carry, keys), dict(nlogs=nlogs, **kw))

    get(per_chunk)
    if num_logs % per_chunk:
        get(num_logs % per_chunk)
    first = jax.device_get(_eval(dyn, data, state, static=static, batch=batch))
    compile_time = time.perf_counter() - t0

    sizes = [per_chunk] * (num_logs // per_chunk) + ([num_logs % per_chunk]
                                                      if num_logs % per_chunk else [])
    logs = [{k: np.asarray(v, dtype=float)[..., None] for k, v in first.items()}]
    stop_at = [num_logs]
    name = desc or "run"

    def on_chunk(c, mets, done):
        logs.append({k: np.asarray(v) for k, v in mets.items()})
        alive = np.asarray(c[2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lanes
            note = {k: f"{np.nanmean(np.asarray(v)[..., -1]):.2e}" for k, v in mets.items()
                    if k not in COUNTERS}
        if not alive.any():
            return True
        if callback is not None:
            hist = _history(logs)
            steps = np.arange(hist[next(iter(hist))].shape[-1]) * log_every if hist else None
            ans = callback(steps, hist)
            if ans is True:
                return True
            if ans is not None and ans is not False:
                stop_at[0] = min(num_logs, math.ceil(int(ans) / log_every))
        return True if done >= stop_at[0] else note

    def chunk_fn(nlogs, c):
        return get(nlogs)(dyn, params, data, c, keys)

    carry, _, run_time = drive(chunk_fn, carry, sizes, desc=name, progress=progress,
                               per_unit=log_every, on_chunk=on_chunk)
    state, t_final, alive, div = carry
    history = _history(logs, counters_from=first)
    num_logged = history[next(iter(history))].shape[-1] - 1 if history else len(logs) - 1
    steps = np.arange(num_logged + 1) * log_every
    div = np.asarray(div)
    if not lead:
        diverged = None if bool(alive) else int(div)
        if diverged is not None:
            keep = diverged // log_every  # logs strictly before the divergent one
            history = {k: v[..., :keep] for k, v in history.items()}
            steps = steps[:keep]
            warnings.warn(f"{name}: non-finite values (NaN/Inf) by step {diverged}; stopped. "
                          f"Returning the last finite state (step {diverged - log_every}) and "
                          "the history before it. Reduce the step sizes or the penalty "
                          "(for SLAM: 1/alpha, 1/beta or rho).", DivergenceWarning,
                          stacklevel=2)
        ran = diverged if diverged is not None else int(steps[-1])
    else:
        bad = div >= 0
        diverged = div if bad.any() else None
        if bad.any():
            where = [_lane_label(idx, points, seed_list, batch) + f" at step {div[idx]}"
                     for idx in zip(*np.nonzero(bad))]
            warnings.warn(f"{name}: {int(bad.sum())} of {bad.size} lanes diverged (NaN/Inf) "
                          f"and were frozen at their last finite state: "
                          + "; ".join(where[:8]) + (" …" if len(where) > 8 else ""),
                          DivergenceWarning, stacklevel=2)
        ran = int(steps[-1])
    return RunResult(state=state, history=history, steps=steps, compile_time=compile_time,
                     run_time=run_time, num_steps=ran, diverged_at=diverged, grid=points,
                     seeds=seed_list)


def _history(logs, counters_from=None) -> dict:
    if not logs:
        return {}
    keys = list(logs[0]) + [k for lg in logs[1:2] for k in lg if k not in logs[0]]
    ref = np.asarray(logs[0][next(iter(logs[0]))]) if logs[0] else None

    def get(lg, k):  # counters are not part of the step-0 metrics: they start at 0
        return np.asarray(lg[k], dtype=float) if k in lg else np.zeros(ref.shape)

    hist = {k: np.concatenate([get(lg, k) for lg in logs], axis=-1) for k in keys}
    for k in COUNTERS:  # per-interval sums -> cumulative counts (float64 on the host)
        if k in hist:
            hist[k] = np.cumsum(np.nan_to_num(hist[k]), axis=-1)
    return hist


def _lane_label(idx, points, seeds, batch) -> str:
    idx = list(idx)
    parts = []
    if batch[0]:
        parts.append(", ".join(f"{k}={v:g}" for k, v in points[idx.pop(0)].items()))
    if batch[1]:
        parts.append(f"seed {seeds[idx.pop(0)]}")
    return "(" + "; ".join(parts) + ")"
