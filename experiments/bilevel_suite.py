"""Head-to-head suite: SLAM, bias-free SLAM and the decentralized bilevel peers on one core.

Every method is an ``slamjax.Algorithm`` run by ``slamjax.run`` on the same problem instance,
graph and seeds. For each (problem, graph, n, method) the step size is tuned from ONE grid
shared by all methods (η ∈ STEP_GRID; the grid points and all seeds are lanes of one compiled
program) and selected on the mean over seeds of the final ‖∇F(1x̄)‖² + ‖Ax‖²/n.

Problems (this version; MNIST hyper-cleaning and ANIL are not in the suite yet):

* ``quad-shared``   — quadratic bilevel problem (``slamjax.problems.quadratic``), d_x = d_y =
  10, m = 1, LL Hessians shared by all agents, heterogeneous data (each agent's linear terms
  b_i, p_i, t_i drawn with std 1 around a common mean), stochastic oracle σ = 0.1;
* ``quad-hetero``   — the same with agent-specific LL Hessians H_i, B_i (where the local
  surrogate of eq. (23) is biased).

Graphs: ring, 2-D torus, Erdős–Rényi (p = 2 ln n / n), n ∈ {16, 64, 256} (``--n`` to change,
1024 works). Methods and how η maps to each one's parameters:

* ``slam``            SLAM (Alg. 1): 1/α = 1/β = η, γ = 1, ρ = 0.8 × the stability bound
  ρ·λ_max·(1 + 2γ) < 4/η (capped at 1);
* ``bias_free_slam``  as SLAM plus 1/δ = η for z;
* ``dsoba``           D-SOBA: η_x = η, η_y = η_z = 2η (θ = 1);
* ``dsoba_gt``        D-SOBA with gradient tracking: same steps;
* ``dsgd_bilevel``    DSGD with 5 inner LL steps (η_y = 2η) and CG(10) hypergradients, η_x = η;
* controls, for every method: ``local`` (the method on a graph with no edges: every agent
  solves its own problem, nothing is sent) and ``centralized`` (the method on the complete
  graph: for the gossip methods the Metropolis W is exact averaging; for SLAM the complete
  graph's Laplacian with ρ at 0.8 × its stability bound).

Consensus is measured graph-free, as the spread (1/n) Σ_i ‖x_i − x̄‖² of the final UL
iterates, so that methods, graphs and controls are on one scale; the selection score is the
final ‖∇F(1x̄)‖² + spread.

Writes results/bilevel_suite.json, .md (summary table) and .png (curves against iterations and
messages for n = 64). ``--quick``: quad-hetero on a ring at n = 16, 200 steps, 2 seeds (CI).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import slamjax as sj  # noqa: E402
from _common import RESULTS, machine_info, pyplot, save_figure, write_json  # noqa: E402
from slamjax.baselines import (BiasFreeParams, DSGDBilevelParams, DSOBAGTParams,  # noqa: E402
                               DSOBAParams, bias_free_slam, dsgd_bilevel, dsoba, dsoba_gt)
from slamjax.problems.quadratic import make_quadratic  # noqa: E402

STEP_GRID = [0.01, 0.02, 0.05, 0.1]
METHODS = ["slam", "bias_free_slam", "dsoba", "dsoba_gt", "dsgd_bilevel"]
CONTROLS = ["local", "centralized"]
PROBLEMS = {"quad-shared": True, "quad-hetero": False}
GRAPHS = ["ring", "torus", "erdos_renyi"]


def graph_for(kind: str, n: int):
    if kind == "torus":
        r = int(round(math.sqrt(n)))
        if r * r != n:
            raise ValueError(f"torus needs a square n, got {n}")
        return sj.graphs.torus(r)
    return sj.make_graph(kind, n, seed=0)


def _rho(lam_max: float, eta: float) -> float:
    if lam_max <= 0:
        return 1.0
    return min(1.0, 0.8 * sj.stability_bound(lam_max, 1.0 / eta, 1.0))


def build(method: str, problem, graph):
    """(algorithm, list of params points for STEP_GRID, the graph it really runs on)."""
    points = []
    for eta in STEP_GRID:
        if method == "slam":
            points.append(dict(alpha=1 / eta, beta=1 / eta, rho=_rho(graph.lam_max, eta),
                               gamma=1.0))
        elif method == "bias_free_slam":
            points.append(dict(alpha=1 / eta, beta=1 / eta, delta=1 / eta,
                               rho=_rho(graph.lam_max, eta), gamma=1.0))
        elif method in ("dsoba", "dsoba_gt"):
            points.append(dict(lr_x=eta, lr_y=2 * eta, lr_z=2 * eta))
        elif method == "dsgd_bilevel":
            points.append(dict(lr_x=eta, lr_y=2 * eta))
    alg, P = {
        "slam": (lambda: sj.slam(problem, graph, sj.SLAMConfig("slam", solver=sj.CG(10))),
                 lambda: sj.SLAMParams.create(1.0, 1.0, 1.0, 1.0)),
        "bias_free_slam": (lambda: bias_free_slam(problem, graph),
                           lambda: BiasFreeParams.create(1.0, 1.0, 1.0, 1.0, 1.0)),
        "dsoba": (lambda: dsoba(problem, graph), lambda: DSOBAParams.create(0.1, 0.1, 0.1, 1.0)),
        "dsoba_gt": (lambda: dsoba_gt(problem, graph),
                     lambda: DSOBAGTParams.create(0.1, 0.1, 0.1)),
        "dsgd_bilevel": (lambda: dsgd_bilevel(problem, graph, inner_steps=5),
                         lambda: DSGDBilevelParams.create(0.1, 0.1)),
    }[method]
    return alg(), P(), points, graph


def first_below(steps, curve, target):
    idx = np.nonzero(curve <= target)[0]
    return float(steps[idx[0]]) if len(idx) else None


def run_case(problem, data, x0, y0, graph, method, seeds, T, log_every):
    alg, params, points, used = build(method, problem, graph)  # noqa: F841
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unstable grid points diverge and are marked
        res = sj.run(alg, params, data, x0, y0, num_steps=T, log_every=log_every, seeds=seeds,
                     grid=points, progress=False, desc=method)
    gF = np.asarray(res.history["grad_F_sq"])            # (G, S, L)
    xs = np.asarray(res.state.x)                          # (G, S, n, d_x)
    spread = np.sum((xs - xs.mean(axis=2, keepdims=True)) ** 2, axis=(2, 3)) / graph.n
    score = gF
    final = gF[..., -1] + spread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_final = np.where(np.isfinite(final).all(axis=1), final.mean(axis=1), np.inf)
    best = int(np.argmin(mean_final))
    curve = score[best].mean(axis=0)
    target = 1e-3 * float(score[best, :, 0].mean())  # on ‖∇F(1x̄)‖²
    msgs = np.asarray(res.history["messages"])[best].mean(axis=0)
    t_hit = first_below(res.steps, curve, target)
    return {
        "method": method, "graph_used": used.kind, "eta": STEP_GRID[best],
        "params": points[best], "steps": res.steps.tolist(),
        "score_mean": curve.tolist(), "score_std": score[best].std(axis=0).tolist(),
        "grad_F_sq_final": [float(gF[best, :, -1].mean()), float(gF[best, :, -1].std())],
        "spread_final": [float(spread[best].mean()), float(spread[best].std())],
        "score_final": [float(final[best].mean()), float(final[best].std())],
        "target": target, "iterations_to_target": t_hit,
        "messages_to_target": (float(np.interp(t_hit, res.steps, msgs)) if t_hit is not None
                               else None),
        "messages": msgs.tolist(),
        "grid_final_mean": [None if not np.isfinite(v) else float(v) for v in mean_final],
        "diverged_points": int(np.sum(~np.isfinite(final).all(axis=1))),
        "wall_s": res.compile_time + res.run_time,
    }


def markdown(records, args) -> str:
    lines = [f"Command: `python experiments/bilevel_suite.py{' --quick' if args.quick else ''}`"
             f" — T = {args.steps}, {len(args.seeds)} seeds, η grid {STEP_GRID}; tuned on "
             "the final ‖∇F(1x̄)‖² + spread (1/n)Σ‖x_i − x̄‖² (mean over seeds); values are "
             "mean ± std over seeds at the tuned η; target: ‖∇F(1x̄)‖² ≤ 1e-3 × its start.",
             "",
             "| problem | graph | n | method | tuned η | ‖∇F(1x̄)‖² | spread | "
             "iterations to target | messages to target |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        it = "—" if r["iterations_to_target"] is None else f"{r['iterations_to_target']:.0f}"
        ms = "—" if r["messages_to_target"] is None else f"{r['messages_to_target']:.2e}"
        lines.append(f"| {r['problem']} | {r['graph']} | {r['n']} | {r['method']} | "
                     f"{r['eta']:g} | {r['grad_F_sq_final'][0]:.2e} ± "
                     f"{r['grad_F_sq_final'][1]:.1e} | {r['spread_final'][0]:.2e} | {it} | "
                     f"{ms} |")
    return "\n".join(lines) + "\n"


def plot(records, path, n_plot):
    plt = pyplot()
    probs = sorted({r["problem"] for r in records})
    graphs = [g for g in GRAPHS if any(r["graph"] == g for r in records)]
    sel = [r for r in records if r["n"] == n_plot]
    if not sel:
        n_plot = max(r["n"] for r in records)
        sel = [r for r in records if r["n"] == n_plot]
    fig, axes = plt.subplots(len(probs), 2 * len(graphs), figsize=(4.2 * len(graphs) * 2,
                                                                     3.2 * len(probs)),
                             squeeze=False)
    for i, prob in enumerate(probs):
        for j, gk in enumerate(graphs):
            for r in sel:
                if r["problem"] != prob or r["graph"] != gk:
                    continue
                if r["graph"] in CONTROLS:
                    continue
                y = np.asarray(r["score_mean"])
                line, = axes[i, 2 * j].semilogy(r["steps"], y, label=r["method"])
                axes[i, 2 * j + 1].loglog(np.maximum(np.asarray(r["messages"]), 1), y,
                                          color=line.get_color(), label=r["method"])
                for ctl, ls in (("centralized", ":"), ("local", "--")):
                    c = [q for q in sel if q["problem"] == prob and q["graph"] == ctl
                         and q["method"] == r["method"]]
                    if c and r["method"] in ("slam", "dsoba_gt"):
                        axes[i, 2 * j].semilogy(c[0]["steps"], c[0]["score_mean"], ls,
                                                color=line.get_color(),
                                                label=f"{r['method']} {ctl}")
            axes[i, 2 * j].set_title(f"{prob}, {gk}, n={n_plot}", fontsize=9)
            axes[i, 2 * j].set_xlabel("iteration")
            axes[i, 2 * j + 1].set_xlabel("scalars sent (network total)")
            axes[i, 2 * j].set_ylabel("‖∇F(1x̄)‖² (mean of seeds)")
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quad-hetero, ring, n=16, 200 steps, 2 seeds")
    ap.add_argument("--n", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--graphs", nargs="+", default=GRAPHS, choices=GRAPHS)
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.graphs, args.steps, args.seeds = [16], ["ring"], 200, [0, 1]
        args.problems = ["quad-hetero"]
    out = Path(args.out)
    suffix = "_quick" if args.quick else ""
    log_every = max(1, args.steps // 40)
    if args.steps % log_every:
        args.steps += log_every - args.steps % log_every
    t0 = time.perf_counter()
    records = []
    for prob in args.problems:
        for n in args.n:
            problem, data, x0, y0 = make_quadratic(n, 10, 10, 1, seed=0, noise=args.noise,
                                                   homogeneous=PROBLEMS[prob])
            for gk in args.graphs + CONTROLS:
                if gk == "torus" and int(round(math.sqrt(n))) ** 2 != n:
                    print(f"skip torus at n={n} (not a square)")
                    continue
                graph = (sj.graphs.empty(n) if gk == "local" else
                         sj.graphs.complete(n) if gk == "centralized" else graph_for(gk, n))
                for method in METHODS:
                    if args.quick and gk in CONTROLS and method not in ("slam", "dsoba_gt"):
                        continue  # CI budget: controls of two methods only
                    r = run_case(problem, data, x0, y0, graph, method, args.seeds, args.steps,
                                 log_every)
                    r.update(problem=prob, graph=gk, n=n, lam_max=graph.lam_max)
                    records.append(r)
                    print(f"{prob:11s} {gk:11s} n={n:4d} {method:15s} η={r['eta']:<5g} "
                          f"final {r['score_final'][0]:.2e} ± {r['score_final'][1]:.1e}  "
                          f"to target: {r['iterations_to_target']} it, "
                          f"{r['messages_to_target']} msgs  ({r['wall_s']:.1f} s)", flush=True)
    wall = time.perf_counter() - t0
    payload = {"args": vars(args), "step_grid": STEP_GRID, "wall_s": wall,
               "heterogeneity": "quadratic linear terms b_i, p_i, t_i: common mean + N(0, 1) "
                                "per agent; quad-hetero also draws H_i, B_i per agent",
               "records": records, "machine": machine_info(extra_packages=())}
    path = write_json(out / f"bilevel_suite{suffix}.json", payload)
    md = out / f"bilevel_suite{suffix}.md"
    md.write_text(markdown(records, args))
    png = plot(records, out / f"bilevel_suite{suffix}.png", 64)
    print(f"wrote {path}, {md}, {png} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
