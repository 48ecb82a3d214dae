"""Same seed, same numbers across code versions: this tree against another git revision.

Runs, in both versions (``git worktree`` for the other one, a fresh process each, float32 and
float64):

* every registered method (``slamjax.REGISTRY``: SLAM, SLAM-L, SLAM-U and every peer) on the
  quadratic (n = 16, d_x = 4, d_y = 3, m = 2, σ = 0.1; shared and agent-specific LL Hessians;
  ring and Erdős–Rényi) through ``solve`` (200 steps; every floating state leaf compared) and
  through the runner (100 steps, log every 20; final state and every metric history);
* SLAM and D-SOBA wrapped in ``with_faults`` (symmetric link drops p = 0.2, 4-bit quantization
  with error feedback, stragglers q = 0.05) through ``solve`` (100 steps);
* both actor-critic trainers (navigation: SLAM-AC, DAC, MDAC, SLAM-PPO; pursuit: SLAM-AC, CAC,
  MDAC) at a small size with fixed seeds (their per-round metric histories; float32 only);

and reports per group how many arrays differ bit for bit and the largest relative
difference. Writes ``<out>/check_same_numbers.json``.

    python experiments/check_same_numbers.py --rev 81bcae5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import RESULTS, ROOT, write_json  # noqa: E402

WORKER = r'''
import sys, warnings, numpy as np, jax
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
x64 = sys.argv[2] == "64"
jax.config.update("jax_enable_x64", x64)
import jax.numpy as jnp
import slamjax as sj
from slamjax.problems.quadratic import make_quadratic
dtype = jnp.float64 if x64 else jnp.float32
out = {}

def floats(prefix, tree):
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating):
            out[f"{prefix}-{i}"] = a

for hom in (True, False):
    for gname in ("erdos_renyi", "ring"):
        g = sj.make_graph(gname, 16, seed=1)
        problem, data, x0, y0 = make_quadratic(16, 4, 3, 2, seed=3, noise=0.1, homogeneous=hom,
                                               dtype=dtype)
        for name in sorted(sj.REGISTRY):
            opts = {"solver": sj.CG(5)} if name.startswith(("slam", "bias_free")) else {}
            alg = sj.make_algorithm(name, problem, g, **opts)
            params = sj.REGISTRY[name].default_params(dtype=dtype)
            tag = f"{hom}-{gname}-{name}"
            s = sj.solve(alg, params, data, x0, y0, jax.random.key(7), 200)
            floats(f"solve-{tag}", s)
            r = sj.run(alg, params, data, x0, y0, num_steps=100, log_every=20, seed=5,
                       progress=False)
            floats(f"run-{tag}-state", r.state)
            for k in sorted(r.history):
                out[f"run-{tag}-{k}"] = np.asarray(r.history[k])

from slamjax import faults as F
g = sj.graphs.ring(16)
problem, data, x0, y0 = make_quadratic(16, 4, 3, 2, seed=3, noise=0.1, dtype=dtype)
for name in ("slam", "dsoba"):
    alg = sj.make_algorithm(name, problem, g)
    params = sj.REGISTRY[name].default_params(dtype=dtype)
    faulty = F.with_faults(alg, F.LinkDrops(0.2), F.Compress("quantize", bits=4,
                                                             error_feedback=True),
                           F.Stragglers(0.05))
    s = sj.solve(faulty, params, data, x0, y0, jax.random.key(3), 100)
    floats(f"faults-{name}", s)

if not x64:
    from slamjax import rl
    for algo in ("slam_ac", "dac", "mdac", "slam_ppo"):
        r = rl.run(algo, seeds=2, num_updates=3, chunk=3, progress=False, num_envs=4,
                   max_steps=10, iters_per_round=4, ppo_minibatches=2)
        for k in sorted(r.metrics):
            out[f"rl-nav-{algo}-{k}"] = np.asarray(r.metrics[k])
    from slamjax.rl import pursuit_ac as PA
    for algo in ("slam_ac", "cac", "mdac"):
        r = PA.run(algo, seeds=2, num_rounds=2, chunk=2, progress=False, n_pursuers=3,
                   n_evaders=2, max_cycles=20, num_envs=2, iters_per_round=2,
                   mdac_inner_steps=2, mdac_batch=5)
        for k in sorted(r.metrics):
            out[f"rl-pursuit-{algo}-{k}"] = np.asarray(r.metrics[k])
np.savez(sys.argv[3], **out)
'''

GROUPS = ("solve", "run", "faults", "rl-nav", "rl-pursuit")


def capture(src: Path, bits: str, path: Path) -> dict:
    subprocess.run([sys.executable, "-c", WORKER, str(src), bits, str(path)], check=True,
                   timeout=3600)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def compare(a: dict, b: dict, prefix: str) -> dict:
    keys = sorted(k for k in set(a) | set(b) if k.startswith(prefix + "-"))
    differ, worst, missing = [], 0.0, [k for k in keys if k not in a or k not in b]
    for k in keys:
        if k in missing:
            continue
        x, y = a[k], b[k]
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
            differ.append(k)
            if x.shape == y.shape:
                ok = np.isfinite(x) & np.isfinite(y)
                rel = np.abs(x - y)[ok] / np.maximum(np.abs(x)[ok], 1e-30)
                worst = max(worst, float(rel.max()) if rel.size else 0.0)
            else:
                worst = float("inf")
    return {"arrays": len(keys) - len(missing), "differ": len(differ),
            "max_relative_difference": worst, "missing": missing[:20],
            "examples": differ[:10]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD~1")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    report = {"rev": args.rev}
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other),
                        args.rev], check=True, capture_output=True)
        try:
            for bits in ("32", "64"):
                a = capture(other, bits, Path(tmp) / f"old{bits}.npz")
                b = capture(ROOT, bits, Path(tmp) / f"new{bits}.npz")
                for group in GROUPS:
                    r = compare(a, b, group)
                    if not r["arrays"] and not r["missing"]:
                        continue
                    report[f"float{bits}_{group}"] = r
                    print(f"float{bits} {group:10s}: {r['differ']}/{r['arrays']} arrays differ, "
                          f"max relative difference {r['max_relative_difference']:.2e}"
                          + (f", missing {r['missing']}" if r["missing"] else ""), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(other)], capture_output=True)
    print(f"wrote {write_json(Path(args.out) / 'check_same_numbers.json', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
