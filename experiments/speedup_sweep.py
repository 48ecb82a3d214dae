"""Linear speedup of SLAM in the number of agents (paper Theorem 1, Remark 1).

Theorem 1: with step sizes 1/α ~ 1/β ~ √(n/T), (1/T) Σ_r E‖∇F(1x̄^r)‖² = O(1/√(nT)), so the
number of iterations T_ε needed to push that average below ε scales like 1/(n ε²): twice the
agents, half the iterations (the same total number of samples).

Protocol (stochastic quadratic of ``slamjax.problems.quadratic``: shared LL Hessian, agent-
specific data, every gradient call perturbed by per-agent Gaussian minibatch noise of std σ):

* graph: Erdős–Rényi with p = min(1, 2 ln n / n) (connected w.h.p.; complete for n ≤ 5, a
  lone agent for n = 1);
* for each n and each horizon T in a doubling grid, run T iterations of SLAM with Theorem 1's
  rule 1/α = 1/β = min(c·√(n/T), η_max) (the cap keeps the recursion stable) and
  ρ = ½ · 4α / (λ_max(L)(1 + 2γ)) (half the stability bound, so the consensus contraction per
  step is the same for every n and step size), γ = 1; the seeds (noise draws) are vmapped in
  one compiled run (``slamjax.run(..., seeds=[...])``);
* T_ε(n) = the smallest horizon whose average of the seed-mean ‖∇F(1x̄^r)‖² over r ≤ T is
  ≤ ε (log-interpolated between the two grid points around it); the grid stops at the first
  success;
* the log-log slope of T_ε against n is fitted over the n below the step-size cap (expected
  ≈ −1) — once 1/α hits η_max, the deterministic rate takes over and T_ε flattens (the
  transient).

Figures: ‖∇F(1x̄^r)‖² (seed mean) against iterations and against total samples
(= 2 minibatches × n agents × r) at one common horizon, and T_ε against n with the fit.
Writes ``results/speedup_sweep.json`` and ``results/speedup_sweep.png``.

    python experiments/speedup_sweep.py            # n = 1 … 4096 (~10 min on 2 cores)
    python experiments/speedup_sweep.py --quick    # n = 1 … 64 (< 1 min)
    slamjax sweep [--quick] [...]                  # the same through the CLI
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, pyplot, write_json  # noqa: E402

import slamjax as sj  # noqa: E402
from slamjax.problems.quadratic import make_quadratic  # noqa: E402

GAMMA = 1.0


def sweep_graph(n: int):
    """Erdős–Rényi with the default p = min(1, 2 ln n / n) (connected w.h.p.)."""
    return sj.graphs.erdos_renyi(n, seed=0)


def theorem1_params(n: int, T: int, lam_max: float, c: float = 0.25, eta_max: float = 0.1,
                    gamma: float = GAMMA):
    """(α, β, ρ, γ): 1/α = 1/β = min(c·√(n/T), η_max); ρ at half the stability bound."""
    eta = min(c * math.sqrt(n / T), eta_max)
    alpha = beta = 1.0 / eta
    rho = 1.0 if lam_max <= 0 else 0.5 * 4.0 * alpha / (lam_max * (1.0 + 2.0 * gamma))
    return alpha, beta, rho, gamma


def run_horizon(problem, graph, data, x0, y0, T, seeds, c, eta_max, log_every, chunk):
    a, b, rho, g = theorem1_params(graph.n, T, graph.lam_max, c, eta_max)
    params = sj.SLAMParams.create(a, b, rho, g)
    alg = sj.slam(problem, graph, sj.SLAMConfig("slam", sj.CG(10)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.StabilityWarning)
        res = sj.run(alg, params, data, x0, y0, num_steps=T, log_every=log_every,
                     seeds=seeds, progress=False, logs_per_chunk=chunk)
    gF = np.asarray(res.history["grad_F_sq"])            # (seeds, T/log_every + 1)
    mean_curve = gF.mean(axis=0)
    avg = float(mean_curve[1:].mean())                   # ≈ (1/T) Σ_{r=1..T} E‖∇F(1x̄^r)‖²
    return {"T": T, "eta": 1.0 / a, "rho": rho, "avg_gradF_sq": avg,
            "final_gradF_sq": float(mean_curve[-1]), "compile_s": res.compile_time,
            "run_s": res.run_time,
            # None, or per seed the step of divergence (-1: that seed stayed finite)
            "diverged_at": None if res.diverged_at is None else
            np.asarray(res.diverged_at).tolist(),
            "steps": res.steps.tolist(), "curve": mean_curve.tolist(),
            "consensus_x": float(np.asarray(res.history["consensus_x"]).mean(0)[-1])}


def fit_slope(ns, ts):
    ns, ts = np.asarray(ns, float), np.asarray(ts, float)
    if len(ns) < 2:
        return None, None
    A = np.stack([np.log(ns), np.ones_like(ns)], axis=1)
    (slope, icpt), *_ = np.linalg.lstsq(A, np.log(ts), rcond=None)
    return float(slope), float(icpt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 1 … 64, 4 seeds (< 1 min)")
    ap.add_argument("--n-max", type=int, default=None, help="largest n (default 4096)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds vmapped per run (8)")
    ap.add_argument("--d", type=int, default=5, help="d_x = d_y (5)")
    ap.add_argument("--noise", type=float, default=2.0, help="minibatch noise std σ (2)")
    ap.add_argument("--eps", type=float, default=None,
                    help="ε for T_ε (default: eps-rel × ‖∇F(x̄⁰)‖² of the n = 1 problem)")
    ap.add_argument("--eps-rel", type=float, default=None,
                    help="relative ε (default 0.005; quick 0.02)")
    ap.add_argument("--x0", type=float, default=1.0, help="common initial UL value (1.0)")
    ap.add_argument("--c", type=float, default=0.25, help="1/α = c·√(n/T) (0.25)")
    ap.add_argument("--eta-max", type=float, default=0.1, help="step-size cap (0.1)")
    ap.add_argument("--t-min", type=int, default=32, help="smallest horizon (32)")
    ap.add_argument("--t-max", type=int, default=None, help="largest horizon (2^18)")
    ap.add_argument("--t-plot", type=int, default=None,
                    help="common horizon of the curves (default 2048; quick 1024)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--name", default="speedup_sweep")
    args = ap.parse_args(argv)

    quick = args.quick
    n_max = args.n_max or (64 if quick else 4096)
    ns = [2**k for k in range(0, int(math.log2(n_max)) + 1, 2 if quick else 1)]
    seeds = list(range(args.seeds or (4 if quick else 8)))
    t_max = args.t_max or (2**14 if quick else 2**18)
    args.eps_rel = args.eps_rel or (0.02 if quick else 0.005)
    t_plot = args.t_plot or (1024 if quick else 2048)
    log_every = 1   # ‖∇F(1x̄^r)‖² at every iteration: the average of Theorem 1 exactly
    chunk = args.t_min  # logs per compiled chunk: one compile per n, reused by every horizon

    t0 = time.perf_counter()
    print(f"speedup sweep: n = {ns[0]} … {ns[-1]}, {len(seeds)} seeds vmapped, d = {args.d}, "
          f"σ = {args.noise}, 1/α = 1/β = min({args.c}·√(n/T), {args.eta_max}), "
          f"backend {jax.default_backend()}", flush=True)
    per_n = []
    eps = args.eps
    for n in ns:
        graph = sweep_graph(n)
        problem, data, _, y0 = make_quadratic(n, args.d, args.d, 1, seed=0, noise=args.noise)
        # every agent starts from the same UL point, the same for every n (x̄⁰ does not
        # depend on n; the LL variables start at random, disagreeing values)
        x0 = jnp.full((n, args.d), args.x0, y0.dtype)
        if eps is None:
            # ε relative to the initial stationarity of the smallest problem (n = 1)
            from slamjax.problems.quadratic import ul_gradient

            g0 = float(jnp.sum(ul_gradient(jnp.mean(x0, 0), data, True, True) ** 2))
            eps = args.eps_rel * g0
            print(f"ε = {args.eps_rel} × ‖∇F(x̄⁰)‖² (n = 1) = {eps:.4g}", flush=True)
        runs = []
        T = args.t_min
        hit = None
        while T <= t_max:
            r = run_horizon(problem, graph, data, x0, y0, T, seeds, args.c, args.eta_max,
                            log_every, chunk)
            runs.append(r)
            if r["avg_gradF_sq"] <= eps and r["diverged_at"] is None:
                hit = r
                break
            T *= 2
        t_eps = None
        if hit is not None:
            if len(runs) >= 2:  # log-interpolate between the last miss and the hit
                lo, hi = runs[-2], runs[-1]
                f = (math.log(lo["avg_gradF_sq"]) - math.log(eps)) / (
                    math.log(lo["avg_gradF_sq"]) - math.log(hi["avg_gradF_sq"]))
                t_eps = math.exp(math.log(lo["T"]) + f * (math.log(hi["T"]) - math.log(lo["T"])))
            else:
                t_eps = float(hit["T"])
        plot_run = next((r for r in runs if r["T"] == t_plot), None)
        if plot_run is None:
            plot_run = run_horizon(problem, graph, data, x0, y0, t_plot, seeds, args.c,
                                   args.eta_max, log_every, chunk)
        capped = theorem1_params(n, t_eps or t_max, graph.lam_max, args.c, args.eta_max)
        capped = (1.0 / capped[0]) >= args.eta_max - 1e-12
        rec = {"n": n, "lam_max": graph.lam_max, "mean_degree": graph.mean_degree,
               "T_eps": t_eps, "step_capped": capped, "grid": [
                   {k: v for k, v in r.items() if k not in ("curve", "steps")} for r in runs],
               "plot": {"T": t_plot, "steps": plot_run["steps"], "curve": plot_run["curve"],
                        "eta": plot_run["eta"]},
               "compile_s": runs[0]["compile_s"]}
        per_n.append(rec)
        print(f"n={n:6d} λ_max={graph.lam_max:7.3g} T_ε={t_eps if t_eps is None else round(t_eps)}"
              f" (1/α at T_ε {'capped' if capped else 'by the √(n/T) rule'}; horizons run "
              f"{[r['T'] for r in runs]}; compile {runs[0]['compile_s']:.1f} s; "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)

    pts = [(r["n"], r["T_eps"]) for r in per_n if r["T_eps"] is not None and not r["step_capped"]]
    slope, icpt = fit_slope(*zip(*pts)) if len(pts) >= 2 else (None, None)
    all_pts = [(r["n"], r["T_eps"]) for r in per_n if r["T_eps"] is not None]
    slope_all, _ = fit_slope(*zip(*all_pts)) if len(all_pts) >= 2 else (None, None)
    print(f"fitted log-log slope of T_ε vs n (uncapped step sizes, {len(pts)} points): "
          f"{slope if slope is None else round(slope, 3)}; over all n: "
          f"{slope_all if slope_all is None else round(slope_all, 3)}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(extra_packages=()),
        "config": {"ns": ns, "seeds": seeds, "d": args.d, "m": 1, "noise": args.noise,
                   "eps": eps, "c": args.c, "eta_max": args.eta_max, "gamma": GAMMA,
                   "t_min": args.t_min, "t_max": t_max, "t_plot": t_plot,
                   "log_every": log_every, "graph": "erdos_renyi p=min(1, 2 ln n / n)",
                   "solver": "CG(10)", "command": " ".join(sys.argv)},
        "fit": {"slope": slope, "intercept": icpt, "points": pts, "slope_all_n": slope_all},
        "per_n": per_n, "total_runtime_s": time.perf_counter() - t0,
    }
    write_json(out / f"{args.name}.json", payload)
    png = plot(payload, out / f"{args.name}.png")
    print(f"wrote {out / (args.name + '.json')} and {png} ({time.perf_counter() - t0:.0f} s)")
    return 0


def plot(payload, path):
    plt = pyplot()
    per_n = payload["per_n"]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, r in enumerate(per_n):
        col = cmap(i / max(1, len(per_n) - 1))
        steps = np.asarray(r["plot"]["steps"], float)
        curve = np.asarray(r["plot"]["curve"])
        axes[0].loglog(np.maximum(steps, 1), curve, color=col, lw=1.2, label=f"n={r['n']}")
        axes[1].loglog(np.maximum(steps, 1) * 2 * r["n"], curve, color=col, lw=1.2,
                       label=f"n={r['n']}")
    eps = payload["config"]["eps"]
    T = payload["config"]["t_plot"]
    for ax, xl in ((axes[0], "iteration r"), (axes[1], "total samples (2 minibatches · n · r)")):
        ax.axhline(eps, color="k", ls=":", lw=0.8, label="ε")
        ax.set_xlabel(xl)
        ax.set_ylabel("‖∇F(1x̄ʳ)‖² (mean over seeds)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(f"horizon T = {T}, 1/α = 1/β = min(c√(n/T), η_max)")
    axes[1].set_title("same runs against samples")
    axes[0].legend(fontsize=7, ncol=2)
    ax = axes[2]
    pts = [(r["n"], r["T_eps"], r["step_capped"]) for r in per_n if r["T_eps"] is not None]
    if pts:
        n_, t_, c_ = map(np.asarray, zip(*pts))
        ax.loglog(n_[~c_], t_[~c_], "o", color="C0", label="T_ε (√(n/T) rule)")
        if c_.any():
            ax.loglog(n_[c_], t_[c_], "s", mfc="none", color="C3",
                      label="T_ε (step size capped: transient)")
    fit = payload["fit"]
    if fit["slope"] is not None:
        xs = np.asarray([p[0] for p in fit["points"]], float)
        ax.loglog(xs, np.exp(fit["intercept"]) * xs ** fit["slope"], "-", color="C0", lw=1,
                  label=f"fit: slope {fit['slope']:.2f}")
        ax.loglog(xs, np.exp(fit["intercept"]) * xs[0] ** fit["slope"] * (xs / xs[0]) ** -1.0,
                  ":", color="gray", lw=1, label="slope −1 (linear speedup)")
    ax.set_xlabel("agents n")
    ax.set_ylabel(f"iterations to ε = {eps:.3g}")
    ax.set_title("iterations to ε (average of E‖∇F‖² over the run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"SLAM linear speedup — stochastic quadratic d={payload['config']['d']}, "
                 f"σ={payload['config']['noise']}, {len(payload['config']['seeds'])} seeds, "
                 f"Erdős–Rényi p=2ln n/n, {payload['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
