"""Throughput of this working tree against another git revision, side by side in one run.

A regression check for refactors of the core: the same SLAM problem (quadratic, both levels,
CG K = 10, shared LL Hessian, Newman–Watts small world k = 4) is stepped by

* ``scan``: ``jax.jit`` of ``slamjax.scan_steps`` (the functional step path, present in both
  versions), and
* ``run``: ``slamjax.run`` with one log at the end (the runner, whatever its API),

in fresh subprocesses that alternate between the two code versions (``--repeats`` rounds, best
time kept), so that machine load affects both alike. The other revision is checked out with
``git worktree`` into a temporary directory. Writes ``results/bench_versions.json``.

    python experiments/bench_versions.py --rev HEAD~1
    python experiments/bench_versions.py --rev 4e0f30d --d 10 100 --n 1024 4096 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, machine_info, write_json  # noqa: E402

WORKER = r'''
import json, sys, time, warnings
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
import jax, jax.numpy as jnp, numpy as np
import slamjax as sj
from slamjax.problems.quadratic import make_quadratic
spec = json.loads(sys.argv[2])
n, d, target = spec["n"], spec["d"], spec["target_s"]
g = sj.graphs.small_world(n, 4, seed=0)
problem, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
params = sj.SLAMParams.create(30.0, 30.0, 0.3, 1.0)
cfg = sj.SLAMConfig("slam", solver=sj.CG(10))
key = jax.random.key(0)
scan = jax.jit(sj.scan_steps, static_argnums=(0, 1, 7))
def run_scan(T):
    return jax.block_until_ready(scan(problem, cfg, g, params, sj.init(x0, y0), data, key, T).x)
def run_runner(T):
    if callable(getattr(sj, "slam", None)):
        r = sj.run(sj.slam(problem, g, cfg), params, data, x0, y0, num_steps=T, log_every=T,
                   progress=False)
    else:
        r = sj.run(problem, g, params, data, x0, y0, config=cfg, num_steps=T, log_every=T,
                   progress=False)
    return r.run_time
out = {}
for name, fn in (("scan", run_scan), ("run", run_runner)):
    T = 20
    t0 = time.perf_counter(); fn(T); first = time.perf_counter() - t0   # compile + T steps
    while True:
        t0 = time.perf_counter(); rt = fn(T); el = time.perf_counter() - t0
        el = rt if name == "run" else el
        if el > target or T >= 200000:
            break
        T = int(T * max(2.0, 1.2 * target / max(el, 1e-3)))
    best = el
    for _ in range(2):
        t0 = time.perf_counter(); rt = fn(T); el = time.perf_counter() - t0
        best = min(best, rt if name == "run" else el)
    out[name] = {"T": T, "seconds": best, "agent_steps_per_s": n * T / best,
                 "first_call_s": first}
print(json.dumps(out))
'''


def measure(src: Path, spec: dict, timeout: float = 900) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    res = subprocess.run([sys.executable, "-c", WORKER, str(src), json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode:
        raise RuntimeError(f"worker failed for {src}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD~1", help="git revision to compare against")
    ap.add_argument("--d", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--n", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds per config")
    ap.add_argument("--target-s", type=float, default=1.0, help="seconds per timed call")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.rev],
                         capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other),
                        rev], check=True, capture_output=True)
        try:
            for d in args.d:
                for n in args.n:
                    spec = {"n": n, "d": d, "target_s": args.target_s}
                    best = {"this": {}, "other": {}}
                    for _ in range(args.repeats):
                        for label, src in (("other", other), ("this", ROOT)):
                            m = measure(src, spec)
                            for path, v in m.items():
                                cur = best[label].get(path)
                                if cur is None or v["agent_steps_per_s"] > cur["agent_steps_per_s"]:
                                    best[label][path] = v
                    for path in ("scan", "run"):
                        a, b = best["this"][path], best["other"][path]
                        ratio = a["agent_steps_per_s"] / b["agent_steps_per_s"]
                        records.append({"d": d, "n": n, "path": path,
                                        "this_agent_steps_per_s": a["agent_steps_per_s"],
                                        "other_agent_steps_per_s": b["agent_steps_per_s"],
                                        "ratio_this_over_other": ratio,
                                        "this_first_call_s": a["first_call_s"],
                                        "other_first_call_s": b["first_call_s"]})
                        print(f"d={d:4d} n={n:6d} {path:5s}: this {a['agent_steps_per_s']:.3e} "
                              f"vs {rev} {b['agent_steps_per_s']:.3e} agent-steps/s  "
                              f"ratio {ratio:.3f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(other)], capture_output=True)
    path = write_json(Path(args.out) / "bench_versions.json",
                      {"this": f"{head} (+ working tree)", "other": rev, "records": records,
                       "repeats": args.repeats, "machine": machine_info(extra_packages=())})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
