"""Operators shared by all agents: detected from jaxprs, stated by a problem, materialised once.

When ∇²_yy g (or the problem's own ``hvp_yy``), or ∇²_xy g (``cross_xy``), does not depend on
x, y, the agent's data or the minibatch — a quadratic LL with a Hessian common to the agents,
the setting of the throughput benchmark — the eq.-(23) solve can materialise the operator once
as a dense matrix from ``data.shared`` (``jax.jacfwd`` at a dummy point; still traced and
differentiable) and apply it as ``v @ Mᵀ``: under ``vmap`` over agents the agent axis is then
the row axis of one (n, d)·(d, d) GEMM, where a per-agent ``H @ v`` (or the two products of an
autodiff HVP, ½(H + Hᵀ)v) becomes a GEMM with the agent axis last and a transpose around every
product. Likewise a gradient that is affine in (x, y) with shared Jacobians is evaluated as
∇(0, 0) + x J_xᵀ + y J_yᵀ where that costs fewer flops than autodiff's own products.

Whether an operator is shared is a fact about the problem. A problem can **state** it
(``BilevelProblem(operators=Shared(yy=True, xy=True))``, or ``"per_agent"`` to never
materialise anything); with the default ``"auto"`` the :func:`detect` proposal is used: it
reads the operators' jaxprs on abstract per-agent shapes (which inputs their matrices depend
on) once per problem and shapes, at trace time, outside the compiled step. :func:`plan` turns
the facts into the decision for one step (:class:`OperatorPlan`): an operator is materialised
when the flattened dimension is at most :data:`SHARED_DENSE_MAX` and forming it (d products)
costs no more than the K products of one step over the agents it replaces (d ≤ K·n). Same
numbers up to round-off either way.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from slamjax.caches import LRUCache
from slamjax.problem import ProblemData

__all__ = ["SHARED_DENSE_MAX", "Shared", "OperatorPlan", "PER_AGENT", "detect", "plan",
           "live_inputs", "is_shared", "affine_plan", "affine_gradient", "dense_ok",
           "yy_matrix_fn", "xy_matrix_fn", "jacobian_fn", "dummy", "grad_y_g", "grad_f"]

SHARED_DENSE_MAX = 1024
"""Largest flattened dimension of y (and x) for which an operator shared by all agents is
materialised as a dense matrix (4 MiB in float32)."""


class Shared(NamedTuple):
    """What a problem states about its second derivatives: ``yy`` — ∇²_yy g (or ``hvp_yy``)
    is the same for every agent, iterate and minibatch (depends on ``data.shared`` only);
    ``xy`` — the same for ∇²_xy g (``cross_xy``)."""

    yy: bool = False
    xy: bool = False


class OperatorPlan(NamedTuple):
    """The decision for one step: materialise ∇²_yy g (``yy``) and ∇²_xy g (``xy``) as dense
    matrices; evaluate ∇_y g, ∇_x f, ∇_y f in affine form (``(dep_x, dep_y)``) or by
    autodiff (``None``)."""

    yy: bool = False
    xy: bool = False
    g_y: Any = None
    f_x: Any = None
    f_y: Any = None


PER_AGENT = OperatorPlan()
"""The plan that materialises nothing (per-agent products and autodiff gradients)."""


def grad_y_g(problem):
    """(x, y, data, batch) ↦ ∇_y g."""
    return lambda x, y, data, batch: jax.grad(problem.g, argnums=1)(x, y, data, batch)


def grad_f(problem, argnum: int):
    """(x, y, data, batch) ↦ ∇_x f (argnum 0) or ∇_y f (argnum 1)."""
    return lambda a, b, d, e: jax.grad(problem.f, argnums=argnum)(a, b, d, e)

# ----------------------------------------------------------------------------------------
# detection from jaxprs
# ----------------------------------------------------------------------------------------
_CALL_PRIMITIVES = ("pjit", "jit", "closed_call", "core_call")


def live_inputs(jaxpr, live_out, live_set=None) -> list:
    """Which inputs of ``jaxpr`` the outputs flagged in ``live_out`` depend on (backward
    reachability over the equations). Calls (``pjit``) are followed exactly; any other
    primitive with sub-programs (loops, custom rules) conservatively depends on all inputs.
    ``live_set``: a set that receives every live variable."""
    from jax.extend.core import Literal

    live = {v for v, on in zip(jaxpr.outvars, live_out) if on and not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        outs = [o in live for o in eqn.outvars]
        if not any(outs):
            continue
        sub = eqn.params.get("jaxpr") if eqn.primitive.name in _CALL_PRIMITIVES else None
        if sub is not None:
            ins = live_inputs(getattr(sub, "jaxpr", sub), outs)
        else:
            ins = [True] * len(eqn.invars)
        live.update(v for v, on in zip(eqn.invars, ins) if on and not isinstance(v, Literal))
    if live_set is not None:
        live_set.update(live)
    return [v in live for v in jaxpr.invars]


def _spec(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def is_shared(fn, x, y, data, batch) -> bool:
    """True if ``fn(x, y, data, batch)`` depends on ``data.shared`` only (not on x, y,
    ``data.agents`` or the batch) — read from its jaxpr on abstract per-agent shapes."""
    args = (x, y, data.agents, batch, data.shared)
    try:
        closed = jax.make_jaxpr(lambda x_, y_, a_, b_, s_: fn(x_, y_, ProblemData(s_, a_), b_))(
            *map(_spec, args))
    except Exception:  # anything unusual: keep the general path
        return False
    live = live_inputs(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    k = sum(len(jax.tree.leaves(a)) for a in args[:4])
    return not any(live[:k])


def dummy(tree):
    """Zeros of the per-agent shapes, *not* derived from the (possibly vmapped) inputs (leaves
    that are not numbers, e.g. PRNG keys, are passed through: the matrices built from the
    dummies do not depend on them)."""
    def zero(a):
        dt = jnp.result_type(a)
        if jnp.issubdtype(dt, jnp.number) or jnp.issubdtype(dt, jnp.bool_):
            return jnp.zeros(jnp.shape(a), dt)
        return a
    return jax.tree.map(zero, tree)


def yy_matrix_fn(problem):
    """(x, y, data, batch) ↦ the dense d_y×d_y matrix of v ↦ ∇²_yy g·v (flattened y)."""
    def dense(x, y, data, batch):
        y_flat, unravel = ravel_pytree(y)
        if problem.hvp_yy is not None:
            def op(vf):
                return ravel_pytree(problem.hvp_yy(x, y, data, batch, unravel(vf)))[0]
            return jax.jacfwd(op)(jnp.zeros_like(y_flat))
        return jax.jacfwd(lambda yf: ravel_pytree(
            jax.grad(problem.g, argnums=1)(x, unravel(yf), data, batch))[0])(y_flat)
    return dense


def xy_matrix_fn(problem):
    """(x, y, data, batch) ↦ the dense d_x×d_y matrix C of v ↦ ∇²_xy g·v (flattened)."""
    def dense(x, y, data, batch):
        x_flat, unravel_x = ravel_pytree(x)
        y_flat, unravel_y = ravel_pytree(y)
        if problem.cross_xy is not None:
            def op(vf):
                return ravel_pytree(problem.cross_xy(x, y, data, batch, unravel_y(vf)))[0]
            return jax.jacfwd(op)(jnp.zeros_like(y_flat))
        # ∇²_xy g·v = J_xᵀ v with J_x = ∂(∇_y g)/∂x  (d_y × d_x)
        jx = jax.jacfwd(lambda xf: ravel_pytree(
            jax.grad(problem.g, argnums=1)(unravel_x(xf), y, data, batch))[0])(x_flat)
        return jx.T
    return dense


def dense_ok(dim: int, iterations: int, n_agents: int | None) -> bool:
    """Materialising a d×d operator pays: d ≤ SHARED_DENSE_MAX and d ≤ K·n."""
    return dim <= SHARED_DENSE_MAX and dim <= max(1, iterations) * max(1, n_agents or 1)


def dot_flops(jaxpr, tainted_in) -> float:
    """Flops of the ``dot_general`` equations of ``jaxpr`` that depend on the flagged inputs
    and contribute to its outputs (dead code, e.g. an unused forward value, is not counted;
    calls are followed)."""
    from jax.extend.core import Literal

    live: set = set()
    live_inputs(jaxpr, [True] * len(jaxpr.outvars), live)
    tainted = {v for v, t in zip(jaxpr.invars, tainted_in) if t}
    flops = 0.0
    for eqn in jaxpr.eqns:
        tin = [not isinstance(v, Literal) and v in tainted for v in eqn.invars]
        if not any(tin) or not any(o in live for o in eqn.outvars):
            continue
        name = eqn.primitive.name
        sub = eqn.params.get("jaxpr") if name in _CALL_PRIMITIVES else None
        if sub is not None:
            flops += dot_flops(getattr(sub, "jaxpr", sub), tin)
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            shape = eqn.invars[0].aval.shape
            k = 1
            for i in lc:
                k *= int(shape[i])
            out = 1
            for s_ in eqn.outvars[0].aval.shape:
                out *= int(s_)
            flops += 2.0 * out * k
        tainted.update(eqn.outvars)
    return flops


def affine_plan(grad_fn, x, y, data, batch):
    """For a gradient ``grad_fn(x, y, data, batch)`` (one agent): ``(dep_x, dep_y)`` if it is
    affine in (x, y) with Jacobians that depend on ``data.shared`` only — then
    ∇ = ∇(0, 0) + J_x x + J_y y exactly, with J_x, J_y the same for every agent — and the two
    row-major GEMMs of that form cost fewer flops than the autodiff gradient's own products
    (counted in its jaxpr); ``None`` otherwise. ``dep_b`` is False when ∇ ignores b."""
    args = (x, y, data.agents, batch, data.shared)
    try:
        closed = jax.make_jaxpr(
            lambda x_, y_, a_, b_, s_: grad_fn(x_, y_, ProblemData(s_, a_), b_))(
                *map(_spec, args))
    except Exception:
        return None
    nx, ny = len(jax.tree.leaves(x)), len(jax.tree.leaves(y))
    live = live_inputs(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    dep_x, dep_y = any(live[:nx]), any(live[nx:nx + ny])
    if not (dep_x or dep_y):
        return None
    rest = len(live) - nx - ny
    auto = dot_flops(closed.jaxpr, [True] * (nx + ny) + [False] * rest)
    dg = sum(int(v.aval.size) for v in closed.jaxpr.outvars)
    affine = 2.0 * dg * ((_size(x) if dep_x else 0) + (_size(y) if dep_y else 0))
    if affine >= auto:
        return None
    for on, which in ((dep_x, 0), (dep_y, 1)):
        if on and not is_shared(jacobian_fn(grad_fn, which), x, y, data, batch):
            return None
    return dep_x, dep_y


def jacobian_fn(grad_fn, which):
    """(x, y, data, batch) ↦ ∂ ravel(grad_fn) / ∂ ravel(x or y)."""
    def jac(x, y, data, batch):
        v = (x, y)[which]
        vf, unravel = ravel_pytree(v)

        def g(f):
            args = (unravel(f), y) if which == 0 else (x, unravel(f))
            return ravel_pytree(grad_fn(*args, data, batch))[0]
        return jax.jacfwd(g)(vf)
    return jac


# ----------------------------------------------------------------------------------------
# facts and plans
# ----------------------------------------------------------------------------------------
_FACTS = LRUCache(maxsize=256)


def _key(problem, tag, x, y, data, batch):
    return (problem, tag, jax.tree.structure((x, y, data, batch)),
            tuple((jnp.shape(a), str(jnp.result_type(a)))
                  for a in jax.tree.leaves((x, y, data, batch))))


def detect(problem, x, y, data, batch) -> Shared:
    """The detector's proposal: which second-derivative operators depend on ``data.shared``
    only, read from their jaxprs at one agent's (abstract) shapes. Cached per problem and
    shapes (bounded; emptied by :func:`slamjax.clear_caches`)."""
    return _FACTS.get(_key(problem, "shared", x, y, data, batch),
                      lambda: Shared(is_shared(yy_matrix_fn(problem), x, y, data, batch),
                                     is_shared(xy_matrix_fn(problem), x, y, data, batch)))


def _size(tree) -> int:
    return sum(math.prod(jnp.shape(a)) for a in jax.tree.leaves(tree))


def plan(problem, x, y, data, batch, *, n_agents: int | None, iterations: int,
         enabled: bool = True) -> OperatorPlan:
    """The :class:`OperatorPlan` for one agent's step at (abstract) per-agent shapes: the
    problem's stated :class:`Shared` facts (``operators="auto"``: :func:`detect`'s), the
    affine gradient forms (auto only) and the cost rules of the module docstring.
    ``enabled=False`` (``SLAMConfig(shared_operators=False)``) is :data:`PER_AGENT`."""
    stated = getattr(problem, "operators", "auto")
    if not enabled or stated == "per_agent":
        return PER_AGENT
    dx, dy = _size(x), _size(y)
    grads = {}
    if stated == "auto" and n_agents is not None and dense_ok(max(dx, dy), 1, n_agents):
        for tag, fn in (("g_y", grad_y_g(problem)), ("f_x", grad_f(problem, 0)),
                        ("f_y", grad_f(problem, 1))):
            grads[tag] = _FACTS.get(_key(problem, tag, x, y, data, batch),
                                    lambda fn=fn: affine_plan(fn, x, y, data, batch))
    yy = xy = False
    if dense_ok(max(dx, dy), iterations, n_agents):
        facts = detect(problem, x, y, data, batch) if stated == "auto" else stated
        yy, xy = bool(facts.yy), bool(facts.xy)
    return OperatorPlan(yy, xy, grads.get("g_y"), grads.get("f_x"), grads.get("f_y"))


def affine_gradient(grad_fn, affine, x, y, data, batch):
    """``grad_fn(x, y, data, batch)`` as ∇(0, 0) + x J_xᵀ + y J_yᵀ (agent axis the GEMM row
    axis, J shared by all agents) for an :func:`affine_plan` ``(dep_x, dep_y)``; by autodiff
    when ``affine`` is ``None``."""
    if affine is None:
        return grad_fn(x, y, data, batch)
    dep_x, dep_y = affine
    zx, zy, zb = dummy(x), dummy(y), dummy(batch)
    zdata = ProblemData(shared=data.shared, agents=dummy(data.agents))
    g0, unravel = ravel_pytree(grad_fn(zx, zy, data, batch))  # the agent's own constant term
    if dep_x:
        g0 = g0 + ravel_pytree(x)[0] @ jacobian_fn(grad_fn, 0)(zx, zy, zdata, zb).T
    if dep_y:
        g0 = g0 + ravel_pytree(y)[0] @ jacobian_fn(grad_fn, 1)(zx, zy, zdata, zb).T
    return unravel(g0)
