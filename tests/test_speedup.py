"""Performance paths of the core must not change the numbers.

* ``SLAMConfig(agent_block=B)`` (per-agent work in blocks via ``lax.map``) equals the plain vmap;
* ``scan_steps`` (which carries L·x, L·y from the dual step to the next primal step) equals
  repeated :func:`slamjax.step`;
* the Theorem-1 step-size rule (1/α = 1/β = min(c·√(n/T), η_max), ρ at half of
  :func:`slamjax.stability_bound`) respects the stability bound.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.problems.quadratic import make_quadratic


def _close(a, b, tol):
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=tol, atol=tol)


@pytest.mark.parametrize("block,variant", [(7, "slam"), (64, "slam"), (4, "slam_u")])
def test_agent_block_matches_vmap(x64, block, variant):
    n = 30  # 30 % 7 != 0: the remainder block is exercised
    problem, data, x0, y0 = make_quadratic(n, 3, 4, 2, seed=1, noise=0.2, dtype=jnp.float64)
    g = sj.graphs.erdos_renyi(n, seed=0)
    params = sj.SLAMParams.create(25.0, 25.0, 0.3, 1.0)
    key = jax.random.key(3)
    ref = sj.solve(sj.slam(problem, g, sj.SLAMConfig(variant)), params, data, x0, y0, key, 12)
    out = sj.solve(sj.slam(problem, g, sj.SLAMConfig(variant, agent_block=block)), params,
                   data, x0, y0, key, 12)
    _close(out, ref, 1e-12)


def test_agent_block_autodiff_problem(x64):
    n = 12
    problem, data, x0, y0 = make_quadratic(n, 2, 3, 1, seed=2, dtype=jnp.float64,
                                           autodiff=True)
    g = sj.graphs.ring(n)
    params = sj.SLAMParams.create(25.0, 25.0, 0.5, 1.0)
    key = jax.random.key(0)
    ref = sj.solve(sj.slam(problem, g), params, data, x0, y0, key, 8)
    out = sj.solve(sj.slam(problem, g, sj.SLAMConfig(agent_block=5)), params, data, x0, y0,
                   key, 8)
    _close(out, ref, 1e-12)


def test_agent_block_validation():
    with pytest.raises(ValueError, match="agent_block"):
        sj.SLAMConfig(agent_block=0)
    with pytest.raises(ValueError, match="agent_block"):
        sj.SLAMConfig(agent_block=True)
    assert sj.SLAMConfig(agent_block=np.int64(8)).agent_block == 8


@pytest.mark.parametrize("graph,masks", [("ring", (None, None)),
                                         ("small_world", ((True, False), None)),
                                         ("complete", (None, False))])
def test_scan_carrying_laplacian_equals_repeated_step(x64, graph, masks):
    n = 16
    problem, data, x0, y0 = make_quadratic(n, 3, 3, 1, seed=0, noise=0.1, dtype=jnp.float64)
    x0 = {"a": x0[:, :2], "b": x0[:, 2:]}  # two UL leaves: per-leaf masks
    base = problem

    def f(x, y, d, b):
        return base.f(jnp.concatenate([x["a"], x["b"]]), y, d, b)

    def gfun(x, y, d, b):
        return base.g(jnp.concatenate([x["a"], x["b"]]), y, d, b)

    problem = sj.BilevelProblem(f=f, g=gfun, sample=base.sample)
    g = sj.make_graph(graph, n, seed=1)
    params = sj.SLAMParams.create(30.0, 30.0, 0.2 if graph == "complete" else 0.5, 1.0)
    cfg = sj.SLAMConfig(consensus_x=masks[0], consensus_y=masks[1], solver=sj.CG(5))
    key = jax.random.key(5)
    one = jax.jit(sj.step, static_argnums=(0, 1))
    s = sj.init(x0, y0)
    for _ in range(9):
        s = one(problem, cfg, g, params, s, data, key)
    out = sj.scan_steps(problem, cfg, g, params, sj.init(x0, y0), data, key, 9)
    _close(out, s, 1e-12)
    out_ck = sj.scan_steps(problem, cfg, g, params, sj.init(x0, y0), data, key, 9,
                           checkpoint_every=4)
    _close(out_ck, s, 1e-12)
    # the Algorithm path (init fills the cache at once; step t uses fold_in(key, t))
    alg = sj.slam(problem, g, cfg)
    out_alg = sj.iterate(alg, params, data, alg.init(x0, y0, data), key, 9)
    _close(out_alg, s, 1e-12)


# The old version of this test loaded experiments/speedup_sweep.py by path and checked its
# ``sweep_graph``/``theorem1_params``. Tests use the library only: the same rule is written
# here against the library's graph constructor and ``stability_bound``/``validate``.
def _theorem1_params(n, T, lam_max, c=0.25, eta_max=0.1, gamma=1.0):
    """(α, β, ρ, γ): 1/α = 1/β = min(c·√(n/T), η_max); ρ at half the stability bound."""
    eta = min(c * math.sqrt(n / T), eta_max)
    alpha = beta = 1.0 / eta
    rho = 1.0 if lam_max <= 0 else 0.5 * sj.stability_bound(lam_max, alpha, gamma)
    return alpha, beta, rho, gamma


def test_sweep_step_sizes_follow_theorem1_and_are_stable():
    T = 4000
    prev = None
    for n in (1, 4, 16, 64, 256, 1024, 4096):
        g = sj.graphs.erdos_renyi(n, seed=0)  # the sweep's graph: default p (connected w.h.p.)
        a, b, rho, gamma = _theorem1_params(n, T, g.lam_max)
        assert rho * g.lam_max * (1 + 2 * gamma) < 4 * min(a, b)
        if prev is not None:  # 1/α grows like √n until the cap
            assert 1 / a >= 1 / prev - 1e-12
        prev = a
        if n <= 64:  # and the library's own check agrees: no StabilityWarning
            problem, data, x0, y0 = make_quadratic(n, 2, 2, seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("error", sj.StabilityWarning)
                sj.validate(problem, sj.SLAMConfig(), g, sj.SLAMParams.create(a, b, rho, gamma),
                            sj.init(x0, y0), data)


def test_speedup_sweep_script_runs_end_to_end(tmp_path):
    """`experiments/speedup_sweep.py` at toy size: JSON with every n and method, the fixed-step
    stationary error falls with n, and the iterations to ε are found and shrink."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "speedup_sweep.py"
    if not script.exists():
        pytest.skip("experiments/ not present (installed package)")
    out = subprocess.run([sys.executable, str(script), "--quick", "--n-max", "4", "--seeds", "2",
                          "--t1", "2048", "--t-min", "512", "--t-fixed", "1024", "--eps-rel", "0.01",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads((tmp_path / "speedup_sweep.json").read_text())
    assert [r["n"] for r in payload["per_n"]] == [1, 2, 4]
    assert (tmp_path / "speedup_sweep.png").stat().st_size > 10_000
    for m in ("slam", "oracle"):
        stat = [r[m]["stationary"] for r in payload["per_n"]]
        assert stat[2] < 0.5 * stat[0], (m, stat)
        t = [r[m]["T_eps"] for r in payload["per_n"]]
        assert all(v is not None for v in t) and t[2] < t[0], (m, t)
