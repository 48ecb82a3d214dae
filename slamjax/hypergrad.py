"""Implicit (hyper)gradient of eq. (23), matrix-free.

For one agent (all m LL tasks at once, see :mod:`slamjax.problem`)::

    h_f = ∇_x f(x, y) − ∇²_xy g(x, y) · v,     ∇²_yy g(x, y) · v = ∇_y f(x, y)      (23)

Hessian-vector products are forward-over-reverse (``jax.linearize`` of ``∇_y g``, so the K
products of an iterative solve reuse one linearization); the cross term ∇²_xy g·v is one VJP of
``x ↦ ∇_y g(x, y)``. Solvers (static, hashable configuration):

* :class:`CG` — conjugate gradients wrapped in ``lax.custom_linear_solve``: derivatives of the
  solution are computed implicitly (another CG solve with the same symmetric operator), so
  reverse mode through thousands of SLAM steps stays finite and cheap.
* :class:`Neumann` — the truncated Neumann series η Σ_{j<K} (I − ηH)^j b, the estimator used in
  the paper's analysis (refs. [31, 33]); differentiated by unrolling.
* :class:`Exact` — dense Hessian (``jax.jacfwd``) and ``jnp.linalg.solve``; small d, tests.

**Operators shared by all agents** (layout). When ∇²_yy g (or the problem's own ``hvp_yy``), or
∇²_xy g (``cross_xy``), does not depend on x, y, the agent's data or the minibatch — a quadratic
LL with a Hessian common to the agents, the setting of the throughput benchmark — the operator
is materialised once as a dense matrix from ``data.shared`` (``jax.jacfwd`` at a dummy point;
still traced and differentiable) and applied as ``v @ Mᵀ``. Under ``vmap`` over agents the
agent axis is then the row axis of one (n, d)·(d, d) GEMM, where the per-agent ``H @ v`` of a
user's code (or the two products of an autodiff HVP, ½(H + Hᵀ)v) became a GEMM with the agent
axis last and a transpose around every product. Whether an operator is shared is decided at
trace time by reading its jaxpr (which inputs its matrix depends on), so it needs nothing from
the user; same numbers up to round-off. It applies when the flattened dimension is at most
:data:`SHARED_DENSE_MAX` and forming the matrix (d products) costs no more than the K products of
one step over the agents it replaces (d ≤ K·n); ``shared_dense=False`` turns it off.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from slamjax.problem import BilevelProblem, ProblemData

__all__ = ["CG", "Neumann", "Exact", "SOLVERS", "make_solver", "hypergradient",
           "lower_grad", "linear_solve", "cg_solve", "hvp_yy", "cross_xy", "shared_operators",
           "SHARED_DENSE_MAX"]

#: largest flattened dimension of y (and x) for which an operator shared by all agents is
#: materialised as a dense matrix (4 MiB in float32)
SHARED_DENSE_MAX = 1024


@dataclasses.dataclass(frozen=True)
class CG:
    """Conjugate gradients, ``maxiter`` iterations (stops early once ‖r‖ ≤ tol·‖b‖ if tol>0)."""

    maxiter: int = 10
    tol: float = 0.0

    def __post_init__(self):
        if int(self.maxiter) < 1:
            raise ValueError(f"CG needs maxiter ≥ 1, got {self.maxiter}")
        if not (self.tol >= 0.0):
            raise ValueError(f"CG needs tol ≥ 0, got {self.tol}")


@dataclasses.dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series v = η Σ_{j=0}^{K−1} (I − ηH)^j b (converges if 0 < η < 2/‖H‖)."""

    K: int = 20
    eta: float = 0.1

    def __post_init__(self):
        if int(self.K) < 1:
            raise ValueError(f"Neumann needs K ≥ 1 terms, got {self.K}")
        if not (self.eta > 0.0):
            raise ValueError(f"Neumann needs a step eta > 0, got {self.eta}")


@dataclasses.dataclass(frozen=True)
class Exact:
    """Dense LL Hessian and a direct solve (O(d_y³) per agent: small problems and tests)."""


SOLVERS = {"cg": CG, "neumann": Neumann, "exact": Exact}


def make_solver(name: str, **kwargs):
    """Solver by name: ``cg`` (maxiter, tol), ``neumann`` (K, eta) or ``exact``."""
    try:
        cls = SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {tuple(SOLVERS)}") from None
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------
# pytree linear algebra
# ----------------------------------------------------------------------------------------
def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _axpy(alpha, x, y):
    return jax.tree.map(lambda xi, yi: alpha * xi + yi, x, y)


def _safe_div(num, den):
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def cg_solve(matvec: Callable, b, maxiter: int, tol: float = 0.0, ref_sq=None):
    """Plain CG for a symmetric positive-definite ``matvec`` on pytrees (x₀ = 0). With
    ``tol > 0`` it stops once ‖r‖² ≤ tol²·``ref_sq`` (default ‖b‖²)."""
    x = jax.tree.map(jnp.zeros_like, b)
    rs = _vdot(b, b)
    stop = (tol * tol) * (rs if ref_sq is None else ref_sq)

    def body(carry):
        x, r, p, rs, k = carry
        ap = matvec(p)
        alpha = _safe_div(rs, _vdot(p, ap))
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rs_new = _vdot(r, r)
        p = _axpy(_safe_div(rs_new, rs), p, r)
        return x, r, p, rs_new, k + 1

    carry = (x, b, b, rs, jnp.zeros((), jnp.int32))
    if tol > 0.0:
        carry = lax.while_loop(lambda c: (c[4] < maxiter) & (c[3] > stop), body, carry)
    else:
        carry = lax.fori_loop(0, maxiter, lambda _, c: body(c), carry)
    return carry[0]


def linear_solve(matvec: Callable, b, solver, dense_matrix: Callable | None = None, x0=None):
    """Solve H v = b for the SPD operator ``matvec`` with the chosen solver.

    ``x0``: a warm start (e.g. the previous step's solution): the solver runs on the residual,
    v = x₀ + solve(b − H x₀) — for CG the iterates of CG started at x₀ (stopping rule still
    relative to ‖b‖), for Neumann v = x₀ + η Σ_{j<K} (I − ηH)^j (b − H x₀); one more product.
    Derivatives are those of H⁻¹b (the guess carries none; derivative solves start from zero);
    ``Exact`` ignores it. ``x0=None`` is exactly the cold solve."""
    if x0 is not None and not isinstance(solver, Exact):
        # v = x₀ + H⁻¹(b − H x₀): the solver on the residual from zero (for CG the same iterates
        # as CG started at x₀). The guess carries no derivative, so the implicit rule still
        # differentiates H⁻¹b, and every derivative solve starts from zero.
        guess = jax.tree.map(lax.stop_gradient, x0)
        r0 = jax.tree.map(jnp.subtract, b, matvec(guess))
        ref = lax.stop_gradient(_vdot(b, b)) if isinstance(solver, CG) else None
        corr = _solve_from_zero(matvec, r0, solver, ref)
        return jax.tree.map(jnp.add, guess, corr)
    return _solve_from_zero(matvec, b, solver, None, dense_matrix)


def _solve_from_zero(matvec, b, solver, ref_sq=None, dense_matrix=None):
    if isinstance(solver, CG):
        return lax.custom_linear_solve(
            matvec, b,
            solve=lambda mv, rhs: cg_solve(mv, rhs, int(solver.maxiter), float(solver.tol),
                                           ref_sq),
            symmetric=True)
    if isinstance(solver, Neumann):
        eta = solver.eta

        def body(_, carry):
            term, acc = carry
            term = _axpy(-eta, matvec(term), term)
            return term, jax.tree.map(jnp.add, acc, term)

        _, acc = lax.fori_loop(0, int(solver.K) - 1, body, (b, b))
        return jax.tree.map(lambda a: eta * a, acc)
    if isinstance(solver, Exact):
        b_flat, unravel = ravel_pytree(b)
        H = dense_matrix() if dense_matrix is not None else jax.jacfwd(
            lambda v: ravel_pytree(matvec(unravel(v)))[0])(jnp.zeros_like(b_flat))
        return unravel(jnp.linalg.solve(H, b_flat))
    raise TypeError(f"unknown solver {solver!r}; use CG, Neumann or Exact")


# ----------------------------------------------------------------------------------------
# operators shared by all agents: detected from the jaxpr, materialised once
# ----------------------------------------------------------------------------------------
_CALL_PRIMITIVES = ("pjit", "jit", "closed_call", "core_call")


def _live_inputs(jaxpr, live_out, _live_set=None) -> list:
    """Which inputs of ``jaxpr`` the outputs flagged in ``live_out`` depend on (backward
    reachability over the equations). Calls (``pjit``) are followed exactly; any other
    primitive with sub-programs (loops, custom rules) conservatively depends on all inputs.
    ``_live_set``: a set that receives every live variable."""
    from jax.extend.core import Literal

    live = {v for v, on in zip(jaxpr.outvars, live_out) if on and not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        outs = [o in live for o in eqn.outvars]
        if not any(outs):
            continue
        sub = eqn.params.get("jaxpr") if eqn.primitive.name in _CALL_PRIMITIVES else None
        if sub is not None:
            ins = _live_inputs(getattr(sub, "jaxpr", sub), outs)
        else:
            ins = [True] * len(eqn.invars)
        live.update(v for v, on in zip(eqn.invars, ins) if on and not isinstance(v, Literal))
    if _live_set is not None:
        _live_set.update(live)
    return [v in live for v in jaxpr.invars]


def _spec(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def _is_shared(fn, x, y, data, batch) -> bool:
    """True if ``fn(x, y, data, batch)`` depends on ``data.shared`` only (not on x, y,
    ``data.agents`` or the batch) — read from its jaxpr on abstract per-agent shapes."""
    args = (x, y, data.agents, batch, data.shared)
    try:
        closed = jax.make_jaxpr(lambda x_, y_, a_, b_, s_: fn(x_, y_, ProblemData(s_, a_), b_))(
            *map(_spec, args))
    except Exception:  # anything unusual: keep the general path
        return False
    live = _live_inputs(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    k = sum(len(jax.tree.leaves(a)) for a in args[:4])
    return not any(live[:k])


_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _dummy(tree):
    """Zeros of the per-agent shapes, *not* derived from the (possibly vmapped) inputs (leaves
    that are not numbers, e.g. PRNG keys, are passed through: the matrices built from the
    dummies do not depend on them)."""
    def zero(a):
        dt = jnp.result_type(a)
        if jnp.issubdtype(dt, jnp.number) or jnp.issubdtype(dt, jnp.bool_):
            return jnp.zeros(jnp.shape(a), dt)
        return a
    return jax.tree.map(zero, tree)


def _yy_matrix_fn(problem):
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


def _xy_matrix_fn(problem):
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


def shared_operators(problem: BilevelProblem, x, y, data, batch) -> tuple[bool, bool]:
    """Whether ∇²_yy g and ∇²_xy g (or the problem's ``hvp_yy`` / ``cross_xy``) are the same
    for every agent, iterate and minibatch — i.e. depend on ``data.shared`` only. Decided once
    per problem and per-agent shapes from the operators' jaxprs (cached)."""
    key = (jax.tree.structure((x, y, data, batch)),
           tuple((jnp.shape(a), str(jnp.result_type(a))) for a in jax.tree.leaves((x, y, data,
                                                                                  batch))))
    cache = _PLANS.setdefault(problem, {})
    if key not in cache:
        cache[key] = (_is_shared(_yy_matrix_fn(problem), x, y, data, batch),
                      _is_shared(_xy_matrix_fn(problem), x, y, data, batch))
    return cache[key]


def _dense_ok(dim: int, iterations: int, n_agents: int | None) -> bool:
    return dim <= SHARED_DENSE_MAX and dim <= max(1, iterations) * max(1, n_agents or 1)


def _dot_flops(jaxpr, tainted_in) -> float:
    """Flops of the ``dot_general`` equations of ``jaxpr`` that depend on the flagged inputs
    and contribute to its outputs (dead code, e.g. an unused forward value, is not counted;
    calls are followed)."""
    from jax.extend.core import Literal

    live: set = set()
    _live_inputs(jaxpr, [True] * len(jaxpr.outvars), live)
    tainted = {v for v, t in zip(jaxpr.invars, tainted_in) if t}
    flops = 0.0
    for eqn in jaxpr.eqns:
        tin = [not isinstance(v, Literal) and v in tainted for v in eqn.invars]
        if not any(tin) or not any(o in live for o in eqn.outvars):
            continue
        name = eqn.primitive.name
        sub = eqn.params.get("jaxpr") if name in _CALL_PRIMITIVES else None
        if sub is not None:
            flops += _dot_flops(getattr(sub, "jaxpr", sub), tin)
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


def _size(tree) -> int:
    return sum(int(jnp.size(a)) for a in jax.tree.leaves(tree))


def _affine_plan(grad_fn, x, y, data, batch):
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
    live = _live_inputs(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    dep_x, dep_y = any(live[:nx]), any(live[nx:nx + ny])
    if not (dep_x or dep_y):
        return None
    rest = len(live) - nx - ny
    auto = _dot_flops(closed.jaxpr, [True] * (nx + ny) + [False] * rest)
    dg = sum(int(v.aval.size) for v in closed.jaxpr.outvars)
    affine = 2.0 * dg * ((_size(x) if dep_x else 0) + (_size(y) if dep_y else 0))
    if affine >= auto:
        return None
    for on, which in ((dep_x, 0), (dep_y, 1)):
        if on and not _is_shared(_jacobian_fn(grad_fn, which), x, y, data, batch):
            return None
    return dep_x, dep_y


def _jacobian_fn(grad_fn, which):
    """(x, y, data, batch) ↦ ∂ ravel(grad_fn) / ∂ ravel(x or y)."""
    def jac(x, y, data, batch):
        v = (x, y)[which]
        vf, unravel = ravel_pytree(v)

        def g(f):
            args = (unravel(f), y) if which == 0 else (x, unravel(f))
            return ravel_pytree(grad_fn(*args, data, batch))[0]
        return jax.jacfwd(g)(vf)
    return jac


def _affine_cached(problem, tag, grad_fn, x, y, data, batch):
    key = (tag, jax.tree.structure((x, y, data, batch)),
           tuple((jnp.shape(a), str(jnp.result_type(a))) for a in jax.tree.leaves((x, y, data,
                                                                                  batch))))
    cache = _PLANS.setdefault(problem, {})
    if key not in cache:
        cache[key] = _affine_plan(grad_fn, x, y, data, batch)
    return cache[key]


def _gradient(problem, tag, grad_fn, x, y, data, batch, n_agents, shared_dense):
    """``grad_fn(x, y, data, batch)``, as the affine form ∇(0, 0) + x J_xᵀ + y J_yᵀ (agent axis
    the GEMM row axis, J shared by all agents) when :func:`_affine_plan` says it is exact and
    cheaper; else by autodiff."""
    plan = None
    if shared_dense and _dense_ok(max(_size(x), _size(y)), 1, n_agents):
        plan = _affine_cached(problem, tag, grad_fn, x, y, data, batch)
    if plan is None:
        return grad_fn(x, y, data, batch)
    dep_x, dep_y = plan
    zx, zy, zb = _dummy(x), _dummy(y), _dummy(batch)
    zdata = ProblemData(shared=data.shared, agents=_dummy(data.agents))
    g0, unravel = ravel_pytree(grad_fn(zx, zy, data, batch))  # the agent's own constant term
    if dep_x:
        g0 = g0 + ravel_pytree(x)[0] @ _jacobian_fn(grad_fn, 0)(zx, zy, zdata, zb).T
    if dep_y:
        g0 = g0 + ravel_pytree(y)[0] @ _jacobian_fn(grad_fn, 1)(zx, zy, zdata, zb).T
    return unravel(g0)


# ----------------------------------------------------------------------------------------
# eq. (23)
# ----------------------------------------------------------------------------------------
def lower_grad(problem: BilevelProblem, x, y, data, batch, *, n_agents: int | None = None,
               shared_dense: bool = True):
    """h_g = ∇_y g(x, y) for one agent (all tasks). With ``n_agents`` (the caller vmaps over
    that many agents) and g quadratic in (x, y) with second derivatives shared by all agents,
    evaluated as ∇_y g(0, 0) + x J_xᵀ + y J_yᵀ (exact; see :func:`_affine_plan`)."""
    grad_fn = _grad_y_g(problem)
    if n_agents is None:
        return grad_fn(x, y, data, batch)
    return _gradient(problem, "g_y", grad_fn, x, y, data, batch, n_agents, shared_dense)


def _grad_y_g(problem):
    return lambda x, y, data, batch: jax.grad(problem.g, argnums=1)(x, y, data, batch)


def hypergradient(problem: BilevelProblem, x, y, data, batch, solver, *,
                  n_agents: int | None = None, shared_dense: bool = True, v0=None,
                  return_solution: bool = False) -> Any:
    """Surrogate implicit gradient of eq. (23) for one agent, at its local (x, y).

    A problem with its own UL-gradient estimator (``problem.ul_grad``) uses that instead.
    ``n_agents``: how many agents the caller vmaps this over (sizes the decision to materialise
    an operator shared by all agents, see the module docstring; ``shared_dense=False`` never
    does). ``v0``: warm start of the solve ∇²_yy g·v = ∇_y f (see :func:`linear_solve`);
    ``return_solution=True`` returns ``(h_f, v)`` (with ``ul_grad``, v is ``v0``)."""
    if problem.ul_grad is not None:
        h = problem.ul_grad(x, y, data, batch)
        return (h, v0) if return_solution else h
    if shared_dense and n_agents is not None:
        fx = _gradient(problem, "f_x", lambda a, b, d, e: jax.grad(problem.f, argnums=0)(
            a, b, d, e), x, y, data, batch, n_agents, shared_dense)
        fy = _gradient(problem, "f_y", lambda a, b, d, e: jax.grad(problem.f, argnums=1)(
            a, b, d, e), x, y, data, batch, n_agents, shared_dense)
    else:
        fx, fy = jax.grad(problem.f, argnums=(0, 1))(x, y, data, batch)

    def grad_y_g(xx, yy):
        return jax.grad(problem.g, argnums=1)(xx, yy, data, batch)

    dy = sum(int(jnp.size(a)) for a in jax.tree.leaves(y))
    dx = sum(int(jnp.size(a)) for a in jax.tree.leaves(x))
    iters = {CG: lambda s: s.maxiter, Neumann: lambda s: s.K}.get(type(solver), lambda s: 0)(
        solver)
    dense_yy = dense_xy = False
    if shared_dense and _dense_ok(max(dx, dy), iters, n_agents):
        dense_yy, dense_xy = shared_operators(problem, x, y, data, batch)
    if dense_yy or dense_xy:
        # evaluated at dummy per-agent inputs: the matrices depend on data.shared only, so
        # under vmap they are computed once (not per agent) and stay traced in data.shared
        zx, zy, zb = _dummy(x), _dummy(y), _dummy(batch)
        zdata = ProblemData(shared=data.shared, agents=_dummy(data.agents))
    if dense_yy:
        M = _yy_matrix_fn(problem)(zx, zy, zdata, zb)
        _, unravel_y = ravel_pytree(y)

        def matvec(v):  # (M v) as v Mᵀ: the agent axis stays the GEMM's row axis
            return unravel_y(ravel_pytree(v)[0] @ M.T)
        dense = None
        if isinstance(solver, Exact):
            def dense():
                return M
    elif problem.hvp_yy is not None:
        def matvec(v):
            return problem.hvp_yy(x, y, data, batch, v)
        dense = None
    else:
        _, matvec = jax.linearize(lambda yy: grad_y_g(x, yy), y)
        dense = None
        if isinstance(solver, Exact):
            y_flat, unravel = ravel_pytree(y)

            def dense():
                return jax.jacfwd(lambda yf: ravel_pytree(grad_y_g(x, unravel(yf)))[0])(y_flat)

    v = linear_solve(matvec, fy, solver, dense, x0=v0)
    if dense_xy:
        C = _xy_matrix_fn(problem)(zx, zy, zdata, zb)
        _, unravel_x = ravel_pytree(x)
        cross = unravel_x(ravel_pytree(v)[0] @ C.T)
    elif problem.cross_xy is not None:
        cross = problem.cross_xy(x, y, data, batch, v)
    else:
        _, vjp = jax.vjp(lambda xx: grad_y_g(xx, y), x)
        (cross,) = vjp(v)
    h = jax.tree.map(jnp.subtract, fx, cross)
    return (h, v) if return_solution else h


# ----------------------------------------------------------------------------------------
# second-order oracles for single-loop methods (one agent)
# ----------------------------------------------------------------------------------------
def hvp_yy(problem: BilevelProblem, x, y, data, batch, v):
    """∇²_yy g(x, y) · v (the problem's own product if it has one, else forward-over-reverse)."""
    if problem.hvp_yy is not None:
        return problem.hvp_yy(x, y, data, batch, v)
    return jax.jvp(lambda yy: jax.grad(problem.g, argnums=1)(x, yy, data, batch), (y,), (v,))[1]


def cross_xy(problem: BilevelProblem, x, y, data, batch, v):
    """∇²_xy g(x, y) · v = ∇_x ⟨∇_y g(x, y), v⟩ (the problem's own product, else one VJP)."""
    if problem.cross_xy is not None:
        return problem.cross_xy(x, y, data, batch, v)
    _, vjp = jax.vjp(lambda xx: jax.grad(problem.g, argnums=1)(xx, y, data, batch), x)
    return vjp(v)[0]
