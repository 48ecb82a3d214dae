"""Same seed, same numbers across code versions: this tree against another git revision.

Runs SLAM, SLAM-L and SLAM-U (quadratic, n = 16, d_x = 4, d_y = 3, m = 2, σ = 0.1; shared and
agent-specific LL Hessians; ring and Erdős–Rényi; CG(5)) through ``solve`` (200 steps) and the
runner (100 steps, log every 20) in both versions (``git worktree`` for the other one, a fresh
process each, float32 and float64) and reports how many arrays differ and the largest relative
difference. Writes ``results/check_same_numbers.json``.

    python experiments/check_same_numbers.py --rev 4e0f30d
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import RESULTS, ROOT, write_json  # noqa: E402

WORKER = r'''
import sys, numpy as np, jax
sys.path.insert(0, sys.argv[1])
jax.config.update("jax_enable_x64", sys.argv[2] == "64")
import jax.numpy as jnp
import slamjax as sj
from slamjax.problems.quadratic import make_quadratic
new = callable(getattr(sj, "slam", None))
out = {}
for hom in (True, False):
    for gname in ("erdos_renyi", "ring"):
        g = sj.make_graph(gname, 16, seed=1)
        problem, data, x0, y0 = make_quadratic(16, 4, 3, 2, seed=3, noise=0.1, homogeneous=hom,
                                               dtype=jnp.float64 if sys.argv[2] == "64" else jnp.float32)
        params = sj.SLAMParams.create(20.0, 20.0, 0.5, 1.0)
        for v in ("slam", "slam_l", "slam_u"):
            cfg = sj.SLAMConfig(v, solver=sj.CG(5))
            tag = f"{hom}-{gname}-{v}"
            if new:
                alg = sj.slam(problem, g, cfg)
                s = sj.solve(alg, params, data, x0, y0, jax.random.key(7), 200)
                r = sj.run(alg, params, data, x0, y0, num_steps=100, log_every=20, seed=5, progress=False)
            else:
                s = sj.solve(problem, g, params, data, x0, y0, jax.random.key(7), 200, cfg)
                r = sj.run(problem, g, params, data, x0, y0, config=cfg, num_steps=100, log_every=20, seed=5, progress=False)
            for name in ("x", "y", "u_x", "u_y"):
                out[f"solve-{tag}-{name}"] = np.asarray(getattr(s, name))
            out[f"run-{tag}-x"] = np.asarray(r.state.x)
            for k in ("grad_F_sq", "consensus_x", "consensus_y", "ll_error"):
                out[f"run-{tag}-{k}"] = np.asarray(r.history[k])
np.savez(sys.argv[3], **out)
'''


def capture(src: Path, bits: str, path: Path) -> dict:
    subprocess.run([sys.executable, "-c", WORKER, str(src), bits, str(path)], check=True,
                   timeout=1800)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def compare(a: dict, b: dict, prefix: str) -> dict:
    keys = [k for k in a if k.startswith(prefix)]
    differ, worst = 0, 0.0
    for k in keys:
        if not np.array_equal(a[k], b[k]):
            differ += 1
            rel = np.abs(a[k] - b[k]) / np.maximum(np.abs(a[k]), 1e-30)
            worst = max(worst, float(rel.max()))
    return {"arrays": len(keys), "differ": differ, "max_relative_difference": worst}


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
                for path in ("solve", "run"):
                    r = compare(a, b, path)
                    report[f"float{bits}_{path}"] = r
                    print(f"float{bits} {path:5s}: {r['differ']}/{r['arrays']} arrays differ, "
                          f"max relative difference {r['max_relative_difference']:.2e}",
                          flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(other)], capture_output=True)
    print(f"wrote {write_json(Path(args.out) / 'check_same_numbers.json', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
