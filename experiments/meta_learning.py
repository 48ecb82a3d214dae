"""Decentralized meta-learning (ANIL) on MNIST with SLAM-U: paper Table 2 done right, Fig 9.

**Table 2 protocol** (issue 12; ``../shared/DESIGN.md`` §7 — a speed-up claim needs tuned
steps and bounds, not one fixed step):

* n = 1, 2, 4, 6, 8, 10 agents on an Erdős–Rényi graph (p = 2 ln n / n, seed 0); the MNIST
  training set split into n disjoint shards of 60 000/n images; minibatch 32; the
  784 → 32 (sigmoid) → 10 network of ``slamjax/problems/meta_anil.py`` (hidden layer = UL
  variable kept in consensus, output head = each agent's LL variable, L2 0.01, summed losses).
* **SLAM-U, tuned**: 1/α per n from the grid ``GRID`` = {0.01, 0.03, 0.06, 0.09, 0.125,
  0.25, 0.5} (the issue's five values and two more: in a first run with the grid ending at
  0.25 the SGD oracle's best step was that edge at n = 8 and 10, Adam's at 0.032 likewise);
  ρ/α = 0.1 fixed (the paper-step run's ratio, ρ = 10 at α = 100: it keeps the stability
  margin ρ(1+2γ)λ_max(L) < 4α), γ = 1, 1/β = 0.1 fixed; eq. (23) by a 10-term Neumann series
  (η = 1/320); **one minibatch per agent and iteration** shared by the LL step and the
  hypergradient (``SLAMConfig(minibatches=1)``), so 32 samples per agent and iteration, counted
  from the algorithm's ``minibatches`` counter.
* **Selection**: every grid point runs on the selection seeds {0, 1, 2} (one program per n:
  grid × seeds as lanes); the point with the smallest seed-mean samples-to-threshold wins; a
  run stops as soon as no unfinished point can still beat the best finished one (its lower
  bound already exceeds it). **Report**: the chosen point on five fresh seeds {3, …, 7}, so
  the reported numbers are not the ones the choice was made on.
* **SLAM-U at the paper's steps** (α = 100, β = 10, ρ = 10, γ = 1: 1/α = 0.01), report seeds.
* **Centralized oracle** (the lower bound): exact averaging of all n agents' minibatches —
  one model trained on batches of 32·n drawn from the whole training set with the loss scale
  of one agent (the mean of the n agents' summed 32-sample losses), i.e. what perfect
  consensus could do per iteration. *SGD*: body step from ``GRID``, head step 0.1 (SLAM-U's
  1/β); *Adam*: one learning rate from ``ADAM_GRID`` = {0.001, …, 0.064} (factors of 2) for
  both layers
  (:func:`slamjax.baselines.dsgd` with ``optimizer="adam"`` on one agent). Same selection
  and report seeds. Samples per agent = iterations × 32.
* **Decentralized SGD** (a peer on the same graph): every parameter gossiped with the
  Metropolis matrix, no bilevel split (:func:`slamjax.baselines.dsgd`), body step from
  ``GRID``, head step 0.1, tuned and reported like SLAM-U — what decentralization costs
  another method on this graph.
* **Agent alone** (no collaboration): SLAM-U on one agent holding only agent 0's shard of the
  n-split (60 000/n images), 1/α from ``GRID``; at n = 1 it is the tuned SLAM-U run itself.
* **Accuracy**: the network's model — the average hidden layer x̄ with the average head ȳ
  (``test_acc_avg``; the head is linear, so ȳ averages the agents' logits; a final gossip
  average gives it to every agent) — on the 10 000 test images. Why not each agent's own head:
  heads are never communicated, so each is trained on its own 32-sample minibatches at the
  fixed 1/β whatever n is; its noise does not shrink with n and x̄ with one agent's head
  plateaus near 92–93 % at n = 10 (measured), so that metric cannot show a speed-up in n by
  construction. Theorem 1 measures stationarity of F(x̄) = f(x̄, y*(x̄)), and ȳ is the network's
  estimate of y*(x̄). The crossing with the agents' own heads (``test_acc``) is reported beside
  it. The oracle and the lone agent have one model.
* **Samples to 93.5 %**: first crossing of the threshold, linearly interpolated between logs;
  accuracy logged every 4 iterations (128 samples, the paper's unit) in the reported runs and
  every 16 in the selection runs (ranking only); runs capped at ``--max-steps`` iterations.

Why this protocol (issue 12, measured before it was written): at a fixed UL step the network
average behaves like SGD with batch 32·n at that step, optimisation rather than gradient noise
limits progress, and samples per agent barely fall with n; even the oracle gains only 2–4×
from n = 2 to 10, so the paper's 9.5× is not a yardstick — the tuned oracle is.

Other readings of the paper (kept from the first reproduction): losses summed over the
minibatch (with per-sample means the 0.01 regulariser caps the net below 93.5 %); Neumann
instead of exact per-minibatch solves (those amplify noise along directions held only by the
regulariser and collapse); "128 data samples" read as the paper's unit of progress (literally
128 images per agent plateau at 81–85 %).

**Fig 9** (``--fig9``): SLAM-U at n = 4 with α, β, ρ at the paper's values, halved and one
tenth (two independent minibatches per iteration, as the paper's Algorithm 3), with the
single-agent and decentralized-SGD references.

    python experiments/meta_learning.py            # Table 2 (≈ 15–20 min on 2 cores)
    python experiments/meta_learning.py --quick    # smoke run, *_quick files
    python experiments/meta_learning.py --fig9     # Fig 9
    python experiments/meta_learning.py --replot   # figures + Markdown from the JSON
    slamjax reproduce table2 | fig9                # the same through the CLI

Writes ``results/table2.json`` (everything), ``results/table2_summary.json`` (lists aligned on
``"n"``), ``results/table2.md``, ``results/table2.png`` (samples vs n, speed-up vs n) and
``results/fig8a.png`` (accuracy curves); ``--out DIR`` writes to DIR.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

# XLA's backend optimisation level 2 (JAX's default is 3) roughly halves compile time, which
# is a large part of this study (one program per method, n and phase) at equal run time.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=2").strip()
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common (also when run via runpy)
from _common import RESULTS, ROOT, machine_info, pyplot, save_figure  # noqa: E402

if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import slamjax as sj  # noqa: E402
from slamjax.baselines import DSGDParams, dsgd  # noqa: E402
from slamjax.problem import ProblemData  # noqa: E402
from slamjax.problems import meta_anil as MA  # noqa: E402
from slamjax.problems.meta_anil import (crossing_stats, first_crossing,  # noqa: E402
                                        loglog_slope)

#: paper Table 2: samples passed (per agent) until 93.5 % test accuracy
PAPER_TABLE2 = {2: 62976, 4: 30336, 6: 19328, 8: 12672, 10: 6656}
THRESHOLD = MA.PAPER_THRESHOLD  # 0.935
STANDARD = dict(alpha=100.0, beta=10.0, rho=10.0, gamma=1.0)   # the paper's steps
SOLVER = sj.Neumann(K=10, eta=1.0 / 320.0)
#: 1/α of SLAM-U and the lone agent, body step of the SGD oracle
GRID = (0.01, 0.03, 0.06, 0.09, 0.125, 0.25, 0.5)
#: Adam learning rates of the Adam oracle
ADAM_GRID = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2)
RHO_OVER_ALPHA = STANDARD["rho"] / STANDARD["alpha"]
HEAD_STEP = 1.0 / STANDARD["beta"]
SELECT_SEEDS = (0, 1, 2)
REPORT_SEEDS = (3, 4, 5, 6, 7)
METRIC = "test_acc_avg"      # the network's model x̄, ȳ (module doc)
OWN_HEADS = "test_acc"       # x̄ with each agent's own head, mean over agents
METHODS = ("slam_u", "slam_u_paper", "dsgd", "oracle_sgd", "oracle_adam", "alone")
LABELS = {"slam_u": "SLAM-U, 1/α tuned per n",
          "slam_u_paper": "SLAM-U, paper's steps (1/α = 0.01)",
          "dsgd": "decentralized SGD, same graph (tuned)",
          "oracle_sgd": "centralized oracle, SGD (tuned)",
          "oracle_adam": "centralized oracle, Adam (tuned)",
          "alone": "one agent alone on its shard (tuned)"}


def slam_point(inv_alpha: float) -> dict:
    """SLAM-U parameters for a UL step 1/α with ρ/α and 1/β held at the paper's values."""
    alpha = 1.0 / float(inv_alpha)
    return dict(alpha=alpha, beta=STANDARD["beta"], rho=RHO_OVER_ALPHA * alpha,
                gamma=STANDARD["gamma"])


# ----------------------------------------------------------------------------------------
# runs: seeds × grid points as lanes of one compiled program (slamjax.run), stopped early
# ----------------------------------------------------------------------------------------
def _starts(n, seeds):
    """x0, y0 with a leading seed axis: one flax initialisation per seed (batched_init); the
    same seed gives the same network to every method, so methods are paired by seed."""
    inits = [MA.init_params(n, s) for s in seeds]
    return tuple(jax.tree.map(lambda *a: jnp.stack(a), *[i[k] for i in inits]) for k in (0, 1))


def _crossings(steps, rows, threshold):
    return np.array([first_crossing(steps, r, threshold) for r in rows], float)


def selection_stop(num_points, num_seeds, threshold=THRESHOLD, metric=METRIC):
    """:func:`slamjax.problems.meta_anil.selection_stop` on this experiment's metric."""
    return MA.selection_stop(num_points, num_seeds, threshold, metric)


def all_crossed_stop(threshold=THRESHOLD, metric=METRIC):
    """:func:`slamjax.problems.meta_anil.all_crossed_stop` on this experiment's metric."""
    return MA.all_crossed_stop(threshold, metric)


def run_lanes(alg, params0, data, num_agents, seeds, grid, *, max_steps, log_every, stop,
              desc="", progress=True, logs_per_chunk=None):
    """``sj.run`` of ``alg`` over ``grid`` (list of param dicts) × ``seeds``; returns
    ``(steps, history, info)`` with history arrays (points·seeds, logs) in grid-major order,
    lanes that diverged (NaN/Inf) listed in ``info["diverged"]``."""
    t0 = time.perf_counter()
    x0, y0 = _starts(num_agents, seeds)
    chunk = logs_per_chunk or max(1, 96 // log_every)
    steps_cap = int(math.ceil(max_steps / (log_every * chunk)) * log_every * chunk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.DivergenceWarning)  # recorded in info instead
        res = sj.run(alg, params0, data, x0, y0, num_steps=steps_cap, log_every=log_every,
                     seeds=list(seeds), grid=list(grid), batched_init=True, progress=progress,
                     desc=desc or None, logs_per_chunk=chunk, callback=stop)
    hist = {k: np.asarray(v).reshape(-1, np.shape(v)[-1]) for k, v in res.history.items()}
    div = (np.zeros(len(grid) * len(seeds), bool) if res.diverged_at is None
           else (np.asarray(res.diverged_at).reshape(-1) >= 0))
    info = {"wall_s": time.perf_counter() - t0, "compile_s": res.compile_time,
            "run_s": res.run_time, "steps_run": int(res.num_steps),
            "diverged": np.nonzero(div)[0].tolist(), "lanes": len(grid) * len(seeds),
            "log_every": log_every}
    return np.asarray(res.steps), hist, info


def drawn_per_agent_iteration(steps, hist, lane_batch, num_logical):
    """Samples per (logical) agent and iteration as drawn, from the algorithm's ``minibatches``
    counter (minibatches drawn over the whole lane): counter / steps × lane batch / n."""
    mb = np.asarray(hist["minibatches"], float)[0, -1]
    return float(mb / max(float(steps[-1]), 1.0) * lane_batch / num_logical)


# ----------------------------------------------------------------------------------------
# the methods of one n: (algorithm, params, data, agents in a lane, grid, lane batch)
# ----------------------------------------------------------------------------------------
GRAPHS = ("erdos_renyi", "complete", "ring")


def _graph(n, kind="erdos_renyi"):
    """The communication graph: Erdős–Rényi p = 2 ln n / n, seed 0 (default), or the
    complete graph / ring (``--graph``) to see what the topology does."""
    if kind == "complete" and n > 1:
        return sj.graphs.complete(n)
    if kind == "ring" and n >= 3:
        return sj.graphs.ring(n)
    return sj.graphs.erdos_renyi(n, seed=0)


def method_specs(n, arrays, args):
    """Everything to run at ``n``, built (and every size checked) before anything compiles."""
    batch = args.batch
    problem, data, _, _ = MA.make_meta_anil(n, None, batch, arrays=arrays,
                                            test_size=args.test_size, local_test=0)
    graph = _graph(n, args.graph)
    slam_alg = sj.slam(problem, graph, sj.SLAMConfig("slam_u", solver=SOLVER, minibatches=1))
    slam_grid = [slam_point(a) for a in args.grid]
    p0 = sj.SLAMParams.create(**slam_grid[0])
    specs = {
        "slam_u": dict(alg=slam_alg, params=p0, data=data, agents=n, grid=slam_grid,
                       values=list(args.grid), lane_batch=batch, logical=n, graph=graph),
        "slam_u_paper": dict(alg=slam_alg, params=p0, data=data, agents=n,
                             grid=[dict(STANDARD)], values=[1.0 / STANDARD["alpha"]],
                             lane_batch=batch, logical=n, graph=graph, tune=False),
    }
    if n > 1:  # the decentralized peer: every parameter gossiped (Metropolis W), no split
        specs["dsgd"] = dict(
            alg=dsgd(problem, graph), params=DSGDParams.create(args.grid[0], HEAD_STEP),
            data=data, agents=n, grid=[{"lr_x": a, "lr_y": HEAD_STEP} for a in args.grid],
            values=list(args.grid), lane_batch=batch, logical=n, graph=graph)
    if {"oracle_sgd", "oracle_adam"} & set(args.methods):
        o_problem, o_data, _, _ = MA.make_meta_anil(1, None, batch * n, arrays=arrays,
                                                    test_size=args.test_size, local_test=0,
                                                    loss_scale=float(batch))
        g1 = _graph(1)
        specs["oracle_sgd"] = dict(
            alg=dsgd(o_problem, g1), params=DSGDParams.create(args.grid[0], HEAD_STEP),
            data=o_data, agents=1, grid=[{"lr_x": a, "lr_y": HEAD_STEP} for a in args.grid],
            values=list(args.grid), lane_batch=batch * n, logical=n, graph=g1)
        specs["oracle_adam"] = dict(
            alg=dsgd(o_problem, g1, optimizer="adam"),
            params=DSGDParams.create(args.adam_grid[0], args.adam_grid[0]), data=o_data,
            agents=1, grid=[{"lr_x": a, "lr_y": a} for a in args.adam_grid],
            values=list(args.adam_grid), lane_batch=batch * n, logical=n, graph=g1)
    if n > 1:  # at n = 1 the lone agent is the tuned SLAM-U run
        shard = ProblemData(shared=data.shared,
                            agents=jax.tree.map(lambda a: a[:1], data.agents))
        g1 = _graph(1)
        specs["alone"] = dict(
            alg=sj.slam(problem, g1, sj.SLAMConfig("slam_u", solver=SOLVER, minibatches=1)),
            params=p0, data=shard, agents=1, grid=slam_grid, values=list(args.grid),
            lane_batch=batch, logical=1, graph=g1)
    return {k: v for k, v in specs.items() if k in args.methods}


def tune_and_report(name, spec, args, n):
    """Selection on ``args.select_seeds`` (all grid points, one program, decided-early stop),
    then the chosen point on ``args.report_seeds``; returns the method's record."""
    rec = {"label": LABELS[name], "grid": spec["values"]}
    kw = dict(progress=args.progress)
    per_iter = None
    if spec.get("tune", True) and len(spec["grid"]) > 1:
        S = len(args.select_seeds)
        steps, hist, info = run_lanes(
            spec["alg"], spec["params"], spec["data"], spec["agents"], args.select_seeds,
            spec["grid"], max_steps=args.max_steps, log_every=args.select_log_every,
            stop=selection_stop(len(spec["grid"]), S, args.threshold),
            desc=f"n={n} {name} select", **kw)
        per_iter = drawn_per_agent_iteration(steps, hist, spec["lane_batch"], spec["logical"])
        c = _crossings(steps, hist[METRIC], args.threshold)
        c[info["diverged"]] = np.nan
        c = c.reshape(len(spec["grid"]), S)
        means = [float(r.mean()) * per_iter if np.isfinite(r).all() else None for r in c]
        final = np.asarray(hist[METRIC], float)[:, -1].reshape(len(spec["grid"]), S).mean(1)
        if any(m is not None for m in means):
            best = int(np.nanargmin([m if m is not None else np.nan for m in means]))
        else:  # nothing reached the threshold on every selection seed: best final accuracy
            best = int(np.argmax(final))
        rec["selection"] = {"seeds": list(args.select_seeds), "samples_mean": means,
                            "reached": np.isfinite(c).sum(1).tolist(),
                            "final_acc": final.tolist(), "timing": info,
                            "all_reached": any(m is not None for m in means)}
    else:
        best = 0
    rec["chosen"] = spec["values"][best]
    rec["chosen_params"] = spec["grid"][best]
    steps, hist, info = run_lanes(
        spec["alg"], spec["params"], spec["data"], spec["agents"], args.report_seeds,
        [spec["grid"][best]], max_steps=args.max_steps, log_every=args.log_every,
        stop=all_crossed_stop(args.threshold), desc=f"n={n} {name} report", **kw)
    drawn = drawn_per_agent_iteration(steps, hist, spec["lane_batch"], spec["logical"])
    if per_iter is not None and abs(per_iter - drawn) > 1e-6 * drawn:
        raise AssertionError(f"{name}: samples per iteration differ between runs "
                             f"({per_iter} vs {drawn})")
    rec["samples_per_iteration"] = drawn
    st = crossing_stats(steps, hist[METRIC], 1, args.threshold)
    for lane in info["diverged"]:
        st["iterations"][lane] = float("nan")
    rec["report"] = _samples(st, drawn)
    if OWN_HEADS in hist and spec["agents"] > 1:
        rec["own_heads"] = _samples(crossing_stats(steps, hist[OWN_HEADS], 1, args.threshold),
                                    drawn)
    acc = np.asarray(hist[METRIC], float)
    rec["curve"] = {"samples": (np.asarray(steps) * drawn).tolist(),
                    "mean": acc.mean(0).tolist(), "std": acc.std(0).tolist()}
    if "consensus_x" in hist:
        rec["final_consensus_x"] = float(np.mean(np.asarray(hist["consensus_x"])[:, -1]))
    rec["timing"] = info
    return rec


def _samples(st, per_iter):
    """crossing_stats (in iterations) → samples per agent: mean, std (ddof 1), reached."""
    it = np.asarray(st["iterations"], float)
    s = it * per_iter
    ok = np.isfinite(s)
    return {"iterations": it.tolist(), "samples": s.tolist(), "reached": int(ok.sum()),
            "seeds": int(len(s)), "mean": float(s[ok].mean()) if ok.all() else None,
            "mean_reached": float(s[ok].mean()) if ok.any() else None,
            "std": float(s[ok].std(ddof=1)) if ok.all() and ok.sum() > 1 else None}


def table2(args, arrays):
    t_start = time.perf_counter()
    specs = {n: method_specs(n, arrays, args) for n in args.ns}   # all checks first
    res = {"per_n": {}}
    for n in args.ns:
        res["per_n"][str(n)] = rn = {"graph": repr(specs[n]["slam_u"]["graph"])
                                     if "slam_u" in specs[n] else None,
                                     "per_agent_images": 60000 // n}
        print(f"n={n}: {rn['graph']}, {rn['per_agent_images']} images per agent", flush=True)
        for name in METHODS:
            if name not in specs[n]:
                continue
            t0 = time.perf_counter()
            rec = tune_and_report(name, specs[n][name], args, n)
            rn[name] = rec
            r = rec["report"]
            print(f"  {name:<13s} chosen {rec['chosen']:g}: samples to {args.threshold:.1%} "
                  + (f"{r['mean']:,.0f} ± {r['std'] or 0:,.0f}" if r["mean"] else
                     f"reached on {r['reached']}/{r['seeds']} seeds")
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if n == 1 and "slam_u" in rn and "alone" in args.methods:
            rn["alone"] = dict(rn["slam_u"], label=LABELS["alone"], same_as="slam_u")
        if n == 1 and "oracle_sgd" in rn and "dsgd" in args.methods:
            # one agent: decentralized SGD is SGD with batch 32 — the oracle's run
            rn["dsgd"] = dict(rn["oracle_sgd"], label=LABELS["dsgd"], same_as="oracle_sgd")
    res["summary"] = summarize(res, args)
    res["wall_time_s"] = time.perf_counter() - t_start
    return res


def _mean(res, n, name, key="mean"):
    rec = res["per_n"][str(n)].get(name)
    return None if rec is None else rec["report"].get(key)


def summarize(res, args):
    """Lists aligned on ``n`` (``results/table2_summary.json``) and the must-show checks."""
    ns = [int(n) for n in res["per_n"]]
    col = lambda name, key="mean": [_mean(res, n, name, key) for n in ns]  # noqa: E731
    slam, sgd, adam = col("slam_u"), col("oracle_sgd"), col("oracle_adam")
    oracle = [min([v for v in (a, b) if v is not None], default=None) for a, b in zip(sgd, adam)]
    eff = lambda o: [None if a is None or b is None else b / a  # noqa: E731
                     for a, b in zip(slam, o)]
    base = dict(zip(ns, slam)).get(1)
    # speed-ups use the mean over the seeds that reached the threshold where not all did
    # (flagged in "partial"; such a mean is optimistic for that entry)
    reach = lambda name: [v if v is not None else r for v, r in  # noqa: E731
                          zip(col(name), col(name, "mean_reached"))]
    speed = lambda vals: [None if v is None or vals[0] is None or ns[0] != 1  # noqa: E731
                          else vals[0] / v for v in vals]
    out = {"n": ns, "threshold": args.threshold, "metric": METRIC,
           "slam_u_samples_mean": slam, "slam_u_samples_std": col("slam_u", "std"),
           "slam_u_step": [(res["per_n"][str(n)].get("slam_u") or {}).get("chosen") for n in ns],
           "slam_u_paper_steps_samples_mean": col("slam_u_paper"),
           "slam_u_paper_steps_samples_std": col("slam_u_paper", "std"),
           "slam_u_own_heads_samples_mean": [
               ((res["per_n"][str(n)].get("slam_u") or {}).get("own_heads") or {}).get("mean")
               for n in ns],
           "dsgd_samples_mean": col("dsgd"), "dsgd_samples_std": col("dsgd", "std"),
           "oracle_samples_mean": oracle,
           "oracle_sgd_samples_mean": sgd, "oracle_sgd_samples_std": col("oracle_sgd", "std"),
           "oracle_adam_samples_mean": adam,
           "oracle_adam_samples_std": col("oracle_adam", "std"),
           "alone_samples_mean": col("alone"), "alone_samples_std": col("alone", "std"),
           "paper": [PAPER_TABLE2.get(n) for n in ns],
           "efficiency_vs_oracle": eff(oracle), "efficiency_vs_sgd_oracle": eff(sgd),
           "efficiency_vs_adam_oracle": eff(adam),
           "speedup_slam_u": speed(reach("slam_u")),
           "speedup_oracle_sgd": speed(reach("oracle_sgd")),
           "speedup_oracle_adam": speed(reach("oracle_adam")),
           "speedup_dsgd": speed(reach("dsgd")), "speedup_alone": speed(reach("alone")),
           "samples_mean_reached": {m: col(m, "mean_reached") for m in METHODS},
           "partial": {m: [v is None and r is not None for v, r in
                           zip(col(m), col(m, "mean_reached"))] for m in METHODS}}
    valid = [v for v in slam if v is not None]
    out["monotone"] = bool(len(valid) == len(slam) and np.all(np.diff(slam) < 0)) \
        if len(slam) > 1 else None
    out["slope_slam_u"] = loglog_slope(ns, [np.nan if v is None else v for v in slam])[0]
    out["slope_oracle_sgd"] = loglog_slope(ns, [np.nan if v is None else v for v in sgd])[0]
    pn = sorted(PAPER_TABLE2)
    out["slope_paper"] = loglog_slope(pn, [PAPER_TABLE2[k] for k in pn])[0]
    if 2 in ns and 10 in ns:
        i2, i10 = ns.index(2), ns.index(10)
        ratio = lambda v: None if v[i2] is None or v[i10] is None else v[i2] / v[i10]  # noqa
        out["speedup_2_to_10"] = {"slam_u": ratio(slam), "oracle_sgd": ratio(sgd),
                                  "oracle_adam": ratio(adam),
                                  "paper": PAPER_TABLE2[2] / PAPER_TABLE2[10]}
    if base is not None and 10 in ns:
        out["speedup_1_to_10"] = {k: v[ns.index(10)] for k, v in (
            ("slam_u", out["speedup_slam_u"]), ("oracle_sgd", out["speedup_oracle_sgd"]),
            ("oracle_adam", out["speedup_oracle_adam"]))}
    return out


# ----------------------------------------------------------------------------------------
# figures and the Markdown table
# ----------------------------------------------------------------------------------------
STYLE = {"slam_u": ("tab:blue", "o", "-"), "slam_u_paper": ("tab:cyan", "s", "--"),
         "dsgd": ("tab:green", "^", "-."),
         "oracle_sgd": ("k", "D", "-"), "oracle_adam": ("0.45", "v", "-"),
         "alone": ("tab:red", "x", ":")}
COLORS = {1: "tab:gray", 2: "tab:blue", 4: "tab:orange", 6: "tab:green", 8: "tab:red",
          10: "tab:purple"}


def plot_table2(res, path):
    """(a) samples per agent to the threshold against n, log-log, mean ± std over the report
    seeds; (b) speed-up over n = 1 against the oracles' and linear."""
    plt = pyplot()
    s = res["summary"]
    ns = np.asarray(s["n"], float)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for name, key in (("slam_u", "slam_u"), ("slam_u_paper", "slam_u_paper_steps"),
                      ("dsgd", "dsgd"),
                      ("oracle_sgd", "oracle_sgd"), ("oracle_adam", "oracle_adam"),
                      ("alone", "alone")):
        m = s.get(f"{key}_samples_mean")
        if not m or all(v is None for v in m) and not any(s["partial"].get(name, [])):
            continue
        part = np.array(s["partial"].get(name, [False] * len(m)), bool)
        m = np.array([np.nan if v is None else v for v in m], float)
        m[part] = np.array([np.nan if v is None else v for v in
                            s["samples_mean_reached"][name]], float)[part]
        sd = np.array([np.nan if v is None else v for v in (s.get(f"{key}_samples_std") or
                                                             [None] * len(m))], float)
        c, mk, ls = STYLE[name]
        ax.errorbar(ns, m, yerr=np.nan_to_num(sd), color=c, marker=mk, ls=ls, capsize=3,
                    mfc="w" if name != "slam_u" else c, label=LABELS[name])
        for x, v in zip(ns[part], m[part]):  # not every seed reached the threshold
            ax.plot([x], [v], marker="o", ms=13, mfc="none", mec="r", mew=1.2, ls="none")
    ax.plot([], [], marker="o", ms=11, mfc="none", mec="r", ls="none",
            label="circled: some seeds never reached it (mean of those that did)")
    pn = np.array(sorted(PAPER_TABLE2))
    ax.plot(pn, [PAPER_TABLE2[k] for k in pn], "*", color="goldenrod", ms=13, mec="k",
            mew=0.6, ls="-", lw=0.8, label=f"paper, Table 2 (slope {s['slope_paper']:.2f})")
    m1 = s["slam_u_samples_mean"][0] if s["n"][0] == 1 else None
    if m1:
        xx = np.linspace(1, ns.max(), 50)
        ax.plot(xx, m1 / xx, color="tab:blue", lw=0.8, ls=":",
                label="slope −1 from SLAM-U's n = 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([f"{int(v)}" for v in ns])
    ax.minorticks_off()
    yt = [2e3, 5e3, 1e4, 2e4, 5e4, 1e5]
    ax.set_yticks(yt)
    ax.set_yticklabels([f"{v / 1e3:g}k" for v in yt])
    ax.set_xlabel("number of agents n")
    ax.set_ylabel(f"samples per agent to {s['threshold']:.1%} test accuracy")
    ax.set_title("(a) samples to the threshold (mean ± std over 5 report seeds)",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="lower left")

    for name, key in (("slam_u", "speedup_slam_u"), ("dsgd", "speedup_dsgd"),
                      ("oracle_sgd", "speedup_oracle_sgd"),
                      ("oracle_adam", "speedup_oracle_adam"), ("alone", "speedup_alone")):
        v = s.get(key)
        if not v or all(x is None for x in v):
            continue
        c, mk, ls = STYLE[name]
        bx.plot(ns, [np.nan if x is None else x for x in v], color=c, marker=mk, ls=ls,
                label=LABELS[name])
    if 2 in PAPER_TABLE2:
        pp = [2.0 * PAPER_TABLE2[2] / PAPER_TABLE2[k] for k in pn]
        bx.plot(pn, pp, "*", color="goldenrod", ms=12, mec="k", mew=0.6, ls="-", lw=0.8,
                label="paper: 2·T(2)/T(n) (no n = 1 entry; assumes ×2 from 1 to 2)")
    bx.plot(ns, ns, color="0.6", lw=1, ls="--", label="linear (= n)")
    bx.set_xlabel("number of agents n")
    bx.set_ylabel("speed-up over n = 1 (samples per agent)")
    bx.set_title("(b) speed-up against the oracle's", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7.5, loc="upper left")
    fig.suptitle("Table 2 on MNIST (ANIL, SLAM-U; Erdős–Rényi graph, 60 000/n images per "
                 "agent, batch 32; steps tuned per n on selection seeds, reported on fresh "
                 "ones)", fontsize=10)
    return save_figure(fig, path, dpi=120)


def plot_fig8a(res, path):
    """Accuracy of the network model against samples per agent: SLAM-U (tuned) per n with
    ±1 std bands over the report seeds, the oracle (SGD) at the largest n dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    nmax = max(int(n) for n in res["per_n"])
    for n, rn in res["per_n"].items():
        n = int(n)
        for name, ls in (("slam_u", "-"), ("oracle_sgd", "--")):
            rec = rn.get(name)
            if rec is None or (name == "oracle_sgd" and n != nmax):
                continue
            x = np.asarray(rec["curve"]["samples"]) / 1e3
            m, sd = np.asarray(rec["curve"]["mean"]), np.asarray(rec["curve"]["std"])
            lab = (f"SLAM-U n={n} (1/α={rec['chosen']:g})" if name == "slam_u"
                   else f"oracle SGD n={n}")
            line, = ax.plot(x, m, ls=ls, color=COLORS.get(n), lw=1.4, label=lab)
            ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.15, lw=0)
        if n in PAPER_TABLE2:
            ax.plot(PAPER_TABLE2[n] / 1e3, THRESHOLD, marker="*", ms=12, ls="none",
                    color=COLORS.get(n), mec="k", mew=0.6)
    ax.plot([], [], marker="*", ms=12, ls="none", color="w", mec="k", label="paper, Table 2")
    ax.axhline(THRESHOLD, color="k", lw=0.8, ls="-.")
    ax.set_ylim(0.85, 0.96)
    ax.set_xlabel("samples drawn per agent (×10³)")
    ax.set_ylabel("test accuracy of the network model (x̄, ȳ)")
    ax.set_title("Fig. 8(a): SLAM-U with the step tuned per n (report seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, ncol=2, loc="lower right")
    return save_figure(fig, path, dpi=120)


def _fmt(st):
    if not st or st.get("mean") is None:
        if st and st.get("reached"):
            return (f"{st['mean_reached']:,.0f} on the {st['reached']}/{st['seeds']} seeds "
                    "that reached it")
        return "not reached"
    spread = f" ± {st['std']:,.0f}" if st.get("std") is not None else ""
    return f"{st['mean']:,.0f}{spread}"


def _num(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def table2_markdown(res, args) -> str:
    s = res["summary"]
    L = [f"### Table 2 — samples drawn per agent until {s['threshold']:.1%} test accuracy "
         f"(network model x̄, ȳ; mean ± std over {len(args.report_seeds)} report seeds)", "",
         "| n | paper | SLAM-U tuned (1/α) | SLAM-U paper steps | DSGD (step) | "
         "oracle SGD (step) | oracle Adam (lr) | alone (1/α) | efficiency vs SGD / Adam "
         "oracle | SLAM-U own heads |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, n in enumerate(s["n"]):
        rn = res["per_n"][str(n)]

        def cell(name):
            rec = rn.get(name)
            if rec is None:
                return "–"
            ch = "" if name == "slam_u_paper" else f" ({rec['chosen']:g})"
            return _fmt(rec["report"]) + ch
        own = (rn.get("slam_u") or {}).get("own_heads")
        paper = PAPER_TABLE2.get(n)
        L.append(f"| {n} | {'–' if paper is None else f'{paper:,}'} | {cell('slam_u')} | "
                 f"{cell('slam_u_paper')} | {cell('dsgd')} | {cell('oracle_sgd')} | "
                 f"{cell('oracle_adam')} | "
                 f"{cell('alone')} | {_num(s['efficiency_vs_sgd_oracle'][i])} / "
                 f"{_num(s['efficiency_vs_adam_oracle'][i])} | "
                 f"{_fmt(own) if own else '(= network model)'} |")
    L += ["", f"Monotone decrease of SLAM-U (tuned): **{'yes' if s['monotone'] else 'no'}**; "
          f"log-log slope SLAM-U {_num(s['slope_slam_u'])}, oracle SGD "
          f"{_num(s['slope_oracle_sgd'])}, paper {_num(s['slope_paper'])} (linear: −1)."]
    if s.get("speedup_1_to_10"):
        u = s["speedup_1_to_10"]
        L.append(f"Speed-up n = 1 → 10: SLAM-U {_num(u['slam_u'])}×, oracle SGD "
                 f"{_num(u['oracle_sgd'])}×, oracle Adam {_num(u['oracle_adam'])}×.")
    if s.get("speedup_2_to_10"):
        u = s["speedup_2_to_10"]
        L.append(f"Speed-up n = 2 → 10: SLAM-U {_num(u['slam_u'])}×, oracle SGD "
                 f"{_num(u['oracle_sgd'])}×, oracle Adam {_num(u['oracle_adam'])}×, paper "
                 f"{_num(u['paper'])}× (linear: 5×).")
    L += ["", "Efficiency = oracle samples / SLAM-U samples (1 = as good as perfect averaging). "
          f"Steps chosen on seeds {list(args.select_seeds)} from 1/α ∈ {list(args.grid)} "
          f"(SLAM-U, lone agent; body step of the SGD oracle, head step {HEAD_STEP:g}) and "
          f"lr ∈ {list(args.adam_grid)} (Adam); ρ/α = {RHO_OVER_ALPHA:g}, γ = 1, 1/β = "
          f"{HEAD_STEP:g}; {SOLVER}; one minibatch of {args.batch} per agent and iteration; "
          f"graph {res.get('config', {}).get('graph', 'erdos_renyi')}. Wall time {res['wall_time_s'] / 60:.1f} min "
          f"({_cores(res['machine'])} CPUs, jax {jax.__version__})."]
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------------------
# Fig 9: sensitivity to α, β, ρ at the paper's steps (unchanged protocol of the first
# reproduction: two minibatches per iteration, x̄ with each agent's own head)
# ----------------------------------------------------------------------------------------
FIG9_METRIC = OWN_HEADS
REF_STYLE = {"single": ("tab:brown", ":"), "dsgd": ("k", "--")}


def _band(ax, x, rows, label, color=None, ls="-", lw=1.6):
    rows = np.asarray(rows, float)
    m, s = rows.mean(0), rows.std(0)
    line, = ax.plot(x, m, ls=ls, color=color, lw=lw, label=label)
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.18, lw=0)
    return line


def fig9(args, arrays):
    t_start = time.perf_counter()
    n, seeds = args.fig9_n, list(range(args.seeds))
    problem, data, _, _ = MA.make_meta_anil(n, None, args.batch, arrays=arrays,
                                            test_size=args.test_size, local_test=0)
    graph = _graph(n)
    std = dict(STANDARD)
    sets = [("standard", "standard", dict(std), "standard (α=%g, β=%g, ρ=%g)"
             % (std["alpha"], std["beta"], std["rho"]))]
    for key, sym in (("alpha", "UL step"), ("beta", "LL step")):
        for f, word in ((2.0, "halved"), (10.0, "one tenth")):
            sets.append((f"{key}_x{f:g}", key, {**std, key: std[key] * f},
                         f"{sym} {word} ({'α' if key == 'alpha' else 'β'}={std[key] * f:g})"))
    for f, word in ((0.5, "halved"), (0.1, "one tenth")):
        sets.append((f"rho_x{f:g}", "rho", {**std, "rho": std["rho"] * f},
                     f"ρ {word} (ρ={std['rho'] * f:g})"))
    print(f"Fig 9: SLAM-U n={n}, {len(sets)} parameter sets × {len(seeds)} seeds in one "
          f"program; {graph!r}", flush=True)
    cfg = sj.SLAMConfig("slam_u", solver=SOLVER)
    kw = dict(max_steps=args.max_steps, log_every=args.log_every, stop=None,
              progress=args.progress, logs_per_chunk=args.logs_per_chunk)
    steps, hist, tm = run_lanes(sj.slam(problem, graph, cfg), sj.SLAMParams.create(**std),
                                data, n, seeds, [s[2] for s in sets], desc="fig9", **kw)
    S = len(seeds)
    res = {"n": n, "steps": steps.tolist(), "timing": tm, "runs": {}, "references": {}}
    for i, (name, vary, ps, label) in enumerate(sets):
        rows = np.asarray(hist[FIG9_METRIC])[i * S:(i + 1) * S]
        res["runs"][name] = {"vary": vary, "params": ps, "label": label,
                             "history": rows.tolist(),
                             "crossing": crossing_stats(steps, rows, args.batch),
                             "final_acc": float(rows[:, -1].mean())}
    if args.references:
        p1, d1, _, _ = MA.make_meta_anil(1, None, args.batch, arrays=arrays,
                                         test_size=args.test_size, local_test=0)
        s1, h1, t1 = run_lanes(sj.slam(p1, _graph(1), cfg), sj.SLAMParams.create(**std), d1,
                               1, seeds, [std], desc="single", **kw)
        res["references"]["single"] = {"label": "single-agent ANIL (standard steps)",
                                       "steps": s1.tolist(), "timing": t1,
                                       "history": {FIG9_METRIC: h1[FIG9_METRIC].tolist()}}
        s2, h2, t2 = run_lanes(dsgd(problem, graph),
                               DSGDParams.create(1 / std["alpha"], 1 / std["beta"]), data, n,
                               seeds, [{"lr_x": 1 / std["alpha"], "lr_y": 1 / std["beta"]}],
                               desc="dsgd", **kw)
        res["references"]["dsgd"] = {"label": f"decentralized SGD n={n} (whole network)",
                                     "steps": s2.tolist(), "timing": t2,
                                     "history": {FIG9_METRIC: h2[FIG9_METRIC].tolist()}}
    res["wall_time_s"] = time.perf_counter() - t_start
    return res


def plot_fig9(res, out, batch, suffix=""):
    plt = pyplot()
    paths = []
    for which, label in (("alpha", "α (UL step 1/α)"), ("beta", "β (LL step 1/β)"),
                         ("rho", "ρ (penalty)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for name, r in res["runs"].items():
            if r["vary"] not in (which, "standard"):
                continue
            x = np.asarray(res["steps"]) * batch / 128.0
            _band(ax, x, r["history"], r["label"])
        for name, r in res.get("references", {}).items():
            x = np.asarray(r["steps"]) * batch / 128.0
            _band(ax, x, r["history"][FIG9_METRIC], r["label"],
                  *REF_STYLE.get(name, ("0.5", ":")), lw=1.3)
        ax.axhline(THRESHOLD, color="k", lw=0.8, ls="-.")
        ax.set_ylim(0.80, 0.96)
        ax.set_xlabel("epochs (of 128 samples per agent)")
        ax.set_ylabel("test accuracy (x̄ + own head, mean over agents)")
        ax.set_title(f"Fig. 9: SLAM-U, varying {label}, n={res['n']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        paths.append(save_figure(fig, Path(out) / f"fig9_{which}{suffix}.png", dpi=120))
    return paths


# ----------------------------------------------------------------------------------------
def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _machine():
    """``_common.machine_info()`` plus the load average before the runs."""
    return {**machine_info(extra_packages=()), "load_before": _load()}


def _cores(machine):
    return machine.get("cores", machine.get("cpus"))


def _ints(s):
    try:
        out = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected integers ≥ 0, got {s!r}")
    return out


def _ns(s):
    out = _ints(s)
    if min(out) < 1:
        raise argparse.ArgumentTypeError(f"agent counts must be integers ≥ 1, got {s!r}")
    if sorted(set(out)) != out:
        raise argparse.ArgumentTypeError(f"agent counts must be increasing, got {s!r}")
    return out


def _floats(s):
    try:
        out = [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}")
    if not out or not all(math.isfinite(v) and v > 0 for v in out):
        raise argparse.ArgumentTypeError(f"steps must be finite and > 0, got {s!r}")
    return out


def _methods(s):
    out = [v.strip() for v in s.split(",") if v.strip()]
    bad = [v for v in out if v not in METHODS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad or s!r}; choose from "
                                         f"{', '.join(METHODS)}")
    return out


def _pos_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {s}")
    return v


def _unit(s):
    v = float(s)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"threshold must lie in (0, 1), got {s}")
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fig9", action="store_true", help="Fig 9 sensitivity study instead")
    p.add_argument("--quick", action="store_true", help="small smoke run (*_quick outputs)")
    p.add_argument("--ns", type=_ns, default=None, help="agent counts (1,2,4,6,8,10)")
    p.add_argument("--methods", type=_methods, default=list(METHODS),
                   help=f"Table 2 rows to run ({','.join(METHODS)})")
    p.add_argument("--grid", type=_floats, default=list(GRID),
                   help="1/α grid of SLAM-U and the lone agent, body steps of the SGD oracle")
    p.add_argument("--adam-grid", type=_floats, default=list(ADAM_GRID),
                   help="learning rates of the Adam oracle")
    p.add_argument("--select-seeds", type=_ints, default=list(SELECT_SEEDS))
    p.add_argument("--report-seeds", type=_ints, default=list(REPORT_SEEDS))
    p.add_argument("--threshold", type=_unit, default=THRESHOLD)
    p.add_argument("--graph", choices=GRAPHS, default="erdos_renyi",
                   help="communication graph of SLAM-U and DSGD (erdos_renyi: p = 2 ln n/n, "
                        "seed 0; ring needs n ≥ 3, else Erdős–Rényi)")
    p.add_argument("--seeds", type=_pos_int, default=5, help="Fig 9: seeds (5)")
    p.add_argument("--max-steps", type=_pos_int, default=None,
                   help="iteration cap of every run (Table 2: 2400; Fig 9: 2400)")
    p.add_argument("--log-every", type=_pos_int, default=None,
                   help="iterations between logs (Table 2 report runs: 4; Fig 9: 80)")
    p.add_argument("--select-log-every", type=_pos_int, default=16,
                   help="iterations between logs in the selection runs (16)")
    p.add_argument("--logs-per-chunk", type=_pos_int, default=None)
    p.add_argument("--batch", type=_pos_int, default=32)
    p.add_argument("--test-size", type=_pos_int, default=None, help="test images (10000)")
    p.add_argument("--no-references", dest="references", action="store_false",
                   help="Fig 9: skip the single-agent and DSGD references")
    p.add_argument("--fig9-n", type=_pos_int, default=4, help="agents in Fig 9 (4)")
    p.add_argument("--data", default=None, help="MNIST directory (default: the usual search)")
    p.add_argument("--out", default=str(RESULTS), help="output directory (default results/)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--replot", action="store_true",
                   help="redraw the figures (and Table 2 Markdown) from the saved JSON")
    p.add_argument("--summarize", default=None, metavar="JSON",
                   help="print the summary of a Table 2 result file ({'per_n': ...}) as JSON "
                        "and exit (no compute)")
    a = p.parse_args(argv)
    if a.quick:
        a.ns = a.ns or [1, 2]
        a.grid = a.grid if a.grid != list(GRID) else [0.03, 0.125]
        a.adam_grid = a.adam_grid if a.adam_grid != list(ADAM_GRID) else [4e-3, 1.6e-2]
        a.select_seeds = a.select_seeds if a.select_seeds != list(SELECT_SEEDS) else [0]
        a.report_seeds = a.report_seeds if a.report_seeds != list(REPORT_SEEDS) else [1, 2]
        a.max_steps = a.max_steps or 240
        a.test_size = a.test_size or 2000
        a.threshold = a.threshold if a.threshold != THRESHOLD else 0.85
        a.seeds = min(a.seeds, 2)
        a.fig9_n = 2
    a.ns = a.ns or [1, 2, 4, 6, 8, 10]
    a.log_every = a.log_every or (80 if a.fig9 else 4)
    a.logs_per_chunk = a.logs_per_chunk or (10 if a.fig9 else None)
    a.max_steps = a.max_steps or 2400
    if set(a.select_seeds) & set(a.report_seeds):
        p.error(f"--select-seeds {a.select_seeds} and --report-seeds {a.report_seeds} must "
                "be disjoint (the reported runs must not be the ones the step was chosen on)")
    if a.max_steps % a.log_every or a.max_steps % a.select_log_every:
        p.error(f"--max-steps {a.max_steps} must be a multiple of --log-every {a.log_every} "
                f"and --select-log-every {a.select_log_every}")
    return a


def _check_out(out: Path):
    """Fail before any compute if results cannot be written to ``out``."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise ValueError(f"--out {out}: {probe} is not writable")


def main(argv=None) -> int:
    args = parse_args(argv)
    from slamjax.data import CorruptDataError, DataNotFoundError

    machine = _machine()
    suffix = "_quick" if args.quick else ""
    out = Path(args.out)
    if args.summarize:
        print(json.dumps(summarize(json.loads(Path(args.summarize).read_text()), args)))
        return 0
    if args.replot:
        name = f"fig9{suffix}.json" if args.fig9 else f"table2{suffix}.json"
        res = json.loads((out / name).read_text())
        if args.fig9:
            print("wrote", *plot_fig9(res, out, res["config"]["batch"], suffix))
        else:
            saved = argparse.Namespace(**res["config"])
            (out / f"table2{suffix}.md").write_text(table2_markdown(res, saved))
            plot_table2(res, out / f"table2{suffix}.png")
            plot_fig8a(res, out / f"fig8a{suffix}.png")
            print(f"wrote {out}/table2{suffix}.md, table2{suffix}.png, fig8a{suffix}.png")
        return 0
    try:
        _check_out(out)
        t0 = time.perf_counter()
        arrays = MA.load_mnist_splits(args.data)
        print(f"MNIST loaded and verified in {time.perf_counter() - t0:.1f} s "
              f"(train {arrays[0].shape}, test {arrays[2].shape}); backend "
              f"{jax.default_backend()}, {_cores(machine)} CPUs, load {machine['load_before']}",
              flush=True)
        res = fig9(args, arrays) if args.fig9 else table2(args, arrays)
    except (DataNotFoundError, CorruptDataError, ValueError) as e:
        print(f"meta_learning: error: {e}", file=sys.stderr)
        return 2
    machine["load_after"] = _load()
    res["machine"] = machine
    res["config"] = dict(vars(args))
    res["config"].update(standard=STANDARD, solver=repr(SOLVER), reduction="sum", l2=MA.L2,
                         rho_over_alpha=RHO_OVER_ALPHA, head_step=HEAD_STEP, metric=METRIC,
                         graph=("erdos_renyi(p=2 ln n/n, seed=0)"
                                if args.graph == "erdos_renyi" else args.graph))
    out.mkdir(parents=True, exist_ok=True)
    if args.fig9:
        (out / f"fig9{suffix}.json").write_text(json.dumps(res, indent=None))
        paths = plot_fig9(res, out, args.batch, suffix)
        print("\nFig 9 — final test accuracy / samples to 93.5 % (mean over seeds):")
        for name, r in res["runs"].items():
            print(f"  {r['label']:<40s} final {r['final_acc']:.4f}   to 93.5 %: "
                  f"{_fmt(r['crossing'])}")
        print(f"wrote {out / f'fig9{suffix}.json'} and " + ", ".join(map(str, paths)))
    else:
        (out / f"table2{suffix}.json").write_text(json.dumps(res, indent=None))
        (out / f"table2_summary{suffix}.json").write_text(
            json.dumps(res["summary"], indent=1))
        md = table2_markdown(res, args)
        (out / f"table2{suffix}.md").write_text(md)
        plot_table2(res, out / f"table2{suffix}.png")
        plot_fig8a(res, out / f"fig8a{suffix}.png")
        print("\n" + md)
        print(f"wrote {out}/table2{suffix}.json, table2_summary{suffix}.json, "
              f"table2{suffix}.md, table2{suffix}.png, fig8a{suffix}.png")
    print(f"wall time {res['wall_time_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
