"""Linear speed-up of SLAM in the number of agents (paper Theorem 1), with tuned steps, next to
a centralized oracle: the library behind ``slamjax sweep`` and ``experiments/speedup_sweep.py``.

Problem: the stochastic quadratic of :mod:`slamjax.problems.quadratic` (d_x = d_y = d, m = 1,
LL Hessian shared by the agents, agent-specific linear terms, every gradient call perturbed by
per-agent Gaussian noise of std σ); every agent starts from x = 1. The metric is Theorem 1's
E‖∇F(1x̄)‖² (closed form), averaged over seeds that are vmapped lanes of one program.

Methods: ``slam`` (Erdős–Rényi graph, 1/α = 1/β = η, γ = 1, ρ at half the stability bound),
``oracle`` (D-SOBA on the complete graph: exact averaging, i.e. single-loop stochastic bilevel
SGD with a batch of n minibatches) and ``slam_complete`` (SLAM on the complete graph).

(a) Iterations to ε, the step tuned per n over :data:`GRID` (every grid point × seed in one
program); a run reaches ε at the first logged iteration t where the seed-mean ‖∇F‖², averaged
over the logs in [t/2, t], is ≤ ε. Horizon T_n = max(t_min, t1/n). The fit of log T_ε against
log n uses the n whose best step is not the largest stable one (those are transient-limited).
(b) Stationary error at the fixed step :data:`FIXED_STEP`: the mean of ‖∇F‖² over the second
half of a ``t_fixed``-step run.

Function API: :func:`speedup_sweep` (returns the payload), :func:`summarize`,
:func:`plot_sweep`, :func:`replot`; command line: :func:`add_arguments` / :func:`main`.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["GRID", "FIXED_STEP", "LOGS", "METHODS", "DESCRIPTION", "horizon", "reached", "fit",
           "speedup_sweep", "summarize", "plot_sweep", "replot", "add_arguments", "main"]

GRID = [0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32]
"""The step grid η of part (a) (factors of 2)."""
FIXED_STEP = 0.01
"""The fixed step of part (b)."""
LOGS = 256
"""Logged points per run."""
METHODS = ("slam", "oracle", "slam_complete")
"""The methods a sweep can run."""
DESCRIPTION = ("Linear speed-up of SLAM in the number of agents (Theorem 1): iterations to ε "
               "with the step tuned per n, and the stationary error at a fixed step, next to "
               "a centralized oracle. Writes <out>/<name>.json and .png.")
"""The command's description (``slamjax sweep --help``)."""
LABEL = {"slam": "SLAM (Erdős–Rényi)", "oracle": "centralized oracle (SOBA, batch n)",
         "slam_complete": "SLAM (complete graph)"}


def horizon(n: int, t1: int, t_min: int) -> int:
    """The horizon of part (a) at n agents: max(t_min, t1 // n)."""
    return max(t_min, t1 // n)


def _rho(lam_max: float, eta: float) -> float:
    import slamjax as sj

    return 1.0 if lam_max <= 0 else 0.5 * sj.stability_bound(lam_max, 1.0 / eta, 1.0)


@functools.lru_cache(maxsize=4)
def _graph_for(method: str, n: int):
    """The method's graph (built once per n: parts (a) and (b) share it)."""
    import slamjax as sj

    if method == "slam":
        return sj.graphs.erdos_renyi(n, seed=0)
    return sj.graphs.complete(n)


def _build(method: str, problem, n: int, steps):
    """(algorithm, params template, grid points, graph)."""
    import slamjax as sj
    from slamjax.baselines import DSOBAParams, dsoba

    g = _graph_for(method, n)
    if method == "oracle":
        return (dsoba(problem, g), DSOBAParams.create(0.1, 0.1, 0.1, 1.0),
                [dict(lr_x=e, lr_y=e, lr_z=e, theta=1.0) for e in steps], g)
    alg = sj.slam(problem, g, sj.SLAMConfig("slam", solver=sj.CG(10)))
    pts = [dict(alpha=1 / e, beta=1 / e, rho=_rho(g.lam_max, e), gamma=1.0) for e in steps]
    return alg, sj.SLAMParams.create(1.0, 1.0, 1.0, 1.0), pts, g


def reached(steps, curve, eps):
    """First logged iteration t (from the third log on) at which the mean of the logged
    values over [t/2, t] is ≤ ``eps``, or None: a running average whose window grows with t
    (the same rule for short and long runs; one lucky log does not count)."""
    c = np.asarray(curve, float)
    c = np.where(np.isfinite(c), c, 1e30)         # a diverged run never reaches ε
    cs = np.concatenate([[0.0], np.cumsum(c)])
    for k in range(2, len(c)):
        lo = (k + 1) // 2
        if (cs[k + 1] - cs[lo]) / (k + 1 - lo) <= eps:
            return float(steps[k])
    return None


def fit(ns, ts):
    """(slope, intercept) of the least-squares line of log ``ts`` against log ``ns``
    (``(None, None)`` with fewer than two points)."""
    ns, ts = np.asarray(ns, float), np.asarray(ts, float)
    if len(ns) < 2:
        return None, None
    slope, icpt = np.polyfit(np.log(ns), np.log(ts), 1)
    return float(slope), float(icpt)


def _grid_run(method, problem, data, x0, y0, n, T, seeds, steps):
    import slamjax as sj

    alg, P, pts, g = _build(method, problem, n, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sj.run(alg, P, data, x0, y0, num_steps=T, log_every=T // LOGS, seeds=seeds,
                     grid=pts, progress=False)
    return res, g


def _run_a(method, problem, data, x0, y0, n, T, seeds, eps):
    import slamjax as sj

    res, g = _grid_run(method, problem, data, x0, y0, n, T, seeds, GRID)
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


def _run_b(method, problem, data, x0, y0, n, T, seeds):
    """Stationary error at the fixed step: mean over the second half of a T-step run."""
    res, _ = _grid_run(method, problem, data, x0, y0, n, T, seeds, [FIXED_STEP])
    gF = np.asarray(res.history["grad_F_sq"], float)[0]            # (S, L)
    half = gF[:, gF.shape[1] // 2:].mean(axis=1)                    # per seed
    return {"T_fixed": T, "stationary": float(half.mean()),
            "stationary_sem": float(half.std(ddof=1) / math.sqrt(len(half)))
            if len(half) > 1 else None, "run_fixed_s": res.run_time}


def summarize(per_n, methods) -> dict:
    """Fits of (a) over the n whose tuned step is not the largest stable one (transient-limited
    points excluded) and of (b) over every n; SLAM's T_ε over the oracle's per n.

    ``per_n``: the records of :func:`speedup_sweep`; ``methods``: the methods they hold."""
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


def _check(ns, t1, t_min, t_fixed, methods):
    if not ns or min(ns) < 1:
        raise ValueError("--n-max must be ≥ 1")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {METHODS}")
    if any(horizon(n, t1, t_min) % LOGS for n in ns) or t_fixed % LOGS:
        raise ValueError(f"horizons must be multiples of {LOGS} (--t1, --t-min, --t-fixed)")


def speedup_sweep(ns, *, seeds=8, d: int = 5, noise: float = 2.0, eps_rel: float = 2e-3,
                  t1: int = 2 ** 15, t_min: int = 512, t_fixed: int = 2048,
                  methods=("slam", "oracle"), command: str = "", log=print) -> dict:
    """Run the sweep and return its JSON payload (``config``, ``per_n``, ``summary``,
    ``wall_s``, ``machine``).

    ``ns``: agent counts; ``seeds``: a count or a list of seeds; ``d``: d_x = d_y;
    ``noise``: the oracle's σ; ``eps_rel``: ε = eps_rel × ‖∇F(x̄⁰)‖²; ``t1``, ``t_min``:
    the horizons of (a) (T_n = max(t_min, t1/n), each a multiple of :data:`LOGS`);
    ``t_fixed``: the horizon of (b); ``methods``: a subset of :data:`METHODS`;
    ``command``: recorded in the payload; ``log``: where progress lines go."""
    import jax.numpy as jnp

    from slamjax.problems.quadratic import make_quadratic, ul_gradient
    from slamjax.tools._machine import machine_info

    ns, methods = [int(n) for n in ns], list(methods)
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    t_min = min(t_min, t1)
    _check(ns, t1, t_min, t_fixed, methods)
    t0, eps, per_n = time.perf_counter(), None, []
    for n in ns:
        problem, data, _, y0 = make_quadratic(n, d, d, 1, seed=0, noise=noise)
        x0 = jnp.ones((n, d), y0.dtype)
        if eps is None:
            g0 = float(jnp.sum(ul_gradient(jnp.mean(x0, 0), data, True, True) ** 2))
            eps = eps_rel * g0
            log(f"ε = {eps_rel} × ‖∇F(x̄⁰)‖² = {eps:.4g}; grid {GRID}; {len(seeds)} seeds")
        T = horizon(n, t1, t_min)
        rec = {"n": n, "T": T}
        for m in methods:
            rec[m] = _run_a(m, problem, data, x0, y0, n, T, seeds, eps)
            rec[m].update(_run_b(m, problem, data, x0, y0, n, t_fixed, seeds))
        per_n.append(rec)
        line = "  ".join(f"{m}: T_ε={rec[m]['T_eps']} (η={rec[m]['best_eta']}"
                         f"{', largest stable' if rec[m]['best_is_largest_stable'] else ''}) "
                         f"stat={rec[m]['stationary']:.2e}" for m in methods)
        log(f"n={n:5d} T={T:6d}  {line}  [{time.perf_counter() - t0:.0f} s]")
    summary = summarize(per_n, methods)
    config = {"ns": ns, "seeds": seeds, "d": d, "noise": noise, "eps": eps, "eps_rel": eps_rel,
              "grid": GRID, "fixed_step": FIXED_STEP,
              "reached": "mean over logs in [t/2, t] ≤ ε", "logs": LOGS, "t1": t1,
              "t_min": t_min, "t_fixed": t_fixed, "methods": methods, "command": command}
    return {"config": config, "per_n": per_n, "summary": summary,
            "wall_s": time.perf_counter() - t0, "machine": machine_info(extra_packages=())}


def _panel_curves(ax, per_n, cfg):
    from slamjax.tools._machine import colormap

    cmap = colormap("viridis")
    for i, r in enumerate(per_n):
        if "slam" not in r:
            break
        s = r["slam"]
        ax.loglog(np.maximum(np.asarray(s["steps"], float), 1), s["best_curve"],
                  color=cmap(i / max(1, len(per_n) - 1)), lw=1, label=f"n={r['n']}")
    ax.axhline(cfg["eps"], color="k", ls=":", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("‖∇F(1x̄)‖² (seed mean)")
    ax.set_title("SLAM at its tuned step, per n")
    ax.legend(fontsize=6, ncol=2)


def _panel_methods(ax_a, ax_b, per_n, cfg, summ):
    ns = np.asarray([r["n"] for r in per_n], float)
    for k, m in enumerate(cfg["methods"]):
        t = np.asarray([np.nan if r[m]["T_eps"] is None else r[m]["T_eps"] for r in per_n])
        edge = np.asarray([r[m]["best_is_largest_stable"] for r in per_n])
        c = f"C{k}"
        ax_a.loglog(ns[~edge], t[~edge], "o", color=c, label=LABEL[m])
        ax_a.loglog(ns[edge], t[edge], "s", mfc="none", color=c,
                    label=f"{LABEL[m]}: largest stable step (transient)")
        fa = summ[m]["fit_a"]
        if fa["slope"] is not None:
            xs = np.asarray(fa["n"], float)
            ax_a.loglog(xs, np.exp(fa["intercept"]) * xs ** fa["slope"], "-", color=c,
                        lw=1, label=f"fit over n={int(xs[0])}…{int(xs[-1])}: "
                                    f"{fa['slope']:.2f}")
        st = np.asarray([r[m]["stationary"] for r in per_n])
        slope = summ[m]["fit_b"]["slope"]
        ax_b.loglog(ns, st, "o-", color=c, label=f"{LABEL[m]} (slope "
                    f"{'n/a' if slope is None else f'{slope:.2f}'})")
    t_ref = [r["slam"]["T_eps"] for r in per_n if "slam" in r and r["slam"]["T_eps"]]
    if t_ref:
        ax_a.loglog(ns, t_ref[0] / ns, ":", color="gray", label="slope −1")
    ax_a.set_xlabel("agents n")
    ax_a.set_ylabel("iterations to ε (running mean over [t/2, t])")
    ax_a.set_title("(a) iterations to ε, step tuned per n")
    ax_a.legend(fontsize=6)
    ax_b.set_xlabel("agents n")
    ax_b.set_ylabel(f"stationary ‖∇F(1x̄)‖² at η = {cfg['fixed_step']}")
    ax_b.set_title("(b) stationary error at a fixed step (theory ∝ 1/n)")
    ax_b.legend(fontsize=7)


def plot_sweep(payload: dict, path) -> Path:
    """The three panels (SLAM's curves per n, iterations to ε, stationary error) of a sweep's
    ``payload``, written to ``path`` (PNG); returns the path."""
    from slamjax.io import save_figure
    from slamjax.tools._machine import new_figure

    per_n, cfg, summ = payload["per_n"], payload["config"], payload["summary"]
    fig, axes = new_figure(1, 3, figsize=(17, 4.8))
    _panel_curves(axes[0], per_n, cfg)
    _panel_methods(axes[1], axes[2], per_n, cfg, summ)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Linear speed-up — stochastic quadratic d={cfg['d']}, σ={cfg['noise']}, "
                 f"{len(cfg['seeds'])} seeds, step grid {cfg['grid']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=130)


def replot(path) -> tuple[Path, Path | None]:
    """Re-summarize and re-plot a saved run (JSON at ``path``) without running anything;
    returns (JSON path, PNG path or None without matplotlib)."""
    from slamjax.io import write_json
    from slamjax.tools._machine import have_matplotlib

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--from-json {path}: no such file; run the sweep first")
    payload = json.loads(path.read_text())
    payload["summary"] = summarize(payload["per_n"], payload["config"]["methods"])
    write_json(path, payload)
    png = plot_sweep(payload, path.with_suffix(".png")) if have_matplotlib() else None
    return path, png


def add_arguments(parser) -> None:
    """The command-line options of ``slamjax sweep`` (and ``experiments/speedup_sweep.py``)."""
    ap = parser
    ap.add_argument("--quick", action="store_true", help="n = 1 … 64, 4 seeds (≈ 2 min)")
    ap.add_argument("--n-max", type=int, default=None, help="largest n (default 4096)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 8; quick 4)")
    ap.add_argument("--d", type=int, default=5, help="d_x = d_y (5)")
    ap.add_argument("--noise", type=float, default=2.0, help="oracle noise σ (2)")
    ap.add_argument("--eps-rel", type=float, default=2e-3,
                    help="ε = eps-rel × ‖∇F(x̄⁰)‖² (default 2e-3)")
    ap.add_argument("--t1", type=int, default=None, help="horizon at n = 1 (2^15; quick 2^13)")
    ap.add_argument("--t-min", type=int, default=512, help="smallest horizon of (a) (512)")
    ap.add_argument("--t-fixed", type=int, default=2048, help="horizon of (b) (2048)")
    ap.add_argument("--methods", nargs="+", default=["slam", "oracle"], choices=METHODS,
                    help="methods to run (slam oracle)")
    ap.add_argument("--out", default="results",
                    help="output directory (default ./results in the current directory)")
    ap.add_argument("--name", default="speedup_sweep", help="<out>/<name>.json and .png")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="re-summarize and re-plot a saved run (nothing is run)")


def main(args) -> int:
    """Run ``slamjax sweep`` for parsed ``args`` (see :func:`add_arguments`): the output
    place is checked first, then the sweep runs and <out>/<name>.json (+ .png) is written."""
    from slamjax.io import check_name, check_output_dir, check_output_file, write_json
    from slamjax.tools._machine import NO_PLOT_NOTE, have_matplotlib

    if args.from_json:
        path, png = replot(args.from_json)
        print(f"rewrote {path}" + (f" and {png}" if png else f" ({NO_PLOT_NOTE})"))
        return 0
    out = check_output_dir(args.out, "--out")
    name = check_name(args.name)
    plot = have_matplotlib()
    for suffix in (".json",) + ((".png",) if plot else ()):
        check_output_file(out / f"{name}{suffix}", "--out/--name: output file")
    n_max = args.n_max or (64 if args.quick else 4096)
    if n_max < 1:
        raise ValueError("--n-max must be ≥ 1")
    ns = [2 ** k for k in range(0, int(math.log2(n_max)) + 1)]
    payload = speedup_sweep(
        ns, seeds=args.seeds or (4 if args.quick else 8), d=args.d, noise=args.noise,
        eps_rel=args.eps_rel, t1=args.t1 or (2 ** 13 if args.quick else 2 ** 15),
        t_min=args.t_min, t_fixed=args.t_fixed, methods=args.methods,
        command=getattr(args, "command", ""), log=lambda s: print(s, flush=True))
    for m in args.methods:
        fa, fb = payload["summary"][m]["fit_a"], payload["summary"][m]["fit_b"]
        print(f"{m}: (a) slope {fa['slope']} over n={fa['n']}; (b) slope {fb['slope']}")
    path = write_json(out / f"{name}.json", payload)
    png = plot_sweep(payload, out / f"{name}.png") if plot else None
    print(f"wrote {path}" + (f" and {png}" if png else f" ({NO_PLOT_NOTE})")
          + f" in {payload['wall_s']:.0f} s")
    return 0
