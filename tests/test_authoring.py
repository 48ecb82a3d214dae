"""Writing one's own problem: default metrics for a problem without a hook, clear errors for
the usual mistakes (another method's params, dict-style data access, a missing trailing axis),
``log_every`` that need not divide ``num_steps``."""

import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.baselines import DSOBAParams, dsoba


def _ridge(n=6, d=3, N=20, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, N, d))
    b = A @ rng.standard_normal(d) + 0.1 * rng.standard_normal((n, N))
    data = sj.ProblemData(agents={"A": jnp.asarray(A, jnp.float32),
                                  "b": jnp.asarray(b, jnp.float32)})

    def g(x, y, data, batch):
        a = data.agents
        return 0.5 * jnp.mean((a["A"] @ y - a["b"]) ** 2) + 0.5 * jnp.exp(x[0]) * y @ y

    def f(x, y, data, batch):
        a = data.agents
        return 0.5 * jnp.mean((a["A"] @ y - a["b"]) ** 2) + 0.1 * x[0] ** 2

    return sj.BilevelProblem(f=f, g=g, name="ridge"), data, jnp.zeros((n, 1)), jnp.zeros((n, d))


def test_a_problem_without_metrics_gets_mean_f_and_the_hypergradient_norm():
    problem, data, x0, y0 = _ridge()
    x0 = x0 + 1.0  # away from the stationary point
    res = sj.run(sj.slam(problem, sj.graphs.ring(6)), sj.SLAMParams.create(20.0, 5.0, 0.5),
                 data, x0, y0, num_steps=400, log_every=100, progress=False)
    assert {"mean_f", "hypergrad_sq", "consensus_x", "consensus_y"} <= set(res.history)
    # mean_f is (1/n) Σ f_i at the logged state: recompute it at the final state
    want = float(jnp.mean(sj.per_agent(problem.f, res.state.x, res.state.y, data)))
    np.testing.assert_allclose(res.history["mean_f"][-1], want, rtol=1e-5)
    assert res.history["hypergrad_sq"][-1] < 1e-2 * res.history["hypergrad_sq"][0]
    # the default loss works by name in slamjax.diff
    value, _ = sj.diff.value_and_grad_run(sj.slam(problem, sj.graphs.ring(6)),
                                          sj.SLAMParams.create(20.0, 5.0, 0.5), data, x0, y0,
                                          num_steps=20, loss="mean_f", wrt=("rho",))
    assert np.isfinite(float(value))


def test_another_methods_params_name_the_expected_class():
    problem, data, x0, y0 = _ridge()
    g = sj.graphs.ring(6)
    with pytest.raises(TypeError, match=r"SLAMParams.*SLAMParams\.create.*DSOBAParams"):
        sj.run(sj.slam(problem, g), DSOBAParams.create(0.1, 0.1, 0.1), data, x0, y0,
               num_steps=10, log_every=5, progress=False)
    with pytest.raises(TypeError, match=r"DSOBAParams\.create"):
        sj.run(dsoba(problem, g), sj.SLAMParams.create(10.0, 10.0, 1.0), data, x0, y0,
               num_steps=10, log_every=5, progress=False)


def test_dict_style_data_access_and_a_missing_trailing_axis_are_explained():
    problem, data, x0, y0 = _ridge()

    def f_dict(x, y, data, batch):
        return jnp.mean((data["A"] @ y - data["b"]) ** 2)

    bad = sj.BilevelProblem(f=f_dict, g=problem.g)
    with pytest.raises(TypeError, match=r"data\.agents"):
        sj.solve(sj.slam(bad, sj.graphs.ring(6)), sj.SLAMParams.create(20.0, 5.0, 0.5), data,
                 x0, y0, 0, 5)
    with pytest.raises(ValueError, match=r"x0 of shape \(6, 1\)"):
        sj.solve(sj.slam(problem, sj.graphs.ring(6)), sj.SLAMParams.create(20.0, 5.0, 0.5),
                 data, jnp.zeros((6,)), y0, 0, 5)


def test_log_every_need_not_divide_num_steps_and_the_json_says_so(tmp_path):
    problem, data, x0, y0 = _ridge()
    res = sj.run(sj.slam(problem, sj.graphs.ring(6)), sj.SLAMParams.create(20.0, 5.0, 0.5),
                 data, x0, y0, num_steps=250, log_every=100, progress=False)
    assert list(res.steps) == [0, 100, 200, 250] and res.num_steps == 250
    import json

    saved = json.loads(res.save_json(tmp_path / "r.json").read_text())
    assert saved["log_every"] == 100 and saved["steps"][-1] == 250
