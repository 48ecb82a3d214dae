"""The multi-device section of ``slamjax bench``: the ring (halo exchange) and the small world
(partitioned edges) at d = 10 on 1, 2 and 4 forced host devices, in a worker process
(``python -m slamjax.tools.bench --sharding-worker SPEC``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import jax
import numpy as np

import slamjax as sj
from slamjax.problems.quadratic import make_quadratic
from slamjax.tools._bench_impls import ALPHA, BETA, GAMMA, K_CG, RHO, build_graph
from slamjax.tools._machine import child_env


def sharding_worker(spec: dict) -> dict:
    """The ring and small-world runs of ``spec`` on 1, 2, 4 devices in THIS process (started
    with forced host devices by :func:`run_sharding`)."""
    from slamjax import sharding as sh

    out = {"devices": len(jax.devices()), "runs": []}
    for kind in spec["graphs"]:
        n, d = spec["n"], spec["d"]
        g = build_graph(kind, n)
        problem, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
        params = sj.SLAMParams.create(ALPHA, BETA, RHO, GAMMA)
        cfg = sj.SLAMConfig("slam", sj.CG(K_CG))
        key = jax.random.key(0)
        steps = spec["steps"]
        results, finals, timers = {}, {}, {}
        for D in spec["device_counts"]:
            mesh = sh.agent_mesh(D)
            pg = sh.partition_graph(g, mesh) if D > 1 else g
            alg = sj.slam(problem, pg, cfg)
            st = alg.init(x0, y0, data)
            if D > 1:
                st, dat = sh.shard_problem_inputs(mesh, state=st, data=data)
                p_, k_ = sh.replicate(params, mesh), sh.replicate(key, mesh)
            else:
                dat, p_, k_ = data, params, key
            fn = jax.jit(lambda a, s, p, dt, k: sj.iterate(a, p, dt, s, k, steps),
                         donate_argnums=1)
            t0 = time.perf_counter()
            c = fn.lower(alg, st, p_, dat, k_).compile()
            comp = time.perf_counter() - t0

            def once(c=c, alg=alg, st=st, p_=p_, dat=dat, k_=k_, D=D):
                s0 = jax.tree.map(lambda a: a + 0, st)
                jax.block_until_ready(s0)
                t0 = time.perf_counter()
                res = c(alg, s0, p_, dat, k_)
                jax.block_until_ready(res)
                finals[D] = np.asarray(res.x)
                return time.perf_counter() - t0

            once()  # warm-up
            timers[D] = once
            results[D] = {"compile_s": comp, "scheme": getattr(pg, "scheme", "single device"),
                          "halo_rows": getattr(pg, "halo", None)}
        best = {D: math.inf for D in timers}
        for _ in range(spec["repeats"]):  # round-robin over device counts
            for D, once in timers.items():
                best[D] = min(best[D], once())
        for D in timers:
            results[D]["agent_steps_per_s"] = n * steps / best[D]
        base = results[spec["device_counts"][0]]["agent_steps_per_s"]
        for D, r in results.items():
            r["speedup_vs_1"] = r["agent_steps_per_s"] / base
            ref = finals[spec["device_counts"][0]]
            r["max_rel_diff_vs_1"] = float(np.max(np.abs(finals[D] - ref)) / np.max(np.abs(ref)))
        out["runs"].append({"graph": kind, "n": n, "d": d, "steps": steps,
                            "by_devices": {str(k): v for k, v in results.items()}})
    return out


def run_sharding(spec: dict, timeout: float = 900) -> dict:
    """:func:`sharding_worker` of ``spec`` in a subprocess with 4 forced host devices."""
    env = child_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "slamjax.tools.bench", "--sharding-worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SHARDING")]
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr[-2000:]}
    return json.loads(lines[-1][len("SHARDING"):])


def print_sharding(sharding):
    """The multi-device section's results (or its error) as progress lines."""
    if "error" in sharding:
        print("sharding section failed:", sharding["error"][-500:], flush=True)
        return
    for run in sharding["runs"]:
        for D, r in run["by_devices"].items():
            print(f"  {run['graph']:5s} n={run['n']} devices={D}: "
                  f"{r['agent_steps_per_s']:.3e} agent-steps/s, speedup "
                  f"{r['speedup_vs_1']:.2f}x, scheme {r['scheme']}, max rel diff "
                  f"{r['max_rel_diff_vs_1']:.1e}", flush=True)
