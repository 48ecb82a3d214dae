"""Linear solvers for the eq.-(23) system ∇²_yy g·v = ∇_y f, and the operators they apply.

A solver is a frozen (hashable, static) dataclass that carries its behaviour (lineax's
``CG.init/compute`` shape): ``solver.solve(operator, b, x0=None)`` and ``solver.iterations``
(products per solve, which sizes the decision to materialise a shared operator). An operator
is :class:`FunctionOperator` (a matrix-free product, e.g. forward-over-reverse HVPs) or
:class:`MatrixOperator` (a dense matrix shared by all agents, applied as ``v @ Mᵀ`` so the
agent axis stays the GEMM's row axis); both give ``mv(v)`` and ``as_matrix(...)``.

* :class:`CG` — conjugate gradients wrapped in ``lax.custom_linear_solve``: derivatives of the
  solution are computed implicitly (another CG solve with the same symmetric operator), so
  reverse mode through thousands of SLAM steps stays finite and cheap.
* :class:`Neumann` — the truncated Neumann series η Σ_{j<K} (I − ηH)^j b, the estimator used in
  the paper's analysis (refs. [31, 33]); differentiated by unrolling.
* :class:`Exact` — a dense matrix and ``jnp.linalg.solve``; small d, tests.

``x0`` warm-starts an iterative solver: v = x₀ + solve(b − H x₀) (for CG the iterates of CG
started at x₀, stopping rule still relative to ‖b‖); the guess carries no derivative, so the
implicit rule still differentiates H⁻¹b. ``Exact`` ignores it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

__all__ = ["CG", "Neumann", "Exact", "SOLVERS", "make_solver", "FunctionOperator",
           "MatrixOperator", "cg_solve", "linear_solve", "tree_vdot"]


class FunctionOperator(NamedTuple):
    """v ↦ ``fn(v)`` on pytrees; ``dense()`` (optional) builds its matrix for :class:`Exact`
    (else the Jacobian of ``fn`` at zero)."""

    fn: Callable
    dense: Callable | None = None

    def mv(self, v):
        """The product with ``v``."""
        return self.fn(v)

    def as_matrix(self, b_flat, unravel):
        """The dense matrix on flattened vectors (``b_flat`` gives the size and dtype)."""
        if self.dense is not None:
            return self.dense()
        return jax.jacfwd(lambda v: ravel_pytree(self.fn(unravel(v)))[0])(jnp.zeros_like(b_flat))


class MatrixOperator(NamedTuple):
    """A dense matrix M on flattened pytrees (``unravel`` restores the tree): v ↦ M v as
    ``ravel(v) @ Mᵀ``."""

    matrix: Any
    unravel: Callable

    def mv(self, v):
        """M v, as ``ravel(v) @ Mᵀ``."""
        return self.unravel(ravel_pytree(v)[0] @ self.matrix.T)

    def as_matrix(self, b_flat, unravel):
        """M."""
        return self.matrix


# ----------------------------------------------------------------------------------------
# pytree linear algebra
# ----------------------------------------------------------------------------------------
def tree_vdot(a, b):
    """Σ over leaves of ⟨a, b⟩."""
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
    rs = tree_vdot(b, b)
    stop = (tol * tol) * (rs if ref_sq is None else ref_sq)

    def body(carry):
        x, r, p, rs, k = carry
        ap = matvec(p)
        alpha = _safe_div(rs, tree_vdot(p, ap))
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rs_new = tree_vdot(r, r)
        p = _axpy(_safe_div(rs_new, rs), p, r)
        return x, r, p, rs_new, k + 1

    carry = (x, b, b, rs, jnp.zeros((), jnp.int32))
    if tol > 0.0:
        carry = lax.while_loop(lambda c: (c[4] < maxiter) & (c[3] > stop), body, carry)
    else:
        carry = lax.fori_loop(0, maxiter, lambda _, c: body(c), carry)
    return carry[0]


class _Iterative:
    """Warm starts for the iterative solvers: x₀ + (the solve of the residual from zero)."""

    relative_stop = False

    def solve(self, op, b, x0=None):
        """H⁻¹ b for the operator ``op``, warm-started at ``x0`` if given."""
        if x0 is None:
            return self.from_zero(op.mv, b, None)
        guess = jax.tree.map(lax.stop_gradient, x0)
        r0 = jax.tree.map(jnp.subtract, b, op.mv(guess))
        ref = lax.stop_gradient(tree_vdot(b, b)) if self.relative_stop else None
        return jax.tree.map(jnp.add, guess, self.from_zero(op.mv, r0, ref))

    def from_zero(self, matvec, b, ref_sq):  # pragma: no cover - overridden
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class CG(_Iterative):
    """Conjugate gradients, ``maxiter`` iterations (stops early once ‖r‖ ≤ tol·‖b‖ if tol>0)."""

    maxiter: int = 10
    tol: float = 0.0
    relative_stop = True

    def __post_init__(self):
        if int(self.maxiter) < 1:
            raise ValueError(f"CG needs maxiter ≥ 1, got {self.maxiter}")
        if not (self.tol >= 0.0):
            raise ValueError(f"CG needs tol ≥ 0, got {self.tol}")

    @property
    def iterations(self) -> int:
        """Operator products per solve (``maxiter``)."""
        return int(self.maxiter)

    def from_zero(self, matvec, b, ref_sq):
        """CG from x₀ = 0, differentiated implicitly (``custom_linear_solve``)."""
        return lax.custom_linear_solve(
            matvec, b, solve=lambda mv, rhs: cg_solve(mv, rhs, int(self.maxiter),
                                                      float(self.tol), ref_sq),
            symmetric=True)


@dataclasses.dataclass(frozen=True)
class Neumann(_Iterative):
    """Truncated Neumann series v = η Σ_{j=0}^{K−1} (I − ηH)^j b (converges if 0 < η < 2/‖H‖)."""

    K: int = 20
    eta: float = 0.1

    def __post_init__(self):
        if int(self.K) < 1:
            raise ValueError(f"Neumann needs K ≥ 1 terms, got {self.K}")
        if not (self.eta > 0.0):
            raise ValueError(f"Neumann needs a step eta > 0, got {self.eta}")

    @property
    def iterations(self) -> int:
        """Operator products per solve (K)."""
        return int(self.K)

    def from_zero(self, matvec, b, ref_sq):
        """The truncated series η Σ_{j<K} (I − ηH)^j b."""
        eta = self.eta

        def body(_, carry):
            term, acc = carry
            term = _axpy(-eta, matvec(term), term)
            return term, jax.tree.map(jnp.add, acc, term)

        _, acc = lax.fori_loop(0, int(self.K) - 1, body, (b, b))
        return jax.tree.map(lambda a: eta * a, acc)


@dataclasses.dataclass(frozen=True)
class Exact:
    """Dense LL Hessian and a direct solve (O(d_y³) per agent: small problems and tests)."""

    iterations = 0

    def solve(self, op, b, x0=None):
        """``jnp.linalg.solve`` with the operator's dense matrix (``x0`` is ignored)."""
        b_flat, unravel = ravel_pytree(b)
        return unravel(jnp.linalg.solve(op.as_matrix(b_flat, unravel), b_flat))


SOLVERS = {"cg": CG, "neumann": Neumann, "exact": Exact}
"""The solvers by name (:func:`make_solver`)."""


def make_solver(name: str, **kwargs):
    """Solver by name: ``cg`` (maxiter, tol), ``neumann`` (K, eta) or ``exact``."""
    try:
        cls = SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {tuple(SOLVERS)}") from None
    return cls(**kwargs)


def linear_solve(matvec: Callable, b, solver, dense_matrix: Callable | None = None, x0=None):
    """Solve H v = b for the SPD operator ``matvec`` with ``solver`` (``x0``: warm start;
    ``dense_matrix()``: H for :class:`Exact`, else the Jacobian of ``matvec``)."""
    return solver.solve(FunctionOperator(matvec, dense_matrix), b, x0=x0)
