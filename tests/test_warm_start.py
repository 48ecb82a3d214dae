"""Warm-started hypergradient solves (``SLAMConfig(warm_start=True)``).

* off (the default) leaves the state and the numbers exactly as without the option;
* on, the first step (v₀ = 0) is bit-identical to the cold solve and later steps differ;
* with few CG / Neumann iterations the warm-started run reaches the closed-form fixed point of
  the quadratic, which the cold run with the same few iterations misses;
* the state carries the solution v = H⁻¹(y − t) of eq. (23) at the fixed point;
* derivatives through a run are those of the exact solve (implicit rule), as cold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.hypergrad import CG, Neumann
from slamjax.problems.quadratic import fixed_point, make_quadratic


def _setup(dtype, n=8, d=6, m=1, seed=0):
    problem, data, x0, y0 = make_quadratic(n, d, d, m, seed=seed, dtype=dtype,
                                           hessian_range=(0.5, 4.0))
    g = sj.graphs.ring(n)
    params = sj.SLAMParams.create(25.0, 25.0, 0.5, 1.0, dtype=dtype)
    return problem, data, x0, y0, g, params


def _solve(problem, g, cfg, params, data, x0, y0, steps):
    return sj.solve(sj.slam(problem, g, cfg), params, data, x0, y0, jax.random.key(0), steps)


def test_off_is_default_and_adds_nothing_to_the_state():
    problem, data, x0, y0, g, params = _setup(jnp.float32)
    assert sj.SLAMConfig().warm_start is False
    a = _solve(problem, g, sj.SLAMConfig(), params, data, x0, y0, 20)
    b = _solve(problem, g, sj.SLAMConfig(warm_start=False), params, data, x0, y0, 20)
    assert a.hg_v is None and b.hg_v is None
    assert len(jax.tree.leaves(a)) == len(jax.tree.leaves(sj.slam(problem, g).init(x0, y0)))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    with pytest.raises(ValueError, match="warm_start"):
        sj.SLAMConfig(warm_start="yes")


@pytest.mark.parametrize("solver", [CG(3), Neumann(4, 0.2)])
def test_first_warm_step_is_bit_identical_then_differs(solver):
    problem, data, x0, y0, g, params = _setup(jnp.float32)
    cold = sj.SLAMConfig(solver=solver)
    warm = sj.SLAMConfig(solver=solver, warm_start=True)
    c1 = _solve(problem, g, cold, params, data, x0, y0, 1)
    w1 = _solve(problem, g, warm, params, data, x0, y0, 1)
    np.testing.assert_array_equal(np.asarray(c1.x), np.asarray(w1.x))
    np.testing.assert_array_equal(np.asarray(c1.y), np.asarray(w1.y))
    assert w1.hg_v.shape == y0.shape and np.all(np.isfinite(np.asarray(w1.hg_v)))
    c5 = _solve(problem, g, cold, params, data, x0, y0, 5)
    w5 = _solve(problem, g, warm, params, data, x0, y0, 5)
    assert np.max(np.abs(np.asarray(c5.x) - np.asarray(w5.x))) > 1e-6


@pytest.mark.parametrize("solver", [CG(2), Neumann(2, 0.2)])
def test_warm_start_reaches_the_closed_form_fixed_point(x64, solver):
    problem, data, x0, y0, g, params = _setup(jnp.float64, m=2)
    xs = np.asarray(fixed_point(data, True, True, True))
    steps = 3000
    warm = _solve(problem, g, sj.SLAMConfig(solver=solver, warm_start=True), params, data, x0,
                  y0, steps)
    cold = _solve(problem, g, sj.SLAMConfig(solver=solver), params, data, x0, y0, steps)
    scale = np.max(np.abs(xs))
    err_warm = np.max(np.abs(np.asarray(warm.x) - xs)) / scale
    err_cold = np.max(np.abs(np.asarray(cold.x) - xs)) / scale
    assert err_warm < 1e-8, err_warm
    assert err_cold > 1e-4, err_cold  # the same few iterations from zero stop short
    # the state carries the solution of eq. (23): v_i = H⁻¹ (y_i − t_i) per task
    H = np.asarray(data.shared["H"])
    v_ref = np.einsum("kij,nkj->nki", np.linalg.inv(H),
                      np.asarray(warm.y) - np.asarray(data.agents["t"]))
    np.testing.assert_allclose(np.asarray(warm.hg_v), v_ref, rtol=1e-7, atol=1e-9)


def test_derivatives_through_a_warm_run_match_the_cold_run(x64):
    problem, data, x0, y0, g, _ = _setup(jnp.float64)

    def loss(rho, warm):
        params = sj.SLAMParams.create(25.0, 25.0, rho, 1.0)
        st = _solve(problem, g, sj.SLAMConfig(solver=CG(12), warm_start=warm), params, data,
                    x0, y0, 40)
        return jnp.sum(st.x ** 2)

    gw = jax.grad(loss)(0.5, True)
    gc = jax.grad(loss)(0.5, False)
    assert np.isfinite(gw) and abs(float(gw)) > 0
    np.testing.assert_allclose(float(gw), float(gc), rtol=1e-6)
