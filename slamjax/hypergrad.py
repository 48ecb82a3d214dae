"""Implicit (hyper)gradient of eq. (23), matrix-free.

For one agent (all m LL tasks at once, see :mod:`slamjax.problem`)::

    h_f = ∇_x f(x, y) − ∇²_xy g(x, y) · v,     ∇²_yy g(x, y) · v = ∇_y f(x, y)      (23)

Hessian-vector products are forward-over-reverse (``jax.linearize`` of ``∇_y g``, so the K
products of an iterative solve reuse one linearization), or the problem's own ``hvp_yy``; the
cross term ∇²_xy g·v is one VJP of ``x ↦ ∇_y g(x, y)``, or the problem's ``cross_xy``. The
linear solve is the solver's (:mod:`slamjax.solvers`: CG, Neumann, Exact). Operators shared by
all agents are materialised once as dense matrices when the step's :class:`OperatorPlan` says
so (:mod:`slamjax.operators`; a kernel computes the plan once per step, outside the per-agent
``vmap``, and passes it as ``plan=``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from slamjax.operators import (OperatorPlan, affine_gradient, dummy, grad_f, grad_y_g, plan,
                               xy_matrix_fn, yy_matrix_fn)
from slamjax.problem import BilevelProblem, ProblemData
from slamjax.solvers import (CG, SOLVERS, Exact, FunctionOperator, MatrixOperator, Neumann,
                             cg_solve, linear_solve, make_solver)

__all__ = ["CG", "Neumann", "Exact", "SOLVERS", "make_solver", "hypergradient", "lower_grad",
           "linear_solve", "cg_solve", "hvp_yy", "cross_xy", "ll_operator", "step_plan"]


def step_plan(problem: BilevelProblem, x, y, data, batch, solver, *, n_agents: int | None,
              enabled: bool = True) -> OperatorPlan:
    """The :class:`OperatorPlan` of one agent's eq.-(23) solve at (x, y) (per-agent values or
    abstract shapes)."""
    return plan(problem, x, y, data, batch, n_agents=n_agents,
                iterations=getattr(solver, "iterations", 0), enabled=enabled)


def lower_grad(problem: BilevelProblem, x, y, data, batch, *, n_agents: int | None = None,
               shared_dense: bool = True, plan: OperatorPlan | None = None):
    """h_g = ∇_y g(x, y) for one agent (all tasks). With ``n_agents`` (the caller vmaps over
    that many agents) and g quadratic in (x, y) with second derivatives shared by all agents,
    evaluated as ∇_y g(0, 0) + x J_xᵀ + y J_yᵀ (exact; see :mod:`slamjax.operators`)."""
    grad_fn = grad_y_g(problem)
    if plan is None:
        if n_agents is None:
            return grad_fn(x, y, data, batch)
        plan = step_plan(problem, x, y, data, batch, None, n_agents=n_agents,
                         enabled=shared_dense)
    return affine_gradient(grad_fn, plan.g_y, x, y, data, batch)


def ll_operator(problem: BilevelProblem, x, y, data, batch, plan: OperatorPlan, zeros=None):
    """The operator v ↦ ∇²_yy g(x, y)·v of one agent: a shared dense matrix (``plan.yy``),
    the problem's ``hvp_yy`` or a linearization of ∇_y g (dense matrix for Exact: its
    Jacobian at y)."""
    if plan.yy:
        zx, zy, zdata, zb = zeros
        return MatrixOperator(yy_matrix_fn(problem)(zx, zy, zdata, zb), ravel_pytree(y)[1])
    if problem.hvp_yy is not None:
        return FunctionOperator(lambda v: problem.hvp_yy(x, y, data, batch, v))

    def grad_y(yy):
        return jax.grad(problem.g, argnums=1)(x, yy, data, batch)

    _, matvec = jax.linearize(grad_y, y)
    y_flat, unravel = ravel_pytree(y)
    return FunctionOperator(matvec, lambda: jax.jacfwd(
        lambda yf: ravel_pytree(grad_y(unravel(yf)))[0])(y_flat))


def _cross(problem, x, y, data, batch, v, plan, zeros):
    if plan.xy:
        C = xy_matrix_fn(problem)(*zeros)
        return ravel_pytree(x)[1](ravel_pytree(v)[0] @ C.T)
    if problem.cross_xy is not None:
        return problem.cross_xy(x, y, data, batch, v)
    _, vjp = jax.vjp(lambda xx: jax.grad(problem.g, argnums=1)(xx, y, data, batch), x)
    return vjp(v)[0]


def hypergradient(problem: BilevelProblem, x, y, data, batch, solver, *,
                  n_agents: int | None = None, shared_dense: bool = True, v0=None,
                  return_solution: bool = False, plan: OperatorPlan | None = None) -> Any:
    """Surrogate implicit gradient of eq. (23) for one agent, at its local (x, y).

    A problem with its own UL-gradient estimator (``problem.ul_grad``) uses that instead.
    ``plan``: the step's :class:`OperatorPlan`; without one it is computed here from
    ``n_agents`` (how many agents the caller vmaps this over) and ``shared_dense`` (``False``:
    nothing is materialised). ``v0``: warm start of the solve ∇²_yy g·v = ∇_y f;
    ``return_solution=True`` returns ``(h_f, v)`` (with ``ul_grad``, v is ``v0``)."""
    if problem.ul_grad is not None:
        h = problem.ul_grad(x, y, data, batch)
        return (h, v0) if return_solution else h
    if plan is None:
        plan = step_plan(problem, x, y, data, batch, solver, n_agents=n_agents,
                         enabled=shared_dense)
    fx = affine_gradient(grad_f(problem, 0), plan.f_x, x, y, data, batch)
    fy = affine_gradient(grad_f(problem, 1), plan.f_y, x, y, data, batch)
    zeros = None
    if plan.yy or plan.xy:
        # evaluated at dummy per-agent inputs: the matrices depend on data.shared only, so
        # under vmap they are computed once (not per agent) and stay traced in data.shared
        zeros = (dummy(x), dummy(y), ProblemData(shared=data.shared, agents=dummy(data.agents)),
                 dummy(batch))
    op = ll_operator(problem, x, y, data, batch, plan, zeros)
    v = solver.solve(op, fy, x0=v0)
    cross = _cross(problem, x, y, data, batch, v, plan, zeros)
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
