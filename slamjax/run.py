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

import dataclasses
import itertools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.algorithm import COUNTERS, Algorithm, evaluate, merge_static, split_static

__all__ = ["RunResult", "run", "solve", "iterate", "drive", "progress_bar",
           "DivergenceWarning", "grid_points", "compiled_programs"]


class DivergenceWarning(RuntimeWarning):
    """A run (or a lane of a batched run) produced NaN/Inf and was stopped."""


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
          checkpoint_every: int | None = None, check: bool = True):
    """Pure end-to-end solve: ``init`` then ``num_steps`` steps. Differentiable with respect
    to ``params``, ``data``, ``x0`` and ``y0`` (``jax.grad`` / ``jax.jvp``). ``check`` runs the
    algorithm's eager checks when the inputs are concrete (skipped under tracing)."""
    _check_algorithm(algorithm)
    state = algorithm.init(x0, y0, data)
    if check and algorithm.check is not None:
        algorithm.check(params, state, data)  # shapes always; numbers if concrete
    return iterate(algorithm, params, data, state, key, num_steps,
                   checkpoint_every=checkpoint_every)


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
            "diverged_at": np.asarray(div).tolist() if div is not None else None,
        }

    def save_json(self, path, **meta) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**meta, **self.to_dict()}, indent=1, default=_jsonable))
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
#: hyperparameters, data values, seeds — reuses the program; compile time is measured apart
_COMPILED: dict = {}


def _signature(args):
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((jnp.shape(a), str(jnp.result_type(a)), getattr(a, "weak_type", False),
                           getattr(a, "sharding", None)) for a in leaves)


def _compiled(fn, args, statics):
    key = (fn, tuple(sorted(statics.items())), _signature(args))
    if key not in _COMPILED:
        _COMPILED[key] = fn.lower(*args, **statics).compile()
    return _COMPILED[key]


def compiled_programs() -> int:
    """How many chunk programs :func:`run` has compiled in this process (a run with new
    numbers but the same shapes and static configuration adds none)."""
    return len(_COMPILED)


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
    if batched_init:
        state0 = jax.vmap(algorithm.init, in_axes=(0, 0, None))(x0, y0, data)
        one_state = jax.tree.map(lambda a: a[0], state0)
    else:
        state0 = one_state = algorithm.init(x0, y0, data)
    if algorithm.check is not None:
        for p in (points or [{}]):
            algorithm.check(params._replace(**p), one_state, data)

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
