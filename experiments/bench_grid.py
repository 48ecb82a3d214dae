"""A hyperparameter grid in one program against the same runs one by one, side by side.

The default quadratic of ``make demo`` (n = 64 agents, Erdős–Rényi p = 2 ln n / n, d_x = d_y =
10, m = 2, heterogeneous data, shared LL Hessians, CG(10)), SLAM with β = 30, γ = 1, over a grid
of 8 values of ρ × 4 values of α × 4 seeds = 128 runs of T steps:

* **one program**: ``slamjax.run(alg, params, ..., grid={"rho": [...], "alpha": [...]},
  seeds=[0, 1, 2, 3])`` — 128 vmapped lanes, one compilation;
* **separate runs**: 128 calls of ``slamjax.run`` with one (ρ, α, seed) each (the compiled
  chunk is cached after the first call, as a user's loop would get it).

Both include compilation. Writes ``results/bench_grid.json`` and ``results/bench_grid.png``
(final ‖∇F(1x̄)‖², mean over seeds, per grid point; diverged points marked).

    python experiments/bench_grid.py            # T = 1000
    python experiments/bench_grid.py --quick    # T = 100, 2 × 2 × 2 (smoke test)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import slamjax as sj  # noqa: E402
from _common import RESULTS, machine_info, pyplot, save_figure, write_json  # noqa: E402
from slamjax.problems.quadratic import make_quadratic  # noqa: E402

RHO = [0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5]
ALPHA = [20.0, 30.0, 45.0, 60.0]
SEEDS = [0, 1, 2, 3]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="T=100 on a 2×2×2 grid (smoke test)")
    ap.add_argument("--out", default=str(RESULTS), help="output directory (default results/)")
    args = ap.parse_args(argv)
    rho, alpha, seeds, T = RHO, ALPHA, SEEDS, args.steps
    if args.quick:
        rho, alpha, seeds, T = RHO[:2], ALPHA[:2], SEEDS[:2], 100
    log_every = min(args.log_every, T)
    out = Path(args.out)

    n = 64
    graph = sj.graphs.erdos_renyi(n, seed=0)
    problem, data, x0, y0 = make_quadratic(n, 10, 10, 2, seed=0)
    alg = sj.slam(problem, graph, sj.SLAMConfig("slam", solver=sj.CG(10)))
    params = sj.SLAMParams.create(30.0, 30.0, 1.0, 1.0)
    grid = {"rho": rho, "alpha": alpha}
    lanes = len(rho) * len(alpha) * len(seeds)
    print(f"grid: {len(rho)} rho × {len(alpha)} alpha × {len(seeds)} seeds = {lanes} runs of "
          f"T={T} on {graph!r}", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stability warnings / divergence per lane: recorded
        t0 = time.perf_counter()
        batched = sj.run(alg, params, data, x0, y0, num_steps=T, log_every=log_every,
                         seeds=seeds, grid=grid, progress=False)
        jax.block_until_ready(batched.state)
        t_one = time.perf_counter() - t0
        print(f"one program: {t_one:.1f} s (compile {batched.compile_time:.1f} s)", flush=True)

        t0 = time.perf_counter()
        finals = np.zeros((len(rho) * len(alpha), len(seeds)))
        compile_s = 0.0
        for gi, pt in enumerate(batched.grid):
            for si, s in enumerate(seeds):
                r = sj.run(alg, params._replace(**{k: np.float32(v) for k, v in pt.items()}),
                           data, x0, y0, num_steps=T, log_every=log_every, seed=s,
                           progress=False)
                compile_s += r.compile_time
                finals[gi, si] = r.history["grad_F_sq"][-1] if r.diverged_at is None \
                    else np.nan
        t_sep = time.perf_counter() - t0
    print(f"{lanes} separate runs: {t_sep:.1f} s (of which compile/cache look-ups "
          f"{compile_s:.1f} s)", flush=True)

    fin = np.asarray(batched.history["grad_F_sq"])[..., -1]          # (G, S)
    div = np.asarray(batched.diverged_at) if batched.diverged_at is not None else \
        -np.ones(fin.shape, int)
    fin = np.where(div >= 0, np.nan, fin)
    # the same points diverge, and the finite ones agree to float32 round-off (converged
    # values sit at ~1e-11: absolute floor 1e-7 × the starting value)
    same_div = bool(np.array_equal(np.isnan(fin), np.isnan(finals)))
    both = ~np.isnan(fin) & ~np.isnan(finals)
    max_abs = float(np.max(np.abs(fin[both] - finals[both]))) if both.any() else 0.0
    start = float(np.asarray(batched.history["grad_F_sq"])[..., 0].max())
    same = same_div and np.allclose(fin[both], finals[both], rtol=1e-3, atol=1e-7 * start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.where(np.isnan(fin), np.inf, fin), axis=1)
    best = int(np.argmin(mean))
    print(f"speed-up of one program: {t_sep / t_one:.1f}×; lanes agree with the separate runs: "
          f"{same} (max |Δ| {max_abs:.1e}); diverged lanes: {int((div >= 0).sum())}/{lanes}; best point "
          f"{batched.grid[best]} (mean final ‖∇F‖² {mean[best]:.2e})", flush=True)

    payload = {"T": T, "n": n, "graph": repr(graph), "grid": batched.grid, "seeds": seeds,
               "one_program_s": t_one, "one_program_compile_s": batched.compile_time,
               "separate_runs_s": t_sep, "separate_compile_s": compile_s,
               "speedup": t_sep / t_one, "lanes_agree": bool(same),
               "same_points_diverged": same_div, "max_abs_diff_final_grad_F_sq": max_abs,
               "final_grad_F_sq": fin.tolist(), "separate_final_grad_F_sq": finals.tolist(),
               "diverged_at": div.tolist(), "best": batched.grid[best],
               "machine": machine_info(extra_packages=())}
    path = write_json(out / "bench_grid.json", payload)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    img = np.log10(np.where(np.isfinite(mean), mean, np.nan)).reshape(len(rho), len(alpha))
    im = ax.imshow(img.T, origin="lower", aspect="auto", cmap="viridis")
    for i in range(len(rho)):
        for j in range(len(alpha)):
            if not np.isfinite(img[i, j]):
                ax.text(i, j, "div", ha="center", va="center", color="red", fontsize=8)
    ax.set_xticks(range(len(rho)), [f"{v:g}" for v in rho])
    ax.set_yticks(range(len(alpha)), [f"{v:g}" for v in alpha])
    ax.set_xlabel("ρ")
    ax.set_ylabel("α (1/UL step)")
    fig.colorbar(im, label="log10 final ‖∇F(1x̄)‖² (mean of seeds)")
    ax.set_title(f"{lanes} runs in one program: {t_one:.0f} s vs {t_sep:.0f} s separately",
                 fontsize=9)
    png = save_figure(fig, out / "bench_grid.png")
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
