"""First-call (compile) time of the throughput configurations: XLA optimisation level and
JAX's persistent compilation cache.

For every configuration of the kernel table in ``bench_throughput.py`` (quadratic SLAM, CG
K = 10, shared H, small world; d ∈ {10, 100}, n ∈ {1024, 4096}; the user's problem with
autodiff HVPs, with its own ``hvp_yy``/``cross_xy``, and the built-in quadratic) this measures,
each mode in a fresh process:

* ``compile_s``    — ``jit(...).lower(...).compile()`` wall time (what the benchmarks report);
* ``first_call_s`` — trace + compile + run of a fresh ``jit`` on its first call (what a user
  waits for; the run itself is a 20-step scan, a few ms to 0.2 s);
* ``agent_steps_per_s`` — the compiled program's throughput (best of 3), so that a faster
  compile is not bought with a slower program.

Modes: ``default`` (no cache), ``O2`` (``XLA_FLAGS=--xla_backend_optimization_level=2``),
``cache_cold`` (an empty persistent-cache directory: compiles and writes entries) and
``cache_warm`` (a new process on the same directory: reads them back), the cache modes with
the default flags unless ``--cache-flags`` says otherwise.

    python experiments/bench_compile.py [--quick]

Writes ``results/bench_compile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
O2 = "--xla_backend_optimization_level=2"
PATHS = ("autodiff", "user_products", "builtin")


def worker(spec: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    import jax

    if spec.get("cache_dir"):
        jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import numpy as np

    import bench_throughput as bt
    import slamjax as sj

    rows = []
    steps = spec["steps"]
    for d in spec["d"]:
        for n in spec["n"]:
            graph = bt.build_graph("sw", n)
            for path in spec["paths"]:
                if path == "builtin":
                    problem, data, x0, y0 = bt.make_quadratic(n, d, d, 1, seed=0)
                else:
                    problem = bt.user_problem(path == "user_products")
                    data, x0, y0 = bt.user_data(n, d)
                alg = sj.slam(problem, graph, sj.SLAMConfig("slam", sj.CG(bt.K_CG)))
                params = sj.SLAMParams.create(bt.ALPHA, bt.BETA, bt.RHO, bt.GAMMA)
                key = jax.random.key(0)
                st = alg.init(x0, y0, data)

                def make():  # a new function object each time: no in-memory jit cache hit
                    def run(a, s, p, dd, k):
                        return sj.iterate(a, p, dd, s, k, steps)
                    return run

                # a user's first call: trace + compile + run
                t0 = time.perf_counter()
                out = jax.jit(make())(alg, st, params, data, key)
                jax.block_until_ready(out)
                first = time.perf_counter() - t0
                # the benchmarks' compile time, split into trace + lower and XLA compile (the
                # persistent cache, if on, serves the second part)
                fn = jax.jit(make())
                t0 = time.perf_counter()
                lowered = fn.lower(alg, st, params, data, key)
                t1 = time.perf_counter()
                compiled = lowered.compile()
                comp = time.perf_counter() - t0
                trace_lower = t1 - t0
                best = min(_time(lambda: jax.block_until_ready(
                    compiled(alg, st, params, data, key))) for _ in range(3))
                rows.append({"d": d, "n": n, "path": path, "first_call_s": first,
                             "compile_s": comp, "trace_lower_s": trace_lower, "agent_steps_per_s": n * steps / best,
                             "finite": bool(np.all(np.isfinite(np.asarray(out.x))))})
                print(f"  {spec['mode']:10s} d={d:3d} n={n:5d} {path:14s} first call "
                      f"{first:5.2f} s, compile {comp:5.2f} s (trace+lower {trace_lower:4.2f}), "
                      f"{n * steps / best:.3g} agent-steps/s", file=sys.stderr, flush=True)
    return {"mode": spec["mode"], "rows": rows}


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_mode(spec: dict, xla_flags: str | None, prefix=()) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    cmd = list(prefix) + [sys.executable, str(Path(__file__).resolve()), "--worker",
                          json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("COMPILE")]
    if proc.returncode or not lines:
        return {"mode": spec["mode"], "error": f"exit {proc.returncode}"}
    return json.loads(lines[-1][len("COMPILE"):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="d=10, n=256 only")
    ap.add_argument("--d", default=None)
    ap.add_argument("--n", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cores", default="all", help="'1' runs the workers under taskset -c 0")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_compile.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("COMPILE" + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    sys.path.insert(0, str(HERE))
    from _common import machine_info, write_json

    d = [int(v) for v in (args.d or ("10" if args.quick else "10,100")).split(",")]
    n = [int(v) for v in (args.n or ("256" if args.quick else "1024,4096")).split(",")]
    base = {"d": d, "n": n, "paths": list(PATHS), "steps": args.steps}
    prefix = ("taskset", "-c", "0") if args.cores == "1" else ()
    results = {"machine": machine_info(), "config": {**base, "cores": args.cores,
                                                       "o2_flag": O2}, "modes": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slamjax-xla-cache-") as cache:
        plan = [("default", None, None), ("O2", O2, None), ("cache_cold", None, cache),
                ("cache_warm", None, cache)]
        for mode, flags, cdir in plan:
            print(f"{mode} ...", flush=True)
            spec = dict(base, mode=mode, cache_dir=cdir)
            results["modes"][mode] = run_mode(spec, flags, prefix)
        results["cache_entries"] = len(os.listdir(cache))
    summary = {}
    for mode, res in results["modes"].items():
        if "rows" not in res:
            continue
        fc = [r["first_call_s"] for r in res["rows"]]
        cs = [r["compile_s"] for r in res["rows"]]
        summary[mode] = {"first_call_max_s": max(fc), "first_call_median_s": sorted(fc)[len(fc) // 2],
                         "compile_max_s": max(cs)}
    base_rows = {(r["d"], r["n"], r["path"]): r for r in results["modes"].get("default", {}).get("rows", [])}
    for mode in ("O2",):
        for r in results["modes"].get(mode, {}).get("rows", []):
            b = base_rows.get((r["d"], r["n"], r["path"]))
            if b:
                r["speed_vs_default"] = r["agent_steps_per_s"] / b["agent_steps_per_s"]
                r["compile_vs_default"] = r["compile_s"] / b["compile_s"]
    results["summary"] = summary
    results["total_s"] = time.perf_counter() - t0
    write_json(Path(args.out), results)
    for mode, s in summary.items():
        print(f"{mode:10s} first call max {s['first_call_max_s']:.2f} s (median "
              f"{s['first_call_median_s']:.2f} s), compile max {s['compile_max_s']:.2f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
