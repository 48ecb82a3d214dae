"""Operators shared by all agents (slamjax.hypergrad): detection, numbers and layout.

When ∇²_yy g / ∇²_xy g depend on ``data.shared`` only, the eq.-(23) solve materialises them
once and applies them as row-major GEMMs over the agents. The detection must say "no" whenever
the operator depends on the iterate, the agent's data or the minibatch; the numbers must equal
the per-agent products and the closed form; and the compiled program must not transpose
(n, ·)-shaped arrays around the products (the layout this is for)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.hypergrad import CG, hypergradient
from slamjax.operators import detect as shared_operators
from slamjax.problems.quadratic import make_quadratic, surrogate_hypergrad


def _one(data, i=0):
    return sj.ProblemData(data.shared, jax.tree.map(lambda a: a[i], data.agents))


def _user_quadratic(products):
    def g(x, y, data, batch):
        return 0.5 * y @ data.shared["H"] @ y - y @ (data.shared["B"] @ x + data.agents["b"])

    def f(x, y, data, batch):
        return 0.5 * x @ data.shared["P"] @ x + data.agents["p"] @ x + 0.5 * jnp.sum(
            (y - data.agents["t"]) ** 2)

    kw = {}
    if products:
        kw = dict(hvp_yy=lambda x, y, d, b, v: d.shared["H"] @ v,
                  cross_xy=lambda x, y, d, b, v: -(d.shared["B"].T @ v))
    return sj.BilevelProblem(f=f, g=g, **kw)


def _user_data(n, d, dtype=jnp.float32):
    _, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0, dtype=dtype)
    sh = {"H": data.shared["H"][0], "B": data.shared["B"][0], "P": data.shared["P"]}
    ag = {"b": data.agents["b"][:, 0], "p": data.agents["p"], "t": data.agents["t"][:, 0]}
    return sj.ProblemData(sh, ag), x0, y0[:, 0]


def test_detection_says_yes_only_for_shared_operators():
    data, x0, y0 = _user_data(4, 3)
    for products in (False, True):
        assert shared_operators(_user_quadratic(products), x0[0], y0[0], _one(data), None) == \
            (True, True)
    p, d2, x, y = make_quadratic(4, 3, 3, 2, noise=0.1)
    batch = p.sample(jax.random.key(0), _one(d2))
    assert shared_operators(p, x[0], y[0], _one(d2), batch) == (True, True)
    p, d2, x, y = make_quadratic(4, 3, 3, 2, homogeneous=False)
    assert shared_operators(p, x[0], y[0], _one(d2), None) == (False, False)

    H = data.shared["H"]

    def g_nonquad(x, y, data, batch):  # Hessian depends on y
        return 0.5 * y @ H @ y + jnp.sum(jnp.log1p(jnp.exp(y * x)))

    def g_agent(x, y, data, batch):  # Hessian depends on the agent's data; cross term shared
        return 0.5 * jnp.sum(data.agents["b"] ** 2 * y ** 2) - y @ (data.shared["B"] @ x)

    def g_batch(x, y, data, batch):  # stochastic Hessian
        return 0.5 * batch["s"] * (y @ y) - y @ x

    def g_cross_y(x, y, data, batch):  # ∇²_xy g depends on y (x·y² term)
        return 0.5 * y @ H @ y - jnp.sum(x * y ** 2) * 0.01

    f = _user_quadratic(False).f
    P = sj.BilevelProblem
    assert shared_operators(P(f=f, g=g_nonquad), x0[0], y0[0], _one(data), None) == \
        (False, False)
    assert shared_operators(P(f=f, g=g_agent), x0[0], y0[0], _one(data), None) == (False, True)
    assert shared_operators(P(f=f, g=g_batch), x0[0], y0[0], _one(data),
                            {"s": jnp.float32(1.0)}) == (False, True)
    assert shared_operators(P(f=f, g=g_cross_y), x0[0], y0[0], _one(data), None) == \
        (False, False)


@pytest.mark.parametrize("products", [False, True])
def test_dense_shared_hypergradient_equals_per_agent_products(x64, products):
    problem = _user_quadratic(products)
    data, x0, y0 = _user_data(6, 5, jnp.float64)
    solver = CG(40)
    vm = jax.vmap(lambda x, y, d, dense: hypergradient(problem, x, y, d, None, solver,
                                                       n_agents=6, shared_dense=dense),
                  in_axes=(0, 0, sj.problem.DATA_AXES, None))
    fast = jax.jit(lambda x, y, d: vm(x, y, d, True))(x0, y0, data)
    slow = jax.jit(lambda x, y, d: vm(x, y, d, False))(x0, y0, data)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), rtol=1e-10, atol=1e-10)
    # closed form, eq. (23): P x + p + Bᵀ H⁻¹ (y − t)
    _, qd, _, _ = make_quadratic(6, 5, 5, 1, seed=0, dtype=jnp.float64)
    ref = surrogate_hypergrad(x0, y0[:, None], qd, True)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("homogeneous", [True, False])
def test_slam_same_iterates_with_and_without_shared_operators(x64, homogeneous):
    n = 12
    problem, data, x0, y0 = make_quadratic(n, 3, 4, 2, seed=1, noise=0.1,
                                           homogeneous=homogeneous, dtype=jnp.float64)
    g = sj.graphs.small_world(n, 4, 0.1, seed=0)
    params = sj.SLAMParams.create(25.0, 25.0, 0.3, 1.0)
    out = {}
    for flag in (True, False):
        alg = sj.slam(problem, g, sj.SLAMConfig("slam", CG(8), shared_operators=flag))
        out[flag] = sj.solve(alg, params, data, x0, y0, jax.random.key(0), 15)
    for a, b in zip(jax.tree.leaves(out[True]), jax.tree.leaves(out[False])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)


def _big_transposes(problem, data, x0, y0, n, flag=True):
    g = sj.graphs.small_world(n, 4, 0.1, seed=0)
    alg = sj.slam(problem, g, sj.SLAMConfig("slam", CG(10), shared_operators=flag))
    params = sj.SLAMParams.create(30.0, 30.0, 1.0, 1.0)
    fn = jax.jit(lambda a, s, p, d, k: sj.iterate(a, p, d, s, k, 3))
    txt = fn.lower(alg, alg.init(x0, y0, data), params, data, jax.random.key(0)) \
        .compile().as_text()
    # transposes of arrays that carry the agent axis (n = 96 is no other dimension here)
    return [ln for ln in txt.splitlines()
            if " transpose(" in ln and re.search(r"\[[0-9,]*\b96\b", ln.split("=")[1])]


@pytest.mark.parametrize("path", ["autodiff", "products", "builtin"])
def test_no_transposes_of_agent_arrays_around_products(path):
    n, d = 96, 12
    if path == "builtin":
        problem, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
    else:
        problem = _user_quadratic(path == "products")
        data, x0, y0 = _user_data(n, d)
    assert _big_transposes(problem, data, x0, y0, n) == []
    if path == "products":  # the check can fail: per-agent user products do transpose
        assert _big_transposes(problem, data, x0, y0, n, flag=False) != []


def test_affine_gradients_exact_and_only_where_cheaper(x64):
    """∇_y g and ∇_x f of a quadratic with shared second derivatives are evaluated as
    ∇(0, 0) + x J_xᵀ + y J_yᵀ (fewer products than autodiff's ½(H + Hᵀ)y); same numbers. Not
    used where autodiff has no products to save (∇_y f = y − t) or the Jacobian is not shared."""
    from slamjax import hypergrad as hg
    from slamjax import operators as ops

    problem = _user_quadratic(False)
    data, x0, y0 = _user_data(5, 4, jnp.float64)
    one = _one(data)
    gy = ops.grad_y_g(problem)
    fx = lambda a, b, d, e: jax.grad(problem.f, argnums=0)(a, b, d, e)  # noqa: E731
    fy = lambda a, b, d, e: jax.grad(problem.f, argnums=1)(a, b, d, e)  # noqa: E731
    assert ops.affine_plan(gy, x0[0], y0[0], one, None) == (True, True)
    assert ops.affine_plan(fx, x0[0], y0[0], one, None) == (True, False)
    assert ops.affine_plan(fy, x0[0], y0[0], one, None) is None
    het, hd, hx, hy = make_quadratic(5, 4, 4, 1, homogeneous=False, dtype=jnp.float64)
    assert ops.affine_plan(ops.grad_y_g(het), hx[0], hy[0], _one(hd), None) is None
    vm = jax.vmap(lambda x, y, d: hg.lower_grad(problem, x, y, d, None, n_agents=5),
                  in_axes=(0, 0, sj.problem.DATA_AXES))
    ref = jax.vmap(lambda x, y, d: gy(x, y, d, None), in_axes=(0, 0, sj.problem.DATA_AXES))
    np.testing.assert_allclose(np.asarray(vm(x0, y0, data)), np.asarray(ref(x0, y0, data)),
                               rtol=1e-12, atol=1e-12)
    # the closed form: H y − (B x + b)
    H, B = np.asarray(data.shared["H"]), np.asarray(data.shared["B"])
    want = np.asarray(y0) @ H.T - (np.asarray(x0) @ B.T + np.asarray(data.agents["b"]))
    np.testing.assert_allclose(np.asarray(vm(x0, y0, data)), want, rtol=1e-10, atol=1e-10)
