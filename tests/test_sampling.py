"""SLAMConfig(minibatches=1 | 2): one minibatch per agent and step shared by h_g and h_f, or two.

A problem built so that one step reveals which minibatch each direction saw: per agent,
g = ½y² − b_g·y and f = ½(x − b_f)² (no implicit term: f does not depend on y), with the
batch a single standard normal b. From x = y = 0 with unit steps (α = β = 1) and no
communication, one step gives y⁺ = b_g and x⁺ = b_f: equal iff the batch was shared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.problem import BilevelProblem, ProblemData


def _reveal_problem():
    return BilevelProblem(
        f=lambda x, y, d, b: 0.5 * jnp.sum((x - b["b"]) ** 2),
        g=lambda x, y, d, b: 0.5 * jnp.sum(y ** 2) - jnp.sum(b["b"] * y),
        sample=lambda key, d: {"b": jax.random.normal(key, (1,))},
        name="reveal")


@pytest.mark.parametrize("variant", ["slam", "slam_u"])
@pytest.mark.parametrize("alg_name", ["slam", "bias_free_slam"])
def test_one_shared_minibatch_is_used_by_both_directions(variant, alg_name):
    n = 4
    problem = _reveal_problem()
    data = ProblemData(shared=None, agents={"dummy": jnp.zeros((n,))})
    x0 = y0 = jnp.zeros((n, 1))
    out = {}
    for mb in (1, 2):
        config = sj.SLAMConfig(variant, solver=sj.Exact(), minibatches=mb)
        if alg_name == "slam":
            alg, params = sj.slam(problem, sj.graphs.empty(n), config), \
                sj.SLAMParams.create(1.0, 1.0, 1.0, 1.0)
        else:
            alg = sj.baselines.bias_free_slam(problem, sj.graphs.empty(n), config)
            params = sj.baselines.BiasFreeParams.create(1.0, 1.0, 1.0, 1.0, 1.0)
        res = sj.run(alg, params, data, x0, y0, num_steps=1, log_every=1, seed=3,
                     progress=False)
        out[mb] = (np.asarray(res.state.x), np.asarray(res.state.y),
                   float(np.asarray(res.history["minibatches"])[-1]))
    x1, y1, count1 = out[1]
    x2, y2, count2 = out[2]
    np.testing.assert_array_equal(x1, y1)             # shared: x⁺ = y⁺ = b
    assert np.abs(x2 - y2).min() > 1e-3               # independent: different draws
    np.testing.assert_array_equal(y1, y2)             # the LL batch is the same in both modes
    assert (count1, count2) == (n, 2 * n)             # counted as drawn


def test_exact_oracle_is_unaffected_and_bad_values_are_refused():
    from slamjax.problems.quadratic import make_quadratic
    problem, data, x0, y0 = make_quadratic(5, 3, 2, 1, seed=0)
    g = sj.graphs.ring(5)
    p = sj.SLAMParams.create(5.0, 5.0, 0.5, 1.0)
    a = sj.solve(sj.slam(problem, g, sj.SLAMConfig(minibatches=1)), p, data, x0, y0,
                 jax.random.key(0), 20)
    b = sj.solve(sj.slam(problem, g, sj.SLAMConfig(minibatches=2)), p, data, x0, y0,
                 jax.random.key(0), 20)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    for bad in (0, 3, True, 1.5):
        with pytest.raises(ValueError, match="minibatches must be 1"):
            sj.SLAMConfig(minibatches=bad)
