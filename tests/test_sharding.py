"""Agent-axis sharding (slamjax.sharding): numbers equal to one device.

The multi-device checks run in a subprocess with 4 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``), because the device count is fixed
when JAX starts. float32, tolerance 1e-6 relative (the complete graph's all-reduce reorders a
sum of n terms: 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax import sharding as sh
from slamjax.placement import Sharded
from slamjax.problems.quadratic import make_quadratic

WORKER = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import slamjax as sj
    from slamjax import sharding as sh
    from slamjax.placement import Sharded
    from slamjax.problems.quadratic import make_quadratic

    assert len(jax.devices()) == 4, jax.devices()
    mesh = sh.agent_mesh(4)
    n = 64
    graphs = {"ring": sj.graphs.ring(n), "torus": sj.graphs.torus(8, 8),
              "erdos_renyi": sj.graphs.erdos_renyi(n, seed=2),
              "complete": sj.graphs.complete(n)}
    out = {}
    for name, g in graphs.items():
        problem, data, x0, y0 = make_quadratic(n, 3, 4, 2, seed=0, noise=0.3)
        params = sj.SLAMParams.create(30.0, 30.0, 0.1 if name == "complete" else 0.5, 1.0)
        cfg = sj.SLAMConfig()
        key = jax.random.key(0)
        ref = jax.jit(lambda s: sj.scan_steps(problem, cfg, g, params, s, data, key, 40))(
            sj.init(x0, y0))
        pg = sh.partition_graph(g, mesh)
        res = sj.solve(sj.slam(problem, pg, cfg), params, data, x0, y0, key, 40,
                       placement=Sharded(mesh))
        # the iterates and duals (the state's lap_x/lap_y cache holds L·x, L·y: a difference
        # of nearly equal numbers whose float32 round-off is relatively larger even between
        # two single-device paths; the Laplacian product itself is checked by lap_rel)
        fields = ("x", "y", "u_x", "u_y")
        rel = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                  for f in fields
                  for a, b in zip(jax.tree.leaves(getattr(res, f)),
                                  jax.tree.leaves(getattr(ref, f))) if jnp.ndim(b))
        v = jnp.asarray(np.random.default_rng(0).standard_normal((n, 5)), jnp.float32)
        lv = jax.jit(sj.laplacian_matvec)(pg, sh.shard_agents(v, mesh))
        lrel = float(jnp.max(jnp.abs(lv - sj.laplacian_matvec(g, v))) /
                     jnp.max(jnp.abs(sj.laplacian_matvec(g, v))))
        out[name] = {"rel": rel, "lap_rel": lrel, "scheme": pg.scheme,
                     "sharded": len(res.x.sharding.device_set)}
        if name != "erdos_renyi":
            continue
        # the host runner accepts the partitioned graph and sharded inputs unchanged
        d_sh = sh.shard_problem_inputs(mesh, data=data)
        r = sj.run(sj.slam(problem, pg, cfg), params, d_sh, sh.shard_agents(x0, mesh),
                   sh.shard_agents(y0, mesh), num_steps=20, log_every=10, progress=False)
        r1 = sj.run(sj.slam(problem, g, cfg), params, data, x0, y0, num_steps=20,
                    log_every=10, progress=False)
        hist = max(abs(r.history[k][-1] - r1.history[k][-1]) / (abs(r1.history[k][-1]) + 1e-12)
                   for k in r1.history)
        out[name]["hist_rel"] = float(hist)
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def four_device_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("name,scheme", [("ring", "halo"), ("torus", "halo"),
                                         ("erdos_renyi", "edges"),
                                         ("complete", "gspmd")])
def test_four_devices_match_one_device(four_device_results, name, scheme):
    r = four_device_results[name]
    tol = 1e-5 if name == "complete" else 1e-6
    assert r["scheme"] == scheme
    assert r["sharded"] == 4          # the result really lives on 4 devices
    assert r["lap_rel"] <= tol, r
    assert r["rel"] <= tol, r         # 40 SLAM steps (stochastic, m = 2 tasks)
    if "hist_rel" in r:
        assert r["hist_rel"] <= 1e-4, r   # slamjax.run metrics with the partitioned graph


def test_single_device_mesh_is_identity():
    mesh = sh.agent_mesh(1)
    g = sj.graphs.small_world(32, seed=3)
    pg = sh.partition_graph(g, mesh)
    assert isinstance(pg, sj.Graph) and pg.n == g.n and pg.lam_max == g.lam_max
    v = jnp.asarray(np.random.default_rng(1).standard_normal((32, 2, 3)), jnp.float32)
    np.testing.assert_allclose(sj.laplacian_matvec(pg, v), sj.laplacian_matvec(g, v),
                               rtol=1e-6, atol=1e-6)
    problem, data, x0, y0 = make_quadratic(32, 3, 3, 1, seed=0)
    params = sj.SLAMParams.create(20.0, 20.0, 0.5, 1.0)
    key = jax.random.key(1)
    a = sj.solve(sj.slam(problem, pg), params, data, x0, y0, key, 15, placement=Sharded(mesh))
    b = sj.solve(sj.slam(problem, g), params, data, x0, y0, key, 15)
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-6)


def test_partition_errors():
    mesh = sh.agent_mesh(1)
    pg = sh.partition_graph(sj.graphs.ring(9), mesh)
    with pytest.raises(ValueError, match="already partitioned"):
        sh.partition_graph(pg, mesh)
    with pytest.raises(ValueError, match="num_devices"):
        sh.agent_mesh(len(jax.devices()) + 1)
