"""Input checks of :func:`slamjax.solve` and :func:`slamjax.run`: eager (on concrete values,
before anything is compiled) and under tracing (``jax.experimental.checkify``).

Eager, driven by the algorithm: its own ``check(params, state, data)`` (shapes, parameter
values, stability warnings), half precision, NaN/Inf in x0, y0 and the data and, when the
algorithm names its problem (``Algorithm.problem``), the problem's f and g traced at the
per-agent shapes (:func:`probe_problem`) and the LL curvature at the start point
(:class:`CurvatureWarning`). Values that are traced (under jit/grad/vmap) are skipped: wrap
the function in :func:`checked` to compile the value checks in. Under tracing the domain of
each params field comes from the params class (``DOMAIN = "> 0"`` or ``"≥ 0"``; finite if
the class says nothing).
"""

from __future__ import annotations

import contextvars
import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.algorithm import merge_static, split_static
from slamjax.caches import ProgramCache
from slamjax.hypergrad import hvp_yy
from slamjax.problem import (DATA_AXES, BilevelProblem, ProblemData, agent_slice, check_finite,
                             check_precision)
from slamjax.schedules import at

__all__ = ["CurvatureWarning", "CURVATURE_ITERS", "probe_problem", "ll_min_curvature",
           "curvature_check", "check_inputs", "eager_checks", "traced_checks", "checked",
           "tracing_checks", "all_finite", "is_concrete", "signature"]


class CurvatureWarning(RuntimeWarning):
    """The lower-level Hessian ∇²_yy g is not positive definite at the start point: the
    hypergradient solve of eq. (23) (CG / Neumann / exact) then returns garbage."""


def is_concrete(tree) -> bool:
    """True if no leaf of ``tree`` is a tracer."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def all_finite(tree) -> jax.Array:
    """One boolean: every floating leaf of ``tree`` is free of NaN/Inf (jit-able)."""
    ok = jnp.asarray(True)
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def signature(args):
    """Abstract signature of traced arguments (tree, shapes, dtypes, weak types, shardings):
    the key under which a compiled program can be reused."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((jnp.shape(a), str(jnp.result_type(a)), getattr(a, "weak_type", False),
                           getattr(a, "sharding", None)) for a in leaves)


# ----------------------------------------------------------------------------------------
# the problem's f and g at the per-agent shapes
# ----------------------------------------------------------------------------------------
def _shapes(tree) -> str:
    shapes = [tuple(jnp.shape(a)) for a in jax.tree.leaves(tree)]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def _data_access_hint(err) -> str | None:
    """A sentence for the usual authoring mistake: indexing ProblemData like a dict."""
    text = str(err)
    if isinstance(err, TypeError) and ("tuple indices must be integers" in text
                                       or "NamedTuple" in text or "ProblemData" in text):
        return ("the problem indexes its data like a dict (data['b']); data is a "
                "slamjax.ProblemData NamedTuple: use data.shared[...] for leaves common to "
                "all agents and data.agents[...] for this agent's own slice")
    return None


def _probe(problem, key, x, y, data):
    """The exception ``f`` or ``g`` raises when traced at (x, y) (abstractly), or ``None``."""
    def both(k, xx, yy, dd):
        batch = problem.sample_batch(k, dd)
        return problem.f(xx, yy, dd, batch), problem.g(xx, yy, dd, batch)

    try:
        fv, gv = jax.eval_shape(both, key, x, y, data)
    except Exception as e:  # noqa: BLE001 — the problem's own error, reported with context
        return e
    for name, v in (("f", fv), ("g", gv)):
        if jnp.shape(v) != ():
            return ValueError(f"the problem's {name}(x, y, data, batch) must return a scalar "
                              f"(one agent's loss), got shape {tuple(jnp.shape(v))}")
    return None


def _candidate_shapes(current: tuple, *trees) -> list:
    """Per-agent shapes worth trying for a variable of per-agent shape ``current``: (1,) first
    for a scalar per agent (the trailing axis forgotten), then the shapes of the data's leaves
    and their trailing parts (a guess used only to *suggest* a shape after a failure)."""
    out = [(1,)] if current == () else []
    for leaf in jax.tree.leaves(trees):
        shape = tuple(jnp.shape(leaf))
        for k in range(len(shape)):
            if shape[k:] not in out:
                out.append(shape[k:])
    return [s for s in out if s != current]


def _suggest(problem, key, xi, yi, di, n):
    for name, var, other in (("y0", yi, xi), ("x0", xi, yi)):
        leaves = jax.tree.leaves(var)
        if len(leaves) != 1:
            continue
        dt = jnp.result_type(leaves[0])
        for shape in _candidate_shapes(tuple(jnp.shape(leaves[0])), di):
            cand = jax.ShapeDtypeStruct(shape, dt)
            args = (cand, other) if name == "x0" else (other, cand)
            if _probe(problem, key, *args, di) is None:
                return (f"f and g evaluate with a per-agent {name} of shape {shape}: pass "
                        f"{name} of shape {(n,) + shape} (agent axis first)")
    return ("pass x0, y0 with the per-agent shapes its f and g are written for (e.g. the x0, "
            "y0 returned by the problem's constructor, such as make_quadratic(...)[2:])")


def probe_problem(problem: BilevelProblem, x, y, data: ProblemData, key) -> None:
    """Trace ``f`` and ``g`` (and ``sample``) once at agent 0's slices of ``x``, ``y``,
    ``data`` (abstractly, ``jax.eval_shape``: nothing is compiled or computed) so that a y0 or
    x0 of the wrong per-agent shape is reported by name instead of failing inside the
    problem's functions, deep in a compiled step. On failure, shapes taken from the data are
    tried for y0 (then x0) to suggest the one f and g accept."""
    xi, yi = agent_slice(x), agent_slice(y)
    di = ProblemData(shared=data.shared, agents=None if data.agents is None
                     else agent_slice(data.agents))
    err = _probe(problem, key, xi, yi, di)
    if err is None:
        return
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    data_hint = _data_access_hint(err)
    if data_hint is not None:
        raise TypeError(f"the problem {problem.name!r} cannot evaluate f and g: "
                        f"{type(err).__name__}: {msg} — {data_hint}") from err
    hint = _suggest(problem, key, xi, yi, di, jnp.shape(jax.tree.leaves(x)[0])[0])
    raise ValueError(
        f"the problem {problem.name!r} cannot evaluate f and g at agent 0 with x0[0] of shape "
        f"{_shapes(xi)} and y0[0] of shape {_shapes(yi)} (per-agent shapes: the agent axis "
        f"is dropped): {type(err).__name__}: {msg} — {hint}") from err


# ----------------------------------------------------------------------------------------
# lower-level curvature at the start point
# ----------------------------------------------------------------------------------------
CURVATURE_ITERS = 32
"""CG iterations of the start-point curvature check (exact when dim(y) per agent ≤ this)."""


def ll_min_curvature(problem: BilevelProblem, x, y, data: ProblemData, batch, iters: int):
    """Smallest curvature pᵀHp / pᵀp that conjugate gradients meets on H = ∇²_yy g(x, y)
    (one agent) in ``iters`` iterations from a fixed dense right-hand side (stopping at
    breakdown). CG's directions are H-conjugate, so by Sylvester's law of inertia H is
    positive definite on their span iff every pᵀHp > 0: with ``iters`` ≥ dim(y) the test is
    exact, with fewer it covers the Krylov subspace it explored. Uses the problem's
    ``hvp_yy`` when it has one. Pure, vmappable; returns (min curvature, max curvature)."""
    from jax.flatten_util import ravel_pytree

    y_flat, unravel = ravel_pytree(y)

    def mv(v):
        return ravel_pytree(hvp_yy(problem, x, y, data, batch, unravel(v)))[0]

    # a fixed, dense start vector with no structure (no PRNG: threefry costs compile time)
    b = jnp.sin(1.0 + jnp.arange(y_flat.size, dtype=y_flat.dtype) * 2.3993)
    rs0 = b @ b
    tiny = jnp.finfo(y_flat.dtype).tiny
    inf = jnp.asarray(jnp.inf, y_flat.dtype)

    def body(_, c):
        r, p, rs, lo, hi, done = c
        hp = mv(p)
        php, pp = p @ hp, p @ p
        q = php / jnp.maximum(pp, tiny)
        lo = jnp.where(done, lo, jnp.minimum(lo, q))
        hi = jnp.where(done, hi, jnp.maximum(hi, q))
        alpha = rs / jnp.where(php > 0, php, 1.0)
        r2 = r - alpha * hp
        rs2 = r2 @ r2
        p2 = r2 + (rs2 / jnp.maximum(rs, tiny)) * p
        done = done | (php <= 0) | (rs2 <= 1e-12 * rs0)
        return r2, p2, rs2, lo, hi, done

    c = (b, b, rs0, inf, -inf, jnp.asarray(False))
    _, _, _, lo, hi, _ = jax.lax.fori_loop(0, int(iters), body, c)
    return lo, hi


def _ll_curvature_impl(x, y, data, *, problem, iters):
    key = jax.random.key(0)  # one fixed minibatch for every agent (stochastic problems)

    def one(xi, yi, di):
        return ll_min_curvature(problem, xi, yi, di, problem.sample_batch(key, di), iters)

    return jax.vmap(one, in_axes=(0, 0, DATA_AXES))(x, y, data)


_ll_curvature = jax.jit(_ll_curvature_impl, static_argnames=("problem", "iters"))
#: compiled curvature checks (one-off programs, compiled without optimisation passes)
_CURVATURE = ProgramCache(maxsize=8)


def curvature_check(problem, x, y, data) -> None:
    """A :class:`CurvatureWarning` if CG meets pᵀHp ≤ 0 on some agent's ∇²_yy g at (x, y)."""
    dim = sum(int(np.prod(jnp.shape(leaf)[1:])) for leaf in jax.tree.leaves(y))
    args = (x, y, data)
    statics = dict(problem=problem, iters=min(dim, CURVATURE_ITERS))
    prog = _CURVATURE.get((problem, statics["iters"], signature(args)),
                          lambda: _ll_curvature.lower(*args, **statics).compile(
                              compiler_options={"xla_backend_optimization_level": 0}))
    lo, hi = jax.device_get(prog(*args))
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


# ----------------------------------------------------------------------------------------
# eager checks
# ----------------------------------------------------------------------------------------
def check_inputs(data, x0, y0) -> None:
    """Half precision refused in x0, y0 and the data (before ``init``)."""
    check_precision("x0", x0)
    check_precision("y0", y0)
    check_precision("data", data)


def eager_checks(algorithm, params, data, x0, y0, state, *, problem_checks: bool = True) -> None:
    """Everything validated before a compile: the algorithm's own check (with schedules
    evaluated at step 0), NaN/Inf in x0, y0 and the data, and — for an algorithm that names
    its problem and ``problem_checks`` — f and g at the per-agent shapes and the LL curvature
    at the start. Traced values are skipped (see :func:`checked`)."""
    if algorithm.check is not None:
        algorithm.check(at(params, 0), state, data)  # shapes always; numbers if concrete
    check_finite("x0", x0)
    check_finite("y0", y0)
    check_finite("data", data)
    problem = algorithm.problem
    if not problem_checks or problem is None or not hasattr(state, "x") or \
            not hasattr(state, "y") or not is_concrete((state.x, state.y)):
        return
    probe_problem(problem, state.x, state.y, data, jax.eval_shape(jax.random.key, 0))
    if problem.ul_grad is None and is_concrete(data):
        curvature_check(problem, state.x, state.y, data)


# ----------------------------------------------------------------------------------------
# checks under tracing (jax.experimental.checkify)
# ----------------------------------------------------------------------------------------
#: set by :func:`checked` while it traces: ``solve(check=True)`` then also emits the
#: value checks as ``checkify.check`` s, which run inside the compiled program
_TRACED_CHECKS = contextvars.ContextVar("slamjax_traced_checks", default=False)

_RULES = {"> 0": lambda v: v > 0, "≥ 0": lambda v: v >= 0, "finite": lambda v: True}


def tracing_checks() -> bool:
    """True while :func:`checked` traces a function."""
    return _TRACED_CHECKS.get()


def traced_checks(params, data, x0, y0) -> None:
    """The value checks as ``checkify.check`` s: params fields finite and in the domain their
    class declares (``DOMAIN``), x0, y0 and the data finite."""
    from jax.experimental import checkify

    rule = getattr(type(params), "DOMAIN", "finite")
    cond = _RULES.get(rule, _RULES["finite"])
    params = at(params, 0)
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
    """``fn`` (e.g. :func:`slamjax.solve`, or a loss that calls it) with the value checks
    compiled in: ``checked(fn)(*args, **kw) -> (error, out)``, ``jax.experimental.checkify``
    style::

        err, state = jax.jit(checked(slamjax.solve), static_argnames="num_steps")(
            alg, params, data, x0, y0, key, num_steps=200)
        err.throw()   # raises if a check failed; a no-op otherwise

    Every :func:`slamjax.solve` traced inside ``fn`` checks its hyperparameters (each in the
    domain its params class declares), that x0, y0 and the data are finite, and that the final
    state is finite. ``errors`` (default ``checkify.user_checks``) can add checkify's own
    per-operation checks, e.g. ``checkify.user_checks | checkify.nan_checks`` to locate the
    first NaN. Wrap before jitting — ``jax.jit(checked(f))``, not ``checked(jax.jit(f))`` (a
    jitted function may reuse a trace made without the checks; that order is refused).
    Non-array arguments (``num_steps``, Python numbers) stay static and are checked eagerly.
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
