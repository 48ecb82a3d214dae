"""Robustness curves: SLAM, bias-free SLAM and the peers on bad networks (issue 17).

Problem: the quadratic bilevel problem of ``slamjax.problems.quadratic`` (n = 256 agents,
d_x = d_y = 5, m = 1, LL Hessian shared by the agents so that SLAM's local hypergradient is
unbiased, heterogeneous linear terms, exact oracle: the faults are the only randomness),
closed-form ‖∇F(x̄)‖². Graphs: ring (n = 256, stencil) and a sparse Erdős–Rényi graph
(p = 2 ln n / n, mean degree ≈ 11, seed 0).

Methods and steps (bilevel_suite's selection for quad-shared, η = 0.01 for every method):
``slam`` (1/α = 1/β = η, γ = 1, ρ = ½ × the stability bound ρλ_max(1 + 2γ) < 4β),
``bias_free_slam`` (the same, 1/δ = η), ``dsoba``, ``dsoba_gt`` (η_x = η_y = η_z = η),
``dsgd_bilevel`` (5 gossiped LL steps per UL step, CG(10), η_x = η_y = η).

Sweeps (one compiled program per method × graph × sweep: the fault level and the seeds are
vmapped lanes; the level is a traced argument of the fault model):

* ``p``        — symmetric i.i.d. link drops, p ∈ {0, 0.1, 0.2, 0.4, 0.6} (p = 0 is the
  fault-free run up to float32 round-off);
* ``p_oneway`` — one-directional i.i.d. drops (each direction of a link independently);
* ``b``        — b-bit stochastic quantization of every exchanged message, b ∈ {2, 3, 4, 8}
  (b = 32 = no compression is the p = 0 point), agents keep their exact value in their
  own term; ``b_ef`` — the same with error feedback (not for dsgd_bilevel, whose LL
  exchanges sit in an inner loop);
* ``q``        — stragglers (skip the whole step: no update, no messages), q ∈ {0, …, 0.6}.

Seeds (5) draw the faults; the problem instance and x0, y0 are the same. Reported after
``--steps`` steps (mean ± std over seeds): ‖∇F(x̄)‖², the consensus error ‖Ax‖² on the base
graph, the spread (1/n)Σ‖x_i − x̄‖², the share of steps whose delivered edge set was
disconnected (the monitor), and the invariant the faults may break: ‖Σ_i u_x,i‖ for SLAM and
bias-free SLAM (the dual sum, 0 without faults) and ‖Σ_i s_x,i − Σ_i d_x,i‖ for D-SOBA-GT
(the tracking invariant). Histories at 10 checkpoints are kept for the dual-sum plot.

A disconnection demo runs SLAM on the ring with a partition into 4 arcs during steps
300–399 through ``slamjax.run`` and records what the monitor reports (how long, which
components) and that the run continued. (With i.i.d. drops a ring of 256 agents is cut in
almost every step: P(connected) = P(at most one of 256 links down); the sweeps record the
share of disconnected steps as ``disconnected_frac``.)

    python experiments/network_faults.py           # full (< 20 min on 2 cores)
    python experiments/network_faults.py --quick   # n = 32, 2 seeds, 200 steps (smoke test)

Writes ``results/network_faults.json`` and ``results/network_faults.png`` (final ‖∇F‖² and
consensus against p, b, q) and ``results/network_faults_dual.png`` (‖Σu‖ against t);
``--quick`` writes ``results/network_faults_quick.*``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    # compile-bound (one program per method × graph × sweep): level 2 compiles about twice as
    # fast as JAX's default 3 (bilevel_suite measured 4.2 s vs 9.0 s per case)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=2").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import slamjax as sj  # noqa: E402
from slamjax import faults as F  # noqa: E402
from slamjax.baselines.bias_free_slam import BiasFreeParams, bias_free_slam  # noqa: E402
from slamjax.baselines.dsgd_bilevel import DSGDBilevelParams, dsgd_bilevel  # noqa: E402
from slamjax.baselines.dsoba import DSOBAParams, dsoba  # noqa: E402
from slamjax.baselines.dsoba_gt import DSOBAGTParams, dsoba_gt  # noqa: E402
from slamjax.problems.quadratic import make_quadratic  # noqa: E402
from slamjax.io import check_output_file  # noqa: E402

ETA = 0.01
METHODS = ("slam", "bias_free_slam", "dsoba", "dsoba_gt", "dsgd_bilevel")
LEVELS = {"p": [0.0, 0.1, 0.2, 0.4, 0.6], "p_oneway": [0.0, 0.1, 0.2, 0.4, 0.6],
          "b": [2, 3, 4, 8], "b_ef": [2, 3, 4, 8], "q": [0.0, 0.1, 0.2, 0.4, 0.6]}


def fault_of(sweep, level):
    if sweep == "p":
        return F.LinkDrops(level)
    if sweep == "p_oneway":
        return F.LinkDrops(level, symmetric=False)
    if sweep == "b":
        return F.Compress("quantize", bits=level)
    if sweep == "b_ef":
        return F.Compress("quantize", bits=level, error_feedback=True)
    if sweep == "q":
        return F.Stragglers(level)
    raise ValueError(sweep)


def build(method, problem, graph):
    rho = 0.5 * sj.stability_bound(graph.lam_max, 1.0 / ETA, 1.0)
    if method == "slam":
        return (sj.slam(problem, graph, sj.SLAMConfig("slam")),
                sj.SLAMParams.create(1 / ETA, 1 / ETA, rho))
    if method == "bias_free_slam":
        return (bias_free_slam(problem, graph, sj.SLAMConfig("slam")),
                BiasFreeParams.create(1 / ETA, 1 / ETA, 1 / ETA, rho))
    if method == "dsoba":
        return dsoba(problem, graph), DSOBAParams.create(ETA, ETA, ETA)
    if method == "dsoba_gt":
        return dsoba_gt(problem, graph), DSOBAGTParams.create(ETA, ETA, ETA)
    if method == "dsgd_bilevel":
        return dsgd_bilevel(problem, graph, inner_steps=5), DSGDBilevelParams.create(ETA, ETA)
    raise ValueError(method)


def invariant(inner):
    """‖Σ_i u_x,i‖ (SLAM family) or ‖Σ_i (s_x,i − d_x,i)‖ (gradient tracking), else NaN."""
    if hasattr(inner, "u_x"):
        return jnp.linalg.norm(jnp.sum(inner.u_x, axis=0))
    if hasattr(inner, "d_prev"):
        return jnp.linalg.norm(jnp.sum(inner.s[0] - inner.d_prev[0], axis=0))
    return jnp.asarray(jnp.nan, jnp.float32)


def sweep_program(method, problem, graph, data, x0, y0, sweep, steps, chunks):
    base, params = build(method, problem, graph)

    def lane(level, key):
        alg = F.with_faults(base, fault_of(sweep, level), params=params)
        state = alg.init(x0, y0, data)

        def chunk(carry, c):
            st = carry
            st = sj.iterate(alg, params, data, st, key, steps // chunks, start=st.t)
            m = sj.evaluate(alg, st, data)
            xb = jnp.mean(st.inner.x, axis=0)
            out = {"grad_F_sq": m["grad_F_sq"], "consensus_x": m["consensus_x"],
                   "spread": jnp.mean(jnp.sum((st.inner.x - xb) ** 2, axis=1)),
                   "invariant": invariant(st.inner),
                   "disconnected_frac": m["disconnected_steps"] / st.t}
            return st, out

        _, hist = jax.lax.scan(chunk, state, jnp.arange(chunks))
        return hist

    return jax.jit(jax.vmap(jax.vmap(lane, in_axes=(None, 0)), in_axes=(0, None)))


def run_case(method, kind, problem, graph, data, x0, y0, sweep, levels, seeds, steps,
             chunks):
    prog = sweep_program(method, problem, graph, data, x0, y0, sweep, steps, chunks)
    lv = jnp.asarray(levels, jnp.int32 if sweep.startswith("b") else jnp.float32)
    keys = jax.vmap(jax.random.key)(jnp.arange(seeds, dtype=jnp.uint32))
    t0 = time.perf_counter()
    hist = jax.device_get(prog(lv, keys))  # (levels, seeds, chunks) per metric
    wall = time.perf_counter() - t0
    hist = {k: np.asarray(v, float) for k, v in hist.items()
            if not np.all(np.isnan(np.asarray(v, float)))}  # no invariant for D-SOBA/DSGD
    final = {k: {"mean": np.mean(v[..., -1], axis=1).tolist(),
                 "std": np.std(v[..., -1], axis=1).tolist()} for k, v in hist.items()}
    return {"method": method, "graph": kind, "sweep": sweep, "levels": list(levels),
            "final": final,
            "history_mean": {k: np.mean(v, axis=1).tolist() for k, v in hist.items()},
            "checkpoints": [(c + 1) * (steps // chunks) for c in range(chunks)],
            "wall_s": wall}


def disconnection_demo(n, steps):
    problem, data, x0, y0 = make_quadratic(n, 5, 5, seed=0)
    graph = sj.graphs.ring(n)
    base, params = build("slam", problem, graph)
    groups = np.arange(n) * 4 // n
    start, stop = min(300, steps // 3), min(400, steps // 3 + max(steps // 10, 1))
    alg = F.with_faults(base, F.Partition(start, stop, groups))
    res = sj.run(alg, params, data, x0, y0, num_steps=steps, log_every=10, progress=False,
                 seed=0)
    rep = F.disconnection_report(res.state)
    window_logs = [int(s) for s, c in zip(res.steps, res.history["components"]) if c > 1]
    return {"partition": {"start": start, "stop": stop, "groups": 4},
            "report": {**rep, "last_components": [[c[0], c[-1], len(c)]
                                                  for c in rep["last_components"]]},
            "report_note": "last_components as [first agent, last agent, size]",
            "components_logged": res.history["components"].tolist(),
            "log_steps": res.steps.tolist(), "steps_logged_disconnected": window_logs,
            "final": res.final(), "ran_to_step": int(res.steps[-1]),
            "diverged": res.diverged_at is not None}


def plot(res, path, path_dual):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graphs = res["graphs"]
    cols = [("p", "symmetric drop rate p"), ("p_oneway", "one-directional drop rate p"),
            ("b", "bits b (dashed: error feedback)"), ("q", "straggler rate q")]
    rows = [(g, m) for g in graphs for m in ("grad_F_sq", "consensus_x")]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.0 * len(rows)),
                             squeeze=False)
    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r, (g, metric) in enumerate(rows):
        for c, (sweep, label) in enumerate(cols):
            ax = axes[r, c]
            for case in res["cases"]:
                if case["graph"] != g or case["sweep"] not in (sweep, sweep + "_ef"):
                    continue
                y = np.maximum(np.asarray(case["final"][metric]["mean"]), 1e-16)
                ax.plot(case["levels"], y, "o-" if not case["sweep"].endswith("_ef") else "s--",
                        color=colors[case["method"]], ms=3,
                        label=case["method"] if not case["sweep"].endswith("_ef") else None)
            ax.set_yscale("log")
            if sweep == "b":
                ax.set_xscale("log", base=2)
            ax.set_xlabel(label)
            ax.set_ylabel(("‖∇F(x̄)‖²" if metric == "grad_F_sq" else "consensus ‖Ax‖²")
                          + f" ({g})")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"final values after {res['steps']} steps, n = {res['n']}, mean over "
                 f"{res['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(graphs), figsize=(6 * len(graphs), 3.6), squeeze=False)
    for gi, g in enumerate(graphs):
        ax = axes[0, gi]
        for case in res["cases"]:
            if case["graph"] != g or case["method"] != "slam":
                continue
            h = np.asarray(case["history_mean"]["invariant"])  # (levels, chunks)
            t = case["checkpoints"]
            pick = {"p": 0.4, "p_oneway": 0.4, "q": 0.4, "b": 3, "b_ef": 3}[case["sweep"]]
            if pick in case["levels"]:
                i = case["levels"].index(pick)
                ax.plot(t, np.maximum(h[i], 1e-12), marker=".",
                        label=f"{case['sweep']} = {pick}")
            if case["sweep"] == "p":
                ax.plot(t, np.maximum(h[0], 1e-12), "k:", label="fault-free")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("‖Σ_i u_x,i‖ (SLAM)")
        ax.set_title(g)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_dual, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[1] / "results"
    stem = "network_faults_quick" if args.quick else "network_faults"
    out = check_output_file(args.out or root / f"{stem}.json", "--out")
    n = args.n or (32 if args.quick else 256)
    steps = args.steps or (200 if args.quick else 1000)
    seeds = args.seeds or (2 if args.quick else 5)
    methods = args.methods or (["slam", "dsoba_gt"] if args.quick else list(METHODS))
    chunks = 10
    t_all = time.perf_counter()
    problem, data, x0, y0 = make_quadratic(n, 5, 5, seed=0)
    graphs = {"ring": sj.graphs.ring(n), "erdos_renyi": sj.graphs.erdos_renyi(n, seed=0)}
    cases = []
    for kind, graph in graphs.items():
        for method in methods:
            for sweep, levels in LEVELS.items():
                if method == "dsgd_bilevel" and sweep == "b_ef":
                    continue  # EF needs top-level exchanges (F.with_faults refuses it)
                if args.quick:
                    levels = levels[::2]
                t0 = time.perf_counter()
                case = run_case(method, kind, problem, graph, data, x0, y0, sweep, levels,
                                seeds, steps, chunks)
                case["total_s"] = time.perf_counter() - t0
                cases.append(case)
                g = case["final"]["grad_F_sq"]["mean"]
                print(f"{kind:11s} {method:15s} {sweep:9s} gradF² " +
                      " ".join(f"{v:.2e}" for v in g) + f"  ({case['total_s']:.1f}s)",
                      flush=True)
    demo = disconnection_demo(n, steps)
    print("disconnection demo:", demo["report"], flush=True)
    res = {"command": "python experiments/network_faults.py" + (" --quick" if args.quick
                                                                 else ""),
           "n": n, "steps": steps, "seeds": seeds, "eta": ETA, "methods": methods,
           "graphs": list(graphs), "graph_info": {k: {"edges": g.num_edges,
                                                      "lam_max": g.lam_max}
                                                  for k, g in graphs.items()},
           "levels": LEVELS, "cases": cases, "disconnection_demo": demo,
           "wall_s": time.perf_counter() - t_all}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    plot(res, out.with_suffix(".png"), out.with_name(out.stem + "_dual.png"))
    print(f"wrote {out} ({res['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
