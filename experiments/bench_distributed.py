"""The sharded SLAM run on 1 process × 1 device, 1 process × 4 devices and 2 processes × 2
devices (``jax.distributed``, gloo CPU collectives over 127.0.0.1), side by side.

Quadratic SLAM (both levels; d_x = 10, m = 2 LL tasks of d_y = 10, shared LL Hessians, CG with
10 iterations, σ = 0 exact gradients), float32, n = 2²⁰ agents, on a ring (halo exchange) and
a small world (k = 4, p = 0.1: partitioned edges). Every configuration runs the same code path
(:func:`slamjax.distributed.compile_solve`: global mesh, :class:`PartitionedGraph`, each
process feeding only its rows) in fresh processes started by this script (the device count is
fixed when JAX starts; CPU devices are forced with
``XLA_FLAGS=--xla_force_host_platform_device_count``). Per configuration: compile time, the
best of ``--repeats`` timed runs of ``--steps`` steps (one compiled ``lax.scan``), agent-steps/s
and the ratio to 1 × 1, and the bytes moved per step between devices and between processes,
read from the compiled program's collectives (:func:`slamjax.distributed.collective_bytes`)
next to the formula (:func:`slamjax.distributed.predicted_bytes`, module docstring of
:mod:`slamjax.distributed`).

This machine has 2 cores shared by every device and process, so more devices cannot make the
per-agent work faster here: the comparison measures what the split costs (collectives,
processes competing for the same cores), not a speed-up.

    python experiments/bench_distributed.py [--n 1048576] [--steps 10] [--graphs ring,small_world]

Writes ``results/bench_distributed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

CONFIGS = [("1x1", 1, 1), ("1x4", 1, 4), ("2x2", 2, 2)]   # (name, processes, devices each)
DX, DY, M = 10, 10, 2


def worker(args) -> None:
    """One process of one configuration: prints a JSON line on process 0."""
    from slamjax import distributed as dist

    dist.initialize(timeout=120)
    import jax
    import numpy as np

    import slamjax as sj
    from slamjax import sharding as sh
    from slamjax.problems.quadratic import make_quadratic

    n, steps = args.n, args.steps
    mesh = dist.global_mesh()
    out = {"processes": jax.process_count(), "devices": mesh.size, "graphs": {}}
    for name in args.graphs.split(","):
        g = sj.make_graph(name, n, seed=1)
        problem, data, x0, y0 = make_quadratic(n, DX, DY, M, seed=0)
        x0, y0, data = dist.from_local(mesh, n, *dist.local_rows((x0, y0, data), n, mesh))
        pg = sh.partition_graph(g, mesh)
        alg = sj.slam(problem, pg, sj.SLAMConfig(solver=sj.make_solver("cg", maxiter=10)))
        params = sj.SLAMParams.create(30.0, 30.0, 1.0, 1.0)
        t0 = time.perf_counter()
        prog, a = dist.compile_solve(alg, params, data, x0, y0, jax.random.key(0), steps,
                                     mesh=mesh)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            state = jax.block_until_ready(prog(*a))
            times.append(time.perf_counter() - t)
        proc = [d.process_index for d in mesh.devices.flat]
        measured = dist.collective_bytes(prog.as_text(), proc)
        formula = (dist.predicted_bytes(pg, DX + M * DY) if mesh.size > 1
                   else {"total": 0, "inter_process": 0, "useful": 0})
        x = dist.gather(state.x)
        best = min(times)
        out["graphs"][name] = {
            "scheme": pg.scheme, "halo_rows_M": pg.halo, "edges": g.num_edges,
            "compile_s": compile_s, "run_s": times, "best_run_s": best,
            "agent_steps_per_s": n * steps / best, "bytes_per_step_measured": measured,
            "bytes_per_step_formula": formula, "x_mean_norm": float(np.linalg.norm(
                x.mean(axis=0))), "finite": bool(np.isfinite(x).all())}
        dist.print0(f"  [{jax.process_count()}x{jax.local_device_count()}] {name}: "
                    f"compile {compile_s:.1f} s, {n * steps / best:.3e} agent-steps/s",
                    file=sys.stderr)
    dist.print0("RESULT" + json.dumps(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name, procs, devs, args) -> dict:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--n", str(args.n),
           "--steps", str(args.steps), "--repeats", str(args.repeats), "--graphs", args.graphs]
    ps = []
    try:
        for k in range(procs):
            env = dict(os.environ, JAX_PLATFORMS="cpu",
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={devs}")
            for v in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
                env.pop(v, None)
            env["JAX_NUM_PROCESSES"] = str(procs)
            if procs > 1:
                env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                           JAX_NUM_PROCESSES=str(procs), JAX_PROCESS_ID=str(k))
            ps.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=args.timeout)[0] for p in ps]
        if any(p.returncode for p in ps):
            raise RuntimeError(f"{name}: exit codes {[p.returncode for p in ps]}")
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.communicate()
    line = [ln for ln in outs[0].splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2 ** 20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--graphs", default="ring,small_world")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per configuration (s)")
    ap.add_argument("--out", default=str(HERE.parent / "results" / "bench_distributed.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    from _common import machine_info, write_json

    res = {}
    for name, procs, devs in CONFIGS:
        print(f"{name}: {procs} process(es) × {devs} device(s), n = {args.n}", flush=True)
        t = time.perf_counter()
        res[name] = launch(name, procs, devs, args)
        res[name]["wall_s"] = time.perf_counter() - t
    graphs = args.graphs.split(",")
    print(f"\nn = {args.n}, {args.steps} SLAM steps per timed run (best of {args.repeats}); "
          f"bytes per step: measured from the compiled HLO / formula")
    head = (f"{'graph':12s} {'config':6s} {'agent-steps/s':>14s} {'vs 1x1':>7s} "
            f"{'compile s':>9s} {'bytes/step':>11s} {'formula':>9s} {'inter-proc':>10s} "
            f"{'formula':>9s}")
    print(head + "\n" + "-" * len(head))
    summary = {}
    for gname in graphs:
        base = res["1x1"]["graphs"][gname]["agent_steps_per_s"]
        for name, _, _ in CONFIGS:
            r = res[name]["graphs"][gname]
            m, f = r["bytes_per_step_measured"], r["bytes_per_step_formula"]
            ratio = r["agent_steps_per_s"] / base
            summary.setdefault(gname, {})[name] = {
                "agent_steps_per_s": r["agent_steps_per_s"], "ratio_vs_1x1": ratio,
                "bytes_per_step": m["total"], "bytes_per_step_formula": f["total"],
                "inter_process_bytes_per_step": m["inter_process"],
                "inter_process_formula": f["inter_process"],
                "bytes_match_formula": m["total"] == f["total"]
                and m["inter_process"] == f["inter_process"]}
            print(f"{gname:12s} {name:6s} {r['agent_steps_per_s']:14.3e} {ratio:7.2f} "
                  f"{r['compile_s']:9.1f} {m['total']:11d} {f['total']:9d} "
                  f"{m['inter_process']:10d} {f['inter_process']:9d}")
    payload = {"n": args.n, "steps": args.steps, "repeats": args.repeats,
               "problem": {"dx": DX, "dy": DY, "m": M, "solver": "cg(10)", "dtype": "float32"},
               "configs": {name: {"processes": p, "devices_per_process": d}
                           for name, p, d in CONFIGS},
               "summary": summary, "raw": res, "machine": machine_info(())}
    print(f"\nwrote {write_json(Path(args.out), payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
