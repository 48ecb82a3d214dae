"""Head-to-head suite: SLAM, bias-free SLAM and the decentralized bilevel peers on one core.

Every method is an ``slamjax.Algorithm`` run by ``slamjax.run`` on the same problem instance,
graph and seeds. For each (problem, n, graph, method) the step size is tuned from ONE grid per
problem shared by all methods (the grid points and all seeds are lanes of one compiled
program) and selected on the mean over seeds of a selection score computed without the test
set (below); the reported numbers are mean ± std over the seeds at the selected step.

Problems (``--problems``):

* ``quad-shared`` / ``quad-hetero`` — the quadratic bilevel problem of
  ``slamjax.problems.quadratic`` (d_x = d_y = 10, m = 1, stochastic oracle σ = 0.1) with LL
  Hessians shared by all agents / drawn per agent (where the local surrogate of eq. (23) is
  biased). Heterogeneity: each agent's linear terms b_i, p_i, t_i = common mean + N(0, 1).
  Closed-form true optimum; metric ‖∇F(1x̄)‖²; selection score final ‖∇F(1x̄)‖² + spread
  (‖∇F(1x̄)‖² alone for the no-communication control, whose spread no step can reduce).
  n = 64 (quad-shared) and n ∈ {9, 64, 1024} (quad-hetero; at n = 1024 ring and Erdős–Rényi
  only, the centralized control, no double-loop reference, η ∈ {0.003, 0.01, 0.03} and 500
  steps, to fit the 30-minute budget). Step grid η ∈ {0.001, 0.003, 0.01, 0.03, 0.1}.
* ``clean-iid`` / ``clean-skew`` — data hyper-cleaning on MNIST
  (``slamjax.problems.hyper_cleaning``: per-sample weights as the UL variable, 30 % of the
  training labels corrupted, softmax regression LL on 14×14-pooled images with l2 = 1e-3,
  validation loss as UL; 150 training + 50 clean validation samples per agent, minibatch 32).
  Split iid / label-skewed (class proportions per agent ~ Dirichlet(0.5)). n = 9. Metric: test
  accuracy of the network-average model ȳ; selection score: final validation loss (agents'
  validation shards). η ∈ {0.1, 0.3, 1, 3}. A corruption sweep (10 % and 50 %) runs on the
  Erdős–Rényi graph (``clean-iid-p0.1``, ``clean-iid-p0.5``).
* ``anil`` — decentralized ANIL meta-learning on MNIST (``slamjax.problems.meta_anil``, the
  paper's §C.5 network, summed minibatch losses, batch 32, iid shards of 60000/n images):
  consensus on the UL body only (SLAM-U setting). n = 8. Metric: test accuracy of x̄ with
  each agent's head on test images 0–4999; selection score: the final test loss of the same
  models on test images 5000–9999 (held out from what is reported). UL step
  η ∈ {0.01, 0.03, 0.1, 0.3}, LL step 0.1 (the paper's), z step 1/320 (the Neumann series' η: the
  summed 32-sample LL Hessian has λ_max ≈ 100, so z diverges at 0.1).

Graphs: ring, 2-D torus (rows × cols with both sides ≥ 3, as square as n allows: 3×3, 8×8),
Erdős–Rényi (p = 2 ln n / n, seed 0; connected at these sizes). Methods and how η maps:

* ``slam`` (``slam_u`` for anil) — 1/α = η, 1/β = LL step, γ = 1, ρ = ½ × the stability
  bound ρ·λ_max·(1 + 2γ) < 4·min(α, β) over the levels in consensus;
* ``bias_free_slam`` — as SLAM plus 1/δ = LL step for z;
* ``dsoba`` / ``dsoba_gt`` — η_x = η, η_y = η_z = LL step (anil: ``consensus="upper"``);
* ``dsgd_bilevel`` — 5 inner LL steps of the LL step and CG(10) hypergradients, η_x = η
  (anil: ``consensus="upper"``, Neumann(10, 1/320) as SLAM-U);
* ``dsgd`` (anil only) — decentralized SGD on the LL loss, body and head trained jointly and
  both gossiped (the classical non-meta baseline of the paper's Fig. 8).
* controls, for SLAM (SLAM-U) and D-SOBA-GT: ``local`` (the method on a graph with no edges: every agent
  solves its own problem, nothing is sent) and ``centralized`` (the method on the complete
  graph: for the gossip methods the Metropolis W is exact averaging; for SLAM the complete
  graph's Laplacian with ρ at 0.8 × its stability bound).

Consensus is measured graph-free, as the spread (1/n) Σ_i ‖x_i − x̄‖² of the final UL
iterates, so that methods, graphs and controls are on one scale. Samples are counted as drawn
(minibatches × batch, per agent); messages as scalars sent over the whole network.

Speed: most cases are compile-bound, so the suite sets XLA's backend optimisation level to 2
(``--xla-level``; JAX's default is 3): measured on the quadratic, compile 4.2 s instead of
9.0 s per case. (Two worker processes were tried and were slower: XLA's compiler already
uses both cores.)

Writes results/bilevel_suite.json, .md (summary table) and .png (curves). ``--quick``:
quad-hetero on a ring at n = 8 (200 steps, 2 seeds) and hyper-cleaning at n = 4 (100 steps),
controls for SLAM and D-SOBA-GT (CI; skips hyper-cleaning when MNIST is missing).
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


def _xla_level(argv) -> str:
    for i, a in enumerate(argv):
        if a == "--xla-level" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--xla-level="):
            return a.split("=", 1)[1]
    return os.environ.get("SLAMJAX_SUITE_XLA_LEVEL", "2")


# must happen before JAX initialises its backend (workers inherit the environment)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["SLAMJAX_SUITE_XLA_LEVEL"] = _xla_level(sys.argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_"
                               f"level={os.environ['SLAMJAX_SUITE_XLA_LEVEL']}").strip()

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import slamjax as sj  # noqa: E402
from _common import RESULTS, machine_info, pyplot, save_figure, write_json  # noqa: E402
from slamjax.baselines import (BiasFreeParams, DSGDBilevelParams, DSGDParams,  # noqa: E402
                               DSOBAGTParams, DSOBAParams, bias_free_slam, dsgd, dsgd_bilevel,
                               dsoba, dsoba_gt)

GRAPHS = ["ring", "torus", "erdos_renyi"]
CONTROLS = ["local", "centralized"]
BILEVEL = ["slam", "bias_free_slam", "dsoba", "dsoba_gt", "dsgd_bilevel"]
ANIL_METHODS = ["slam_u", "bias_free_slam", "dsoba", "dsoba_gt", "dsgd_bilevel", "dsgd"]
QUAD_GRID = [0.001, 0.003, 0.01, 0.03, 0.1]
CLEAN_GRID = [0.1, 0.3, 1.0, 3.0]
SWEEP_METHODS = ["slam", "bias_free_slam", "dsoba_gt"]
#: n = 1024 in the 30-minute budget (a full n = 1024 case costs ≈ 70 s of run time): ring and
#: Erdős–Rényi, the centralized control, no double-loop reference, 3 step sizes, 500 steps
BIG_N = dict(graphs=["ring", "erdos_renyi"], controls=["centralized"], steps=500,
             methods=["slam", "bias_free_slam", "dsoba", "dsoba_gt"], grid=[0.003, 0.01, 0.03])

#: per problem: kind, sizes, steps, step grid, LL step (None: = η), target, corruption/split
PROBLEMS = {
    "quad-shared": dict(kind="quad", homogeneous=True, n=[64], steps=1000, grid=QUAD_GRID),
    "quad-hetero": dict(kind="quad", homogeneous=False, n=[9, 64, 1024], steps=1000,
                        grid=QUAD_GRID, by_n={1024: BIG_N}),
    "clean-iid": dict(kind="clean", split="iid", corruption=0.3, n=[9], steps=400,
                      grid=CLEAN_GRID, target=0.85, logs=20),
    "clean-skew": dict(kind="clean", split="label_skew", corruption=0.3, n=[9], steps=400,
                       grid=CLEAN_GRID, target=0.85, logs=20),
    "clean-iid-p0.1": dict(kind="clean", split="iid", corruption=0.1, n=[9], steps=400,
                           grid=CLEAN_GRID, target=0.85, logs=20, graphs=["erdos_renyi"],
                           methods=SWEEP_METHODS, controls=[]),
    "clean-iid-p0.5": dict(kind="clean", split="iid", corruption=0.5, n=[9], steps=400,
                           grid=CLEAN_GRID, target=0.85, logs=20, graphs=["erdos_renyi"],
                           methods=SWEEP_METHODS, controls=[]),
    "anil": dict(kind="anil", n=[8], steps=400, grid=[0.01, 0.03, 0.1, 0.3], ll_step=0.1,
                 z_step=1.0 / 320.0,
                 target=0.9, graphs=["erdos_renyi"], logs=16),
}
METRIC = {"quad": "grad_F_sq", "clean": "test_acc", "anil": "test_acc"}
#: ANIL's minibatch LL Hessian has near-null directions: exact solves (CG) amplify the noise
#: and collapse to chance (experiments/meta_learning.py); the truncated Neumann series of the
#: paper's analysis is used there, and here for SLAM-U and the double-loop reference
ANIL_SOLVER = sj.Neumann(K=10, eta=1.0 / 320.0)
CONTROL_METHODS = ("slam", "slam_u", "dsoba_gt")
CLEAN_SIZES = dict(per_agent=150, val_per_agent=50, batch=32)


def config(prob: str, n: int) -> dict:
    """The problem's settings with its per-n overrides applied."""
    cfg = dict(PROBLEMS[prob])
    cfg.update(cfg.pop("by_n", {}).get(n, {}))
    return cfg


def methods_for(kind: str):
    return ANIL_METHODS if kind == "anil" else BILEVEL


def torus_shape(n: int):
    """rows × cols = n, both ≥ 3, as square as possible (None if there is none)."""
    rows = [d for d in range(3, int(math.isqrt(n)) + 1) if n % d == 0 and n // d >= 3]
    return (rows[-1], n // rows[-1]) if rows else None


def graph_for(kind: str, n: int):
    if kind == "local":
        return sj.graphs.empty(n)
    if kind == "centralized":
        return sj.graphs.complete(n)
    if kind == "torus":
        shape = torus_shape(n)
        if shape is None:
            raise ValueError(f"no 2-D torus with both sides ≥ 3 has n={n} agents")
        return sj.graphs.torus(*shape)
    return sj.make_graph(kind, n, seed=0)


# ----------------------------------------------------------------------------------------
# problem instances (cached per process; workers build their own)
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _mnist():
    from slamjax.problems.meta_anil import load_mnist_splits
    return load_mnist_splits()


@functools.lru_cache(maxsize=4)
def instance(prob: str, n: int, noise: float = 0.1):
    cfg = PROBLEMS[prob]
    if cfg["kind"] == "quad":
        from slamjax.problems.quadratic import make_quadratic
        return make_quadratic(n, 10, 10, 1, seed=0, noise=noise, homogeneous=cfg["homogeneous"])
    if cfg["kind"] == "clean":
        from slamjax.problems.hyper_cleaning import make_hyper_cleaning
        return make_hyper_cleaning(n, split=cfg["split"], corruption=cfg["corruption"],
                                   arrays=_mnist(), seed=0, **CLEAN_SIZES)
    from slamjax.problems.meta_anil import make_meta_anil
    tr_x, tr_y, te_x, te_y = _mnist()
    return make_meta_anil(n, batch=32, arrays=(tr_x, tr_y, te_x[:5000], te_y[:5000]),
                          local_test=0)


def _have_mnist() -> bool:
    from slamjax.data import DataNotFoundError
    try:
        _mnist()
        return True
    except DataNotFoundError:
        return False


def _rho(graph, *step_params) -> float:
    """Half SLAM's stability bound ρ·λ_max·(1 + 2γ) < 4·min(α, β), γ = 1 (the meta-learning
    reproduction's choice): the consensus gain ρλ/α per step is then the same at every η."""
    if graph.lam_max <= 0:
        return 1.0
    return 0.5 * sj.stability_bound(graph.lam_max, min(step_params), 1.0)


def build(method: str, problem, graph, cfg):
    """(algorithm, params template, list of params dicts for the step grid)."""
    kind, grid = cfg["kind"], cfg["grid"]
    upper = kind == "anil"
    ll = (lambda eta: cfg["ll_step"]) if cfg.get("ll_step") else (lambda eta: eta)
    zs = (lambda eta: cfg["z_step"]) if cfg.get("z_step") else ll
    extra = {"consensus": "upper"} if upper else {}
    pts = []
    for eta in grid:
        a, b = 1.0 / eta, 1.0 / ll(eta)
        rho = _rho(graph, a) if upper else _rho(graph, a, b)
        pts.append({
            "slam": dict(alpha=a, beta=b, rho=rho, gamma=1.0),
            "slam_u": dict(alpha=a, beta=b, rho=rho, gamma=1.0),
            "bias_free_slam": dict(alpha=a, beta=b, delta=1.0 / zs(eta), rho=rho, gamma=1.0),
            "dsoba": dict(lr_x=eta, lr_y=ll(eta), lr_z=zs(eta), theta=1.0),
            "dsoba_gt": dict(lr_x=eta, lr_y=ll(eta), lr_z=zs(eta)),
            "dsgd_bilevel": dict(lr_x=eta, lr_y=ll(eta)),
            "dsgd": dict(lr_x=eta, lr_y=ll(eta)),
        }[method])
    variant = "slam_u" if upper else "slam"
    solver = ANIL_SOLVER if upper else sj.CG(10)
    if method in ("slam", "slam_u"):
        alg = sj.slam(problem, graph, sj.SLAMConfig(variant, solver=solver))
        P = sj.SLAMParams.create(1.0, 1.0, 1.0, 1.0)
    elif method == "bias_free_slam":
        alg = bias_free_slam(problem, graph, sj.SLAMConfig(variant))
        P = BiasFreeParams.create(1.0, 1.0, 1.0, 1.0, 1.0)
    elif method == "dsoba":
        alg, P = dsoba(problem, graph, **extra), DSOBAParams.create(0.1, 0.1, 0.1, 1.0)
    elif method == "dsoba_gt":
        alg, P = dsoba_gt(problem, graph, **extra), DSOBAGTParams.create(0.1, 0.1, 0.1)
    elif method == "dsgd_bilevel":
        alg = dsgd_bilevel(problem, graph, inner_steps=5, solver=solver, **extra)
        P = DSGDBilevelParams.create(0.1, 0.1)
    else:
        alg, P = dsgd(problem, graph), DSGDParams.create(0.1, 0.1)
    return alg, P, pts


def _spread(x) -> np.ndarray:
    """(1/n) Σ_i ‖x_i − x̄‖² per lane, for stacked x of shape (G, S, n, ...) (any pytree)."""
    tot = 0.0
    for leaf in jax.tree.leaves(x):
        a = np.asarray(leaf, np.float64)
        a = a.reshape(a.shape[:3] + (-1,))
        tot = tot + np.sum((a - a.mean(axis=2, keepdims=True)) ** 2, axis=(2, 3)) / a.shape[2]
    return tot


def _anil_heldout_loss(state) -> np.ndarray:
    """Final loss of (x̄, own heads) on test images 5000–9999, per lane (G, S): one vmapped
    call over the lanes."""
    from slamjax.problems.meta_anil import test_metrics
    _, _, te_x, te_y = _mnist()
    imgs = jnp.asarray(te_x[5000:], jnp.float32) * (1.0 / 255.0)
    labels = jnp.asarray(te_y[5000:], jnp.int32)
    loss = lambda x, y: test_metrics(x, y, imgs, labels, 0)["test_loss"]  # noqa: E731
    return np.asarray(jax.jit(jax.vmap(jax.vmap(loss)))(state.x, state.y), np.float64)


def first_reach(steps, curve, target, below: bool):
    idx = np.nonzero(curve <= target if below else curve >= target)[0]
    return float(steps[idx[0]]) if len(idx) else None


def run_case(prob: str, n: int, gk: str, method: str, seeds, steps: int, noise: float = 0.1):
    """One (problem, n, graph, method): tuned over the grid, every seed; returns a record."""
    cfg = config(prob, n)
    kind = cfg["kind"]
    problem, data, x0, y0 = instance(prob, n, noise)
    graph = graph_for(gk, n)
    alg, params, points = build(method, problem, graph, cfg)
    logs = cfg.get("logs", 40)
    log_every = max(d for d in range(1, max(1, steps // logs) + 1) if steps % d == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unstable grid points diverge and are marked
        res = sj.run(alg, params, data, x0, y0, num_steps=steps, log_every=log_every,
                     seeds=list(seeds), grid=points, progress=False, desc=method)
    metric = np.asarray(res.history[METRIC[kind]], np.float64)           # (G, S, L)
    spread = _spread(res.state.x)                                        # (G, S)
    if kind == "quad":  # the no-communication control cannot reduce its spread: not scored
        score = metric[..., -1] + (0.0 if gk == "local" else spread)
    elif kind == "clean":
        score = np.asarray(res.history["val_loss"], np.float64)[..., -1]
    else:
        score = _anil_heldout_loss(res.state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = np.isfinite(score).all(axis=1) & np.isfinite(metric[..., -1]).all(axis=1)
        mean_score = np.where(ok, score.mean(axis=1), np.inf)
    best = int(np.argmin(mean_score))
    curve = metric[best].mean(axis=0)
    below = kind == "quad"
    target = 1e-3 * float(metric[best, :, 0].mean()) if below else cfg["target"]
    msgs = np.asarray(res.history["messages"], np.float64)[best].mean(axis=0)
    batch = 1 if kind == "quad" else 32       # quadratic: one noisy oracle draw per minibatch
    samples = np.asarray(res.history["minibatches"], np.float64)[best].mean(axis=0) \
        * batch / n
    t_hit = first_reach(res.steps, curve, target, below)
    at = (lambda v: float(np.interp(t_hit, res.steps, v))) if t_hit is not None else \
        (lambda v: None)
    rec = {
        "problem": prob, "n": n, "graph": gk, "method": method, "lam_max": graph.lam_max,
        "metric": METRIC[kind], "eta": cfg["grid"][best], "params": points[best],
        "steps": res.steps.tolist(), "curve_mean": curve.tolist(),
        "curve_std": metric[best].std(axis=0).tolist(),
        "final": [float(metric[best, :, -1].mean()), float(metric[best, :, -1].std())],
        "spread_final": [float(spread[best].mean()), float(spread[best].std())],
        "score_final": [float(score[best].mean()), float(score[best].std())],
        "target": target, "iterations_to_target": t_hit,
        "messages_to_target": at(msgs), "samples_per_agent_to_target": at(samples),
        "messages": msgs.tolist(), "samples_per_agent": samples.tolist(),
        "grid_score_mean": [None if not np.isfinite(v) else float(v) for v in mean_score],
        "diverged_points": int(np.sum(~ok)),
        "compile_s": res.compile_time, "run_s": res.run_time,
    }
    if kind == "clean":
        for k in ("weight_gap", "flagged", "val_loss"):
            v = np.asarray(res.history[k], np.float64)[best, :, -1]
            rec[k] = [float(v.mean()), float(v.std())]
    return rec


# ----------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------
def _fmt(v, f):
    return "—" if v is None else format(v, f)


def markdown(records, args, wall) -> str:
    cmd = "python experiments/bilevel_suite.py" + (" --quick" if args.quick else "")
    lines = [f"Command: `{cmd}` — {len(args.seeds)} seeds, wall {wall / 60:.1f} min "
             "Per problem one step grid for all methods, "
             "selected on the mean over seeds of the selection score (quadratic: final "
             "‖∇F(1x̄)‖² + spread; hyper-cleaning: final validation loss; ANIL: final loss on "
             "held-out test images 5000–9999); values: mean ± std over seeds at the selected "
             "η. Spread = (1/n)Σ‖x_i − x̄‖² of the final UL iterates. Targets: quadratic "
             "‖∇F(1x̄)‖² ≤ 1e-3 × start; hyper-cleaning test accuracy ≥ 85 %; ANIL ≥ 90 %.",
             "",
             "| problem | n | graph | method | η | final metric | spread | iterations to "
             "target | samples/agent to target | messages to target | diverged grid points |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        m = r["metric"].replace("grad_F_sq", "‖∇F‖²").replace("test_acc", "test acc")
        fin = (f"{m} {r['final'][0]:.2e} ± {r['final'][1]:.1e}" if r["metric"] == "grad_F_sq"
               else f"{m} {100 * r['final'][0]:.2f} ± {100 * r['final'][1]:.2f} %")
        lines.append(
            f"| {r['problem']} | {r['n']} | {r['graph']} | {r['method']} | {r['eta']:g} | "
            f"{fin} | {r['spread_final'][0]:.2e} | {_fmt(r['iterations_to_target'], '.0f')} | "
            f"{_fmt(r['samples_per_agent_to_target'], '.0f')} | "
            f"{_fmt(r['messages_to_target'], '.2e')} | {r['diverged_points']} |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    """One row per (problem, largest n with a torus): curves on ring / torus / ER against
    iterations, and on ER against samples per agent and messages; controls dotted/dashed."""
    plt = pyplot()
    rows = []
    for prob in PROBLEMS:
        ns = sorted({r["n"] for r in records if r["problem"] == prob})
        if ns:
            rows.append((prob, 64 if 64 in ns else ns[-1]))
    cols = [("ring", "steps"), ("torus", "steps"), ("erdos_renyi", "steps"),
            ("erdos_renyi", "samples_per_agent"), ("erdos_renyi", "messages")]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.0 * len(cols), 3.0 * len(rows)),
                             squeeze=False)
    colors = {}
    for i, (prob, n) in enumerate(rows):
        sel = [r for r in records if r["problem"] == prob and r["n"] == n]
        quad = sel and sel[0]["metric"] == "grad_F_sq"
        for j, (gk, xkey) in enumerate(cols):
            ax = axes[i, j]
            if not any(r["graph"] == gk for r in sel):
                ax.set_visible(False)  # this problem does not run on that graph
                continue
            for r in sel:
                if r["graph"] not in (gk, "centralized", "local"):
                    continue
                if r["graph"] in CONTROLS and (xkey != "steps" or gk != "erdos_renyi"
                                               or r["method"] not in ("slam", "slam_u",
                                                                      "dsoba_gt")):
                    continue
                c = colors.setdefault(r["method"], f"C{len(colors)}")
                xs = np.asarray(r[xkey] if xkey != "steps" else r["steps"], float)
                y = np.asarray(r["curve_mean"], float)
                ls = {"centralized": ":", "local": "--"}.get(r["graph"], "-")
                label = r["method"] if r["graph"] == gk else f"{r['method']} ({r['graph']})"
                if xkey == "messages":
                    xs = np.maximum(xs, 1.0)
                    ax.set_xscale("log")
                ax.plot(xs, y, ls, color=c, label=label, lw=1.2)
            if quad:
                ax.set_yscale("log")
            ax.set_title(f"{prob}, n={n}, {gk}", fontsize=9)
            ax.set_xlabel({"steps": "iteration", "samples_per_agent": "samples per agent",
                           "messages": "scalars sent (network)"}[xkey], fontsize=8)
            if j == 0:
                ax.set_ylabel("‖∇F(1x̄)‖²" if quad else "test accuracy", fontsize=8)
        shown = [a for a in axes[i] if a.get_visible() and a.get_legend_handles_labels()[0]]
        if shown:  # one legend per row, on the panel with the most labelled curves
            max(shown, key=lambda a: len(a.get_legend_handles_labels()[1])).legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------
def cases(args):
    out = []
    for prob in args.problems:
        for n in (args.n or PROBLEMS[prob]["n"]):
            cfg = config(prob, n)
            graphs = [g for g in cfg.get("graphs", GRAPHS) if g in args.graphs]
            controls = cfg.get("controls", CONTROLS) or []
            for gk in graphs + list(controls):
                if gk == "torus" and torus_shape(n) is None:
                    print(f"{prob}: no torus at n={n} (needs rows, cols ≥ 3)")
                    continue
                for method in cfg.get("methods", methods_for(cfg["kind"])):
                    if gk in CONTROLS and method not in CONTROL_METHODS:
                        continue  # controls: the paper's method and the tracked peer
                    out.append((prob, n, gk, method))
    return out


def _cost(spec):  # rough: agents × (solver-heavy methods cost more); biggest first
    prob, n, gk, method = spec
    k = {"quad": 1.0, "clean": 40.0, "anil": 120.0}[PROBLEMS[prob]["kind"]]
    return k * n * (2.0 if method in ("slam", "slam_u", "dsgd_bilevel") else 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="CI version: quad-hetero ring n=8 and hyper-cleaning n=4, 2 seeds")
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--n", type=int, nargs="+", default=None,
                    help="override every problem's sizes")
    ap.add_argument("--graphs", nargs="+", default=GRAPHS, choices=GRAPHS)
    ap.add_argument("--steps", type=int, default=None, help="override every problem's steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--noise", type=float, default=0.1, help="quadratic oracle σ")
    ap.add_argument("--xla-level", default=os.environ.get("SLAMJAX_SUITE_XLA_LEVEL", "2"),
                    help="XLA backend optimisation level (default 2; JAX's default is 3)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.problems, args.graphs, args.seeds = ["quad-hetero", "clean-iid"], ["ring"], [0, 1]
    if args.quick and not _have_mnist():
        print("MNIST not found (see slamjax.data.load_mnist): the quick run skips hyper-cleaning")
        args.problems = ["quad-hetero"]
    specs = cases(args)
    if args.quick:
        specs = [(p, 8 if p.startswith("quad") else 4, g, m) for p, _, g, m in specs]
        specs = list(dict.fromkeys(specs))
    steps_of = lambda p, n: args.steps or (200 if args.quick and p.startswith("quad") else  # noqa
                                           100 if args.quick else config(p, n)["steps"])
    for gk, n in sorted({(g, n) for _, n, g, _ in specs}):
        graph_for(gk, n)  # every graph can be built: fail now, not after 20 minutes
    full = [(p, n, g, m, tuple(args.seeds), steps_of(p, n), args.noise) for p, n, g, m in specs]
    order = sorted(range(len(full)), key=lambda i: -_cost(full[i][:4]))
    print(f"{len(full)} cases, XLA_FLAGS={os.environ.get('XLA_FLAGS')}",
          flush=True)
    out = Path(args.out)
    suffix = "_quick" if args.quick else ""
    t0 = time.perf_counter()
    records = [None] * len(full)

    def report(i, r):
        records[i] = r
        done = sum(x is not None for x in records)
        fin = (f"{r['final'][0]:.2e}" if r["metric"] == "grad_F_sq"
               else f"{100 * r['final'][0]:.2f}%")
        print(f"[{done:3d}/{len(full)} {time.perf_counter() - t0:6.0f}s] {r['problem']:14s} "
              f"n={r['n']:<5d}{r['graph']:12s} {r['method']:15s} η={r['eta']:<6g} {fin} "
              f"spread {r['spread_final'][0]:.1e}  it→target {r['iterations_to_target']}  "
              f"({r['compile_s']:.1f}+{r['run_s']:.1f} s)", flush=True)

    partial = out / f"bilevel_suite{suffix}.partial.json"
    for i in order:
        report(i, run_case(*full[i]))
        write_json(partial, {"args": vars(args), "records": [r for r in records if r]})
    wall = time.perf_counter() - t0
    payload = {"args": vars(args), "problems": PROBLEMS, "clean_sizes": CLEAN_SIZES,
               "wall_s": wall, "xla_flags": os.environ.get("XLA_FLAGS"),
               "heterogeneity": {
                   "quad": "linear terms b_i, p_i, t_i: common mean + N(0, 1) per agent; "
                           "quad-hetero also draws H_i, B_i per agent",
                   "clean": "iid: uniform random shards; label_skew: class proportions per "
                            "agent ~ Dirichlet(0.5), train and validation alike",
                   "anil": "iid shards of 60000/n training images"},
               "records": records, "machine": machine_info(extra_packages=())}
    path = write_json(out / f"bilevel_suite{suffix}.json", payload)
    partial.unlink(missing_ok=True)
    md = out / f"bilevel_suite{suffix}.md"
    md.write_text(markdown(records, args, wall))
    png = plot(records, out / f"bilevel_suite{suffix}.png")
    print(f"wrote {path}, {md}, {png} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
