"""Linear speed-up of SLAM in the number of agents (paper Theorem 1), measured with tuned steps
next to a centralized oracle.

Problem: the stochastic quadratic of ``slamjax.problems.quadratic`` (d_x = d_y = 5, m = 1, LL
Hessian shared by the agents, agent-specific linear terms, every gradient call perturbed by
per-agent Gaussian noise of std σ = 2); every agent starts from x = 1 (x̄⁰ is the same for
every n). The metric is Theorem 1's E‖∇F(1x̄)‖² (closed form), averaged over 8 seeds that are
vmapped lanes of one program.

Methods, for n = 1, 2, 4, …, 4096:

* **SLAM** on Erdős–Rényi (p = 2 ln n / n, seed 0; complete for n ≤ 5), 1/α = 1/β = η,
  γ = 1, ρ at half the stability bound (so the consensus gain per step is the same at every η);
* **centralized oracle**: D-SOBA on the complete graph, whose Metropolis W is exact averaging —
  every agent holds the network average and steps along the average of the n agents'
  stochastic directions: single-loop stochastic bilevel SGD (SOBA) with a batch of n
  minibatches, η_x = η_y = η_z = η;
* **SLAM on the complete graph** (the centralized control of SLAM itself; ``--methods`` adds
  it, not in the default run for time).

(a) Iterations to ε. Each method's step is tuned per n from ONE grid
η ∈ {0.00125, 0.0025, …, 0.32} (factors of 2) (all grid points × seeds in one program). A run has
"reached" ε at the first logged iteration t where the seed-mean ‖∇F(1x̄)‖², averaged over the
logs in [t/2, t], is ≤ ε — a running average with a window that scales with t, so one lucky
log does not count and short and long runs are judged alike. T_ε(n) = the smallest such iteration over the grid. The horizon is
T_n = max(512, 2^15 / n) (linear speed-up would need 2^15/n), logs every T_n/256 steps.
The fit of log T_ε against log n uses the n whose best step is *inside* the grid (noise-limited
regime); where the best step is the largest stable one the deterministic rate (transient) sets
T_ε and more agents cannot help — those points are shown, marked and not fitted.

(b) Stationary error at one fixed small step η = 0.01: the mean of ‖∇F(1x̄)‖² over the second
half of a 2048-step run (its own program: 8 seed lanes only), against n. Theory: ∝ σ²η/n while the noise of the averaged directions
dominates.

Samples are counted as drawn: two minibatches per agent and iteration for SLAM, and for the
oracle (SOBA evaluates g- and f-terms on independent minibatches as SLAM does).

Writes ``results/speedup_sweep.json`` and ``.png``.

    python experiments/speedup_sweep.py            # n = 1 … 4096 (≈ 10 min on 2 cores)
    python experiments/speedup_sweep.py --quick    # n = 1 … 64, 4 seeds (≈ 2 min)
    slamjax sweep [--quick] [...]                  # the same through the CLI
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slamjax as sj  # noqa: E402
from _common import RESULTS, machine_info, pyplot, save_figure, write_json  # noqa: E402
from slamjax.baselines import DSOBAParams, dsoba  # noqa: E402
from slamjax.problems.quadratic import make_quadratic, ul_gradient  # noqa: E402

GRID = [0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32]
FIXED_STEP = 0.01
LOGS = 256
METHODS = ("slam", "oracle", "slam_complete")


def horizon(n: int, t1: int, t_min: int) -> int:
    return max(t_min, t1 // n)


def _rho(lam_max: float, eta: float) -> float:
    return 1.0 if lam_max <= 0 else 0.5 * sj.stability_bound(lam_max, 1.0 / eta, 1.0)


@functools.lru_cache(maxsize=4)
def graph_for(method: str, n: int):
    """The method's graph (built once per n: parts (a) and (b) share it)."""
    if method == "slam":
        return sj.graphs.erdos_renyi(n, seed=0)
    return sj.graphs.complete(n)


def build(method: str, problem, n: int, steps):
    """(algorithm, params template, grid points, graph)."""
    g = graph_for(method, n)
    if method == "oracle":
        return (dsoba(problem, g), DSOBAParams.create(0.1, 0.1, 0.1, 1.0),
                [dict(lr_x=e, lr_y=e, lr_z=e, theta=1.0) for e in steps], g)
    alg = sj.slam(problem, g, sj.SLAMConfig("slam", solver=sj.CG(10)))
    pts = [dict(alpha=1 / e, beta=1 / e, rho=_rho(g.lam_max, e), gamma=1.0) for e in steps]
    return alg, sj.SLAMParams.create(1.0, 1.0, 1.0, 1.0), pts, g


def reached(steps, curve, eps):
    """First logged iteration t ≥ 2 logs at which the mean of the logged values over [t/2, t] is
    ≤ ε: a running average whose window grows with t (scale-free: the same rule for a run of
    60 and of 6000 iterations, and one lucky log does not count)."""
    c = np.asarray(curve, float)
    c = np.where(np.isfinite(c), c, 1e30)         # a diverged run never reaches ε
    cs = np.concatenate([[0.0], np.cumsum(c)])
    for k in range(2, len(c)):
        lo = (k + 1) // 2
        if (cs[k + 1] - cs[lo]) / (k + 1 - lo) <= eps:
            return float(steps[k])
    return None


def fit(ns, ts):
    ns, ts = np.asarray(ns, float), np.asarray(ts, float)
    if len(ns) < 2:
        return None, None
    slope, icpt = np.polyfit(np.log(ns), np.log(ts), 1)
    return float(slope), float(icpt)


def run_a(method, problem, data, x0, y0, n, T, seeds, eps):
    alg, P, pts, g = build(method, problem, n, GRID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sj.run(alg, P, data, x0, y0, num_steps=T, log_every=T // LOGS, seeds=seeds,
                     grid=pts, progress=False)
    gF = np.asarray(res.history["grad_F_sq"], float)             # (G, S, L)
    curves = gF.mean(axis=1)
    hits = [reached(res.steps, c, eps) for c in curves]
    diverged = [not bool(np.isfinite(gF[i]).all()) for i in range(len(GRID))]
    # a step that diverges for any seed later in the run does not count, even if it hit ε first
    ok = [i for i, h in enumerate(hits) if h is not None and not diverged[i]]
    best = min(ok, key=lambda i: hits[i]) if ok else None
    largest_stable = max((i for i in range(len(GRID)) if not diverged[i]), default=None)
    return {"method": method, "T": T, "T_eps": None if best is None else hits[best],
            "best_eta": None if best is None else GRID[best],
            "best_is_largest_stable": best is not None and best == largest_stable,
            "best_is_smallest": best == 0,
            "hits": hits, "diverged": diverged, "steps": res.steps.tolist(),
            "best_curve": (curves[best] if best is not None else curves[0]).tolist(),
            "lam_max": g.lam_max,
            "spectral_gap": (sj.graphs.spectral_gap(g) if n <= 2048 else None),
            "compile_s": res.compile_time, "run_s": res.run_time}


def run_b(method, problem, data, x0, y0, n, T, seeds):
    """Stationary error at the fixed step: mean over the second half of a T-step run."""
    alg, P, pts, _ = build(method, problem, n, [FIXED_STEP])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sj.run(alg, P, data, x0, y0, num_steps=T, log_every=T // LOGS, seeds=seeds,
                     grid=pts, progress=False)
    gF = np.asarray(res.history["grad_F_sq"], float)[0]            # (S, L)
    half = gF[:, gF.shape[1] // 2:].mean(axis=1)                    # per seed
    return {"T_fixed": T, "stationary": float(half.mean()),
            "stationary_sem": float(half.std(ddof=1) / math.sqrt(len(half)))
            if len(half) > 1 else None, "run_fixed_s": res.run_time}


def summarize(per_n, methods) -> dict:
    """Fits of (a) over the n whose tuned step is not the largest stable one (transient-limited
    points excluded) and of (b) over every n; SLAM's T_ε over the oracle's per n. (A best step
    at the grid's *small* end is kept: a smaller step only takes longer once the next larger
    one cannot reach ε.)"""
    summary = {}
    for m in methods:
        pts = [(r["n"], r[m]["T_eps"]) for r in per_n
               if r[m]["T_eps"] is not None and not r[m]["best_is_largest_stable"]]
        slope_a, icpt_a = fit(*zip(*pts)) if len(pts) >= 2 else (None, None)
        stat = [(r["n"], r[m]["stationary"]) for r in per_n]
        slope_b, icpt_b = fit(*zip(*stat)) if len(stat) >= 2 else (None, None)
        summary[m] = {"fit_a": {"slope": slope_a, "intercept": icpt_a,
                                "n": [p[0] for p in pts]},
                      "fit_b": {"slope": slope_b, "intercept": icpt_b,
                                "n": [p[0] for p in stat]}}
    if "slam" in methods and "oracle" in methods:
        summary["slam_over_oracle"] = [
            None if (r["slam"]["T_eps"] is None or r["oracle"]["T_eps"] is None)
            else r["slam"]["T_eps"] / r["oracle"]["T_eps"] for r in per_n]
    return summary


def replot(path) -> int:
    """Re-summarize and re-plot a saved run (``--from-json``) without running anything."""
    import json
    path = Path(path)
    payload = json.loads(path.read_text())
    payload["summary"] = summarize(payload["per_n"], payload["config"]["methods"])
    write_json(path, payload)
    print(f"rewrote {path} and {plot(payload, path.with_suffix('.png'))}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 1 … 64, 4 seeds (≈ 2 min)")
    ap.add_argument("--n-max", type=int, default=None, help="largest n (default 4096)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 8; quick 4)")
    ap.add_argument("--d", type=int, default=5)
    ap.add_argument("--noise", type=float, default=2.0, help="oracle noise σ")
    ap.add_argument("--eps-rel", type=float, default=2e-3,
                    help="ε = eps-rel × ‖∇F(x̄⁰)‖² (default 2e-3)")
    ap.add_argument("--t1", type=int, default=None, help="horizon at n = 1 (2^15; quick 2^13)")
    ap.add_argument("--t-min", type=int, default=512, help="smallest horizon of (a) (512)")
    ap.add_argument("--t-fixed", type=int, default=2048, help="horizon of (b) (2048)")
    ap.add_argument("--methods", nargs="+", default=["slam", "oracle"], choices=METHODS)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="speedup_sweep")
    ap.add_argument("--from-json", default=None, help="re-summarize and re-plot a saved run")
    args = ap.parse_args(argv)
    if args.from_json:
        return replot(args.from_json)
    n_max = args.n_max or (64 if args.quick else 4096)
    if n_max < 1:
        ap.error("--n-max must be ≥ 1")
    ns = [2 ** k for k in range(0, int(math.log2(n_max)) + 1)]
    seeds = list(range(args.seeds or (4 if args.quick else 8)))
    t1 = args.t1 or (2 ** 13 if args.quick else 2 ** 15)
    t_min = min(args.t_min, t1)
    if any(horizon(n, t1, t_min) % LOGS for n in ns) or args.t_fixed % LOGS:
        ap.error(f"horizons must be multiples of {LOGS}")
    t0 = time.perf_counter()
    eps = None
    per_n = []
    for n in ns:
        problem, data, _, y0 = make_quadratic(n, args.d, args.d, 1, seed=0, noise=args.noise)
        x0 = jnp.ones((n, args.d), y0.dtype)
        if eps is None:
            g0 = float(jnp.sum(ul_gradient(jnp.mean(x0, 0), data, True, True) ** 2))
            eps = args.eps_rel * g0
            print(f"ε = {args.eps_rel} × ‖∇F(x̄⁰)‖² = {eps:.4g}; grid {GRID}; {len(seeds)} "
                  f"seeds", flush=True)
        T = horizon(n, t1, t_min)
        rec = {"n": n, "T": T}
        for m in args.methods:
            rec[m] = run_a(m, problem, data, x0, y0, n, T, seeds, eps)
            rec[m].update(run_b(m, problem, data, x0, y0, n, args.t_fixed, seeds))
        per_n.append(rec)
        line = "  ".join(f"{m}: T_ε={rec[m]['T_eps']} (η={rec[m]['best_eta']}"
                         f"{', largest stable' if rec[m]['best_is_largest_stable'] else ''}) "
                         f"stat={rec[m]['stationary']:.2e}" for m in args.methods)
        print(f"n={n:5d} T={T:6d}  {line}  [{time.perf_counter() - t0:.0f} s]", flush=True)

    summary = summarize(per_n, args.methods)
    wall = time.perf_counter() - t0
    for m in args.methods:
        fa, fb = summary[m]["fit_a"], summary[m]["fit_b"]
        print(f"{m}: (a) slope {fa['slope']} over n={fa['n']}; (b) slope {fb['slope']}")
    out = Path(args.out)
    payload = {"config": {"ns": ns, "seeds": seeds, "d": args.d, "noise": args.noise,
                          "eps": eps, "eps_rel": args.eps_rel, "grid": GRID,
                          "fixed_step": FIXED_STEP, "reached": "mean over logs in [t/2, t] ≤ ε", "logs": LOGS, "t1": t1,
                          "t_min": t_min, "t_fixed": args.t_fixed, "methods": args.methods,
                          "command": " ".join(["python experiments/speedup_sweep.py"]
                                              + (argv if argv is not None else sys.argv[1:]))},
               "per_n": per_n, "summary": summary, "wall_s": wall,
               "machine": machine_info(extra_packages=())}
    path = write_json(out / f"{args.name}.json", payload)
    png = plot(payload, out / f"{args.name}.png")
    print(f"wrote {path} and {png} in {wall:.0f} s")
    return 0


LABEL = {"slam": "SLAM (Erdős–Rényi)", "oracle": "centralized oracle (SOBA, batch n)",
         "slam_complete": "SLAM (complete graph)"}


def plot(payload, path):
    plt = pyplot()
    per_n, cfg, summ = payload["per_n"], payload["config"], payload["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(per_n):
        if "slam" not in r:
            break
        s = r["slam"]
        axes[0].loglog(np.maximum(np.asarray(s["steps"], float), 1), s["best_curve"],
                       color=cmap(i / max(1, len(per_n) - 1)), lw=1, label=f"n={r['n']}")
    axes[0].axhline(cfg["eps"], color="k", ls=":", lw=0.8)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("‖∇F(1x̄)‖² (seed mean)")
    axes[0].set_title("SLAM at its tuned step, per n")
    axes[0].legend(fontsize=6, ncol=2)
    for k, m in enumerate(cfg["methods"]):
        ns = np.asarray([r["n"] for r in per_n], float)
        t = np.asarray([np.nan if r[m]["T_eps"] is None else r[m]["T_eps"] for r in per_n])
        edge = np.asarray([r[m]["best_is_largest_stable"] for r in per_n])
        c = f"C{k}"
        axes[1].loglog(ns[~edge], t[~edge], "o", color=c, label=LABEL[m])
        axes[1].loglog(ns[edge], t[edge], "s", mfc="none", color=c,
                       label=f"{LABEL[m]}: largest stable step (transient)")
        fa = summ[m]["fit_a"]
        if fa["slope"] is not None:
            xs = np.asarray(fa["n"], float)
            axes[1].loglog(xs, np.exp(fa["intercept"]) * xs ** fa["slope"], "-", color=c,
                           lw=1, label=f"fit over n={int(xs[0])}…{int(xs[-1])}: "
                                       f"{fa['slope']:.2f}")
        st = np.asarray([r[m]["stationary"] for r in per_n])
        axes[2].loglog(ns, st, "o-", color=c, label=f"{LABEL[m]} "
                       f"(slope {summ[m]['fit_b']['slope']:.2f})")
    ns = np.asarray([r["n"] for r in per_n], float)
    t_ref = [r["slam"]["T_eps"] for r in per_n if "slam" in r and r["slam"]["T_eps"]]
    if t_ref:
        axes[1].loglog(ns, t_ref[0] / ns, ":", color="gray", label="slope −1")
    axes[1].set_xlabel("agents n")
    axes[1].set_ylabel("iterations to ε (running mean over [t/2, t])")
    axes[1].set_title("(a) iterations to ε, step tuned per n")
    axes[1].legend(fontsize=6)
    axes[2].set_xlabel("agents n")
    axes[2].set_ylabel(f"stationary ‖∇F(1x̄)‖² at η = {cfg['fixed_step']}")
    axes[2].set_title("(b) stationary error at a fixed step (theory ∝ 1/n)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Linear speed-up — stochastic quadratic d={cfg['d']}, σ={cfg['noise']}, "
                 f"{len(cfg['seeds'])} seeds, step grid {cfg['grid']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
