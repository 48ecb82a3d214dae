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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from slamjax.problem import BilevelProblem

__all__ = ["CG", "Neumann", "Exact", "SOLVERS", "make_solver", "hypergradient",
           "lower_grad", "linear_solve", "cg_solve", "hvp_yy", "cross_xy"]


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


def cg_solve(matvec: Callable, b, maxiter: int, tol: float = 0.0):
    """Plain CG for a symmetric positive-definite ``matvec`` on pytrees (x₀ = 0)."""
    x = jax.tree.map(jnp.zeros_like, b)
    rs = _vdot(b, b)
    stop = (tol * tol) * rs

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


def linear_solve(matvec: Callable, b, solver, dense_matrix: Callable | None = None):
    """Solve H v = b for the SPD operator ``matvec`` with the chosen solver."""
    if isinstance(solver, CG):
        return lax.custom_linear_solve(
            matvec, b,
            solve=lambda mv, rhs: cg_solve(mv, rhs, int(solver.maxiter), float(solver.tol)),
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
# eq. (23)
# ----------------------------------------------------------------------------------------
def lower_grad(problem: BilevelProblem, x, y, data, batch):
    """h_g = ∇_y g(x, y) for one agent (all tasks)."""
    return jax.grad(problem.g, argnums=1)(x, y, data, batch)


def hypergradient(problem: BilevelProblem, x, y, data, batch, solver) -> Any:
    """Surrogate implicit gradient of eq. (23) for one agent, at its local (x, y).

    A problem with its own UL-gradient estimator (``problem.ul_grad``) uses that instead."""
    if problem.ul_grad is not None:
        return problem.ul_grad(x, y, data, batch)
    fx, fy = jax.grad(problem.f, argnums=(0, 1))(x, y, data, batch)

    def grad_y_g(xx, yy):
        return jax.grad(problem.g, argnums=1)(xx, yy, data, batch)

    if problem.hvp_yy is not None:
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

    v = linear_solve(matvec, fy, solver, dense)
    if problem.cross_xy is not None:
        cross = problem.cross_xy(x, y, data, batch, v)
    else:
        _, vjp = jax.vjp(lambda xx: grad_y_g(xx, y), x)
        (cross,) = vjp(v)
    return jax.tree.map(jnp.subtract, fx, cross)


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
