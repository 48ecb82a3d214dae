"""Eq. (23) against closed forms (quadratic) and dense jax.hessian computations (logistic LL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slamjax import CG, Exact, Neumann, make_solver
from slamjax.hypergrad import cg_solve, hypergradient
from slamjax.problem import BilevelProblem, ProblemData
from slamjax.problems.quadratic import make_quadratic, surrogate_hypergrad

SOLVERS = [CG(maxiter=20), Neumann(K=400, eta=0.2), Exact()]

# jit-compiled entry points (eager evaluation of the solver loops is slow)
_hg = jax.jit(hypergradient, static_argnums=(0, 5))
_hg_agents = jax.jit(jax.vmap(hypergradient, in_axes=(None, 0, 0, ProblemData(None, 0), None,
                                                      None)), static_argnums=(0, 5))


@pytest.mark.parametrize("solver", SOLVERS, ids=["cg", "neumann", "exact"])
@pytest.mark.parametrize("homogeneous", [True, False])
@pytest.mark.parametrize("autodiff", [True, False])
def test_quadratic_hypergradient_equals_closed_form(x64, solver, homogeneous, autodiff):
    n = 4
    problem, data, x0, y0 = make_quadratic(n, dx=3, dy=4, m=2, seed=1, homogeneous=homogeneous,
                                           dtype=jnp.float64, autodiff=autodiff)
    want = np.asarray(surrogate_hypergrad(x0, y0, data, homogeneous))
    got = _hg_agents(problem, x0, y0, data, None, solver)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


# A non-quadratic LL: ridge-regularised logistic regression with per-feature log-penalties x
# (hyperparameter optimisation); the UL is a validation logistic loss.
def _logistic_problem():
    def g(x, y, data, batch):
        a, b = data.agents["A_tr"], data.agents["b_tr"]
        return jnp.mean(jnp.logaddexp(0.0, -b * (a @ y))) + 0.5 * jnp.sum(jnp.exp(x) * y ** 2)

    def f(x, y, data, batch):
        a, b = data.agents["A_val"], data.agents["b_val"]
        return jnp.mean(jnp.logaddexp(0.0, -b * (a @ y))) + 0.01 * jnp.sum(x ** 2)

    rng = np.random.default_rng(0)
    d, ntr = 5, 30
    agents = {"A_tr": rng.standard_normal((ntr, d)), "b_tr": np.sign(rng.standard_normal(ntr)),
              "A_val": rng.standard_normal((ntr, d)), "b_val": np.sign(rng.standard_normal(ntr))}
    data = ProblemData(None, jax.tree.map(jnp.asarray, agents))
    x = jnp.asarray(rng.standard_normal(d) * 0.3 - 1.0)
    y = jnp.asarray(rng.standard_normal(d))
    return BilevelProblem(f=f, g=g), data, x, y


def _dense_hypergradient(problem, x, y, data):
    gyy = jax.hessian(problem.g, argnums=1)(x, y, data, None)
    gxy = jax.jacfwd(jax.grad(problem.g, argnums=1), argnums=0)(x, y, data, None)  # (dy, dx)
    fx, fy = jax.grad(problem.f, argnums=(0, 1))(x, y, data, None)
    return fx - gxy.T @ jnp.linalg.solve(gyy, fy)


@pytest.mark.parametrize("solver", [CG(maxiter=30), Neumann(K=600, eta=0.5), Exact()],
                         ids=["cg", "neumann", "exact"])
def test_nonquadratic_hypergradient_equals_dense_hessian(x64, solver):
    problem, data, x, y = _logistic_problem()
    want = _dense_hypergradient(problem, x, y, data)
    got = _hg(problem, x, y, data, None, solver)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_truncated_solvers_are_inexact(x64):
    """Guard against a test that cannot fail: 2 CG steps / 3 Neumann terms miss the answer."""
    problem, data, x, y = _logistic_problem()
    want = _dense_hypergradient(problem, x, y, data)
    for solver in (CG(maxiter=1), Neumann(K=3, eta=0.5)):
        got = _hg(problem, x, y, data, None, solver)
        assert np.max(np.abs(got - want)) > 1e-6


def test_pytree_variables(x64):
    """x and y as dicts of leaves: same numbers as the flat version."""
    problem, data, x, y = _logistic_problem()

    def split(v):
        return {"a": v[:2], "b": v[2:]}

    def merge(t):
        return jnp.concatenate([t["a"], t["b"]])

    tree_problem = BilevelProblem(
        f=lambda xx, yy, d, b: problem.f(merge(xx), merge(yy), d, b),
        g=lambda xx, yy, d, b: problem.g(merge(xx), merge(yy), d, b))
    want = hypergradient(problem, x, y, data, None, CG(maxiter=30))
    got = hypergradient(tree_problem, split(x), split(y), data, None, CG(maxiter=30))
    np.testing.assert_allclose(merge(got), want, rtol=1e-10)


def test_cg_solve_matches_dense(x64):
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    A = jnp.asarray(q @ np.diag(np.linspace(1, 10, 8)) @ q.T)
    b = jnp.asarray(rng.standard_normal(8))
    np.testing.assert_allclose(cg_solve(lambda v: A @ v, b, 8), np.linalg.solve(A, b), rtol=1e-9)
    # early stopping with a tolerance
    x = cg_solve(lambda v: A @ v, b, 100, tol=1e-6)
    assert np.linalg.norm(A @ x - b) <= 1.01e-6 * np.linalg.norm(b)


def test_solver_names_and_bad_settings():
    assert make_solver("cg", maxiter=5) == CG(5)
    assert make_solver("neumann", K=3, eta=0.1) == Neumann(3, 0.1)
    assert make_solver("exact") == Exact()
    with pytest.raises(ValueError, match="unknown solver"):
        make_solver("lu")
    with pytest.raises(ValueError, match="maxiter"):
        CG(maxiter=0)
    with pytest.raises(ValueError, match="eta"):
        Neumann(K=3, eta=0.0)


def test_problem_supplied_ul_gradient_replaces_eq23(x64):
    problem, data, x, y = _logistic_problem()
    custom = BilevelProblem(f=problem.f, g=problem.g,
                            ul_grad=lambda xx, yy, d, b: jax.grad(problem.f)(xx, yy, d, b))
    got = _hg(custom, x, y, data, None, CG(5))
    np.testing.assert_allclose(got, jax.grad(problem.f)(x, y, data, None), rtol=1e-12)
    assert np.max(np.abs(got - _hg(problem, x, y, data, None, CG(30)))) > 1e-6
