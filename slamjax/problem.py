"""The per-agent bilevel problem interface.

A decentralized bilevel problem (paper eq. (1)) is described by what ONE agent computes; the
library vmaps it over the agent axis (and, through ``g`` being a sum, over the m LL tasks).

* ``f(x, y, data, batch) -> scalar``: agent i's upper-level loss f_i(x_i, y_i).
* ``g(x, y, data, batch) -> scalar``: agent i's lower-level loss **summed over its m tasks**,
  Σ_k g_{i,k}(x_i, y_{i,k}). Task k may only depend on its own part y_{i,k} of the LL pytree
  ``y`` (e.g. the k-th entry of a tuple, or row k of an (m, d) leaf). Because the tasks are
  separable, ∇_y of the sum stacks the per-task gradients h_{g,k}, the Hessian of the sum is
  block-diagonal, and one solve with it performs the m task solves of eq. (23) at once.
* ``sample(key, data) -> batch`` (optional): a stochastic oracle. SLAM calls it twice per step
  with independent keys (one batch for h_g, one for h_f), or once with
  ``SLAMConfig(minibatches=1)`` (one batch for both). ``None`` means exact gradients
  (``batch=None``).
* ``hvp_yy(x, y, data, batch, v)`` (optional): ∇²_yy g · v supplied by the user (autodiff of a
  quadratic costs about 2× a hand-written product).
* ``cross_xy(x, y, data, batch, v)`` (optional): ∇²_xy g · v (the x-gradient of ⟨∇_y g, v⟩).
* ``ul_grad(x, y, data, batch)`` (optional): a problem-specific estimator of the UL gradient
  h_f used *instead of* eq. (23) — e.g. a policy-gradient actor step (paper eq. (212)), where
  the implicit term is already folded into the estimator.
* ``metrics(x, y, data, consensus_x, consensus_y) -> dict`` (optional): problem-level metrics
  on the stacked variables (e.g. the Theorem-1 stationarity measures from a closed form).

``data`` is a :class:`ProblemData`: ``shared`` leaves are common to all agents (passed
unbatched), ``agents`` leaves carry the agent axis first (each agent sees its own slice).
Data is always an *argument* of the compiled functions, never a closure, so it can be traced,
changed without recompiling and differentiated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BilevelProblem", "ProblemData", "agent_count", "check_agent_axis", "check_finite",
           "check_precision"]


class ProblemData(NamedTuple):
    """Problem data: ``shared`` (same for every agent) and ``agents`` (agent axis first)."""

    shared: Any = None
    agents: Any = None


# vmap axes of ProblemData: shared unbatched, agents batched along axis 0.
DATA_AXES = ProblemData(shared=None, agents=0)


@dataclasses.dataclass(frozen=True, eq=False)
class BilevelProblem:
    """Per-agent bilevel problem. Hashable by identity, so it can be a static jit argument."""

    f: Callable[..., jax.Array]
    g: Callable[..., jax.Array]
    sample: Optional[Callable[..., Any]] = None
    hvp_yy: Optional[Callable[..., Any]] = None
    cross_xy: Optional[Callable[..., Any]] = None
    metrics: Optional[Callable[..., dict]] = None
    ul_grad: Optional[Callable[..., Any]] = None
    name: str = "problem"

    def sample_batch(self, key, data: ProblemData):
        return None if self.sample is None else self.sample(key, data)


def agent_count(tree) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("empty pytree: x and y need at least one array leaf")
    return int(jnp.shape(leaves[0])[0]) if jnp.ndim(leaves[0]) else -1


def check_agent_axis(name: str, tree, n: int) -> None:
    """Every leaf of ``tree`` must be an array with leading (agent) axis ``n``."""
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        raise ValueError(f"{name} is an empty pytree; it needs at least one array leaf")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    for path, leaf in zip(paths, leaves):
        shape = jnp.shape(leaf)
        if len(shape) == 0 or shape[0] != n:
            raise ValueError(
                f"{name}{path or ''} has shape {tuple(shape)}: every leaf needs the agent axis "
                f"first with size n={n} (the graph's number of agents)")
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise ValueError(f"{name}{path or ''} has dtype {jnp.result_type(leaf)}; "
                             "optimization variables must be floating point")
    check_precision(name, tree)


#: floating dtypes the library runs in (float64 needs ``jax.config.update("jax_enable_x64", True)``)
_HALF = ("float16", "bfloat16")


def check_precision(name: str, tree) -> None:
    """Half precision is refused (not upcast): the steps mix the variables with float32
    hyperparameters (a scan carry would change dtype), and metrics and exact solves need
    LAPACK, which has no float16. Use float32 (the default) or float64."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dt = jnp.result_type(leaf)
        if str(dt) in _HALF:
            where = f"{name}{jax.tree_util.keystr(path)}"
            raise ValueError(
                f"{where} has dtype {dt}: half precision is not supported (LAPACK solves and "
                f"the scan carry need float32 or float64). Pass {where}.astype(jnp.float32) "
                "(the default), or float64 with jax_enable_x64")


def _is_concrete(leaf) -> bool:
    return not isinstance(leaf, jax.core.Tracer)


def check_finite(name: str, tree) -> None:
    """Every floating leaf of ``tree`` is free of NaN/Inf (only concrete leaves are checked:
    under ``jit``/``grad`` tracing use :func:`slamjax.run.checked`). Checked on the host with
    NumPy, so nothing is compiled."""
    flat = [(p, leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if _is_concrete(leaf) and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    for path, leaf in flat:
        arr = np.asarray(leaf)  # host copy (free on CPU): no program to compile
        if np.isfinite(arr).all():
            continue
        bad = np.argwhere(~np.isfinite(arr))
        where = f"{name}{jax.tree_util.keystr(path)}"
        idx = f"[{', '.join(map(str, bad[0]))}]" if arr.ndim else ""
        raise ValueError(
            f"{where} has {len(bad)} non-finite entr{'y' if len(bad) == 1 else 'ies'} (first: "
            f"{where}{idx} = {arr[tuple(bad[0])] if arr.ndim else arr}): a run from it is NaN "
            f"from the first step. Pass finite values (e.g. jnp.nan_to_num({where}), or fix the "
            "source of the data)")


def _agent_slice(tree):
    """One agent's shapes (abstract: nothing is sliced or computed)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)),
                        tree)


def _shapes(tree) -> str:
    shapes = [tuple(jnp.shape(a)) for a in jax.tree.leaves(tree)]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


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


def _candidate_shapes(*trees) -> list:
    """Per-agent shapes worth trying for a variable: the shapes of the data's leaves and
    their trailing parts (a guess used only to *suggest* a shape after a failure)."""
    out = []
    for leaf in jax.tree.leaves(trees):
        shape = tuple(jnp.shape(leaf))
        for k in range(len(shape)):
            if shape[k:] not in out:
                out.append(shape[k:])
    return out


def probe_problem(problem: BilevelProblem, x, y, data: ProblemData, key) -> None:
    """Trace ``f`` and ``g`` (and ``sample``) once at agent 0's slices of ``x``, ``y``,
    ``data`` (abstractly, ``jax.eval_shape``: nothing is compiled or computed) so that a y0 or
    x0 of the wrong per-agent shape is reported by name instead of failing inside the
    problem's functions, deep in a compiled step. On failure, shapes taken from the data are
    tried for y0 (then x0) to suggest the one f and g accept."""
    xi, yi = _agent_slice(x), _agent_slice(y)
    di = ProblemData(shared=data.shared, agents=None if data.agents is None
                     else _agent_slice(data.agents))
    err = _probe(problem, key, xi, yi, di)
    if err is None:
        return
    n = jnp.shape(jax.tree.leaves(x)[0])[0]
    hint = ("pass x0, y0 with the per-agent shapes its f and g are written for (e.g. the x0, "
            "y0 returned by the problem's constructor, such as make_quadratic(...)[2:])")
    for name, var, other in (("y0", yi, xi), ("x0", xi, yi)):
        leaves = jax.tree.leaves(var)
        if len(leaves) != 1:
            continue
        dt = jnp.result_type(leaves[0])
        for shape in _candidate_shapes(di):
            if shape == tuple(jnp.shape(leaves[0])):
                continue
            cand = jax.ShapeDtypeStruct(shape, dt)
            args = (cand, other) if name == "x0" else (other, cand)
            if _probe(problem, key, *args, di) is None:
                hint = (f"f and g evaluate with a per-agent {name} of shape {shape}: pass "
                        f"{name} of shape {(n,) + shape} (agent axis first)")
                break
        else:
            continue
        break
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    raise ValueError(
        f"the problem {problem.name!r} cannot evaluate f and g at agent 0 with x0[0] of shape "
        f"{_shapes(xi)} and y0[0] of shape {_shapes(yi)} (per-agent shapes: the agent axis "
        f"is dropped): {type(err).__name__}: {msg} — {hint}") from err


def ll_min_curvature(problem: BilevelProblem, x, y, data: ProblemData, batch, iters: int):
    """Smallest curvature pᵀHp / pᵀp that conjugate gradients meets on H = ∇²_yy g(x, y)
    (one agent) in ``iters`` iterations from a fixed dense right-hand side (stopping at
    breakdown). CG's directions are H-conjugate, so by Sylvester's law of inertia H is
    positive definite on their span iff every pᵀHp > 0: with ``iters`` ≥ dim(y) the test is
    exact, with fewer it covers the Krylov subspace it explored. Uses the problem's
    ``hvp_yy`` when it has one. Pure, vmappable; returns (min curvature, max curvature)."""
    from jax.flatten_util import ravel_pytree

    from slamjax.hypergrad import hvp_yy

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
