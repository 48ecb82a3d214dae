"""Cooperative navigation: paper Fig. 1 and supplement Figs. 5, 6, 7 (Lu et al., NeurIPS 2022).

    python experiments/navigation.py --figure 1          # SLAM-AC vs DAC vs MDAC, n = 3
    python experiments/navigation.py --figure 5          # the same for n = 4, 6, 8, 10
    python experiments/navigation.py --figure 6          # SLAM-AC: α, β, ρ × {1, 1/2, 1/10}
    python experiments/navigation.py --figure 7          # SLAM-PPO vs Dec-PPO, n = 3
    python experiments/navigation.py --figure all --quick   # every figure, small, -> results/quick/
    python experiments/navigation.py --figure ablation    # SLAM-AC: the choices we made
    python experiments/navigation.py --figure mechanism --quick   # issue 13: critic consensus
    slamjax reproduce fig1                                # = --figure 1

Issue-13 options (defaults keep every figure as it was): ``--graph ring|er_sparse|er``
(communication graph; its spectral gap and λ_max are recorded per run), ``--actor sgd|adam``
(plain actor steps as in Algorithm 2, 5e-3 on the minibatch mean = 1e-4 per sample, or Adam
1e-4), ``--nuisance c`` (zero-sum reward heterogeneity c·std(R)), ``--reward-split owner``,
``--controls`` (add the no-communication and centralized-critic controls), ``--track-central``
(log ‖Aw‖² and every agent's critic error against a reference centralized critic).

``--figure mechanism`` (issue 13, "must show", first bullet): ring, n = 6, nuisance
c ∈ {0, 0.5, 1}·std(R), SLAM-AC and DAC next to both controls, plain SGD actors, every run
tracking the reference centralized critic. It reports per c and algorithm the value critics'
consensus error ‖Aw‖² and the critics' error against the centralized critic over the last 10 %
of the rounds, and whether SLAM-AC's consensus error is below DAC's.

Every figure writes ``results/fig<k>.json`` (``results/ablation.json`` for the ablation):
configuration, per-seed learning curves binned over 10 update rounds, final-reward table,
paired comparisons, wall times; and ``results/fig<k>.png``: mean ± std over the seeds of the
return, smoothed over 50 rounds.

Setting (see ``slamjax.rl`` for the algorithms): MPE ``simple_spread`` rules (mpe2), episodes
of 25 steps, 16 parallel episodes per update round, each round split into K = 8 iterations on
minibatches of M = 50 transitions; actor/critic MLPs with 20 hidden ReLU units; actors read
the 4n positions, critics also the agents' velocities; Erdős–Rényi graph G(n, 2 ln n / n)
(first connected draw from seed 0); 5 seeds (Monte-Carlo trials) vmapped in one program; the
same seeds for every algorithm, so runs are paired (same initial networks and the same first
episodes). Step sizes: actor 1e-4 (Adam), critic 1e-3 per sample (0.05 on the minibatch mean),
ρ = 0.1, discount 0.95, PPO clip 0.2.

Reported numbers: "final" = mean return over the last 10% of the rounds of each seed;
"AUC" = mean return over all rounds (rewards convergence speed). The paired comparison takes
the per-seed difference SLAM − baseline and reports its mean, the paired t statistic
mean/(sd/√S) and the number of seeds on which SLAM is ahead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

from _common import machine_info, pyplot, write_json  # noqa: E402

import slamjax.rl as rl  # noqa: E402
from slamjax.rl.core import DISPLAY  # noqa: E402

BIN = 10  # rounds per stored point of the per-seed curves
CONS_FLOOR = 1e-12  # consensus errors below this (float round-off) are drawn at it
SMOOTH_BINS = 5  # moving-average window of the plotted curves: 5 bins = 50 rounds

#: figure -> defaults (rounds = update rounds of 16 episodes each; quick_rounds for --quick)
FIGURES = {
    "1": dict(title="Fig. 1: cooperative navigation, n = 3", ns=[3],
              algorithms=["slam_ac", "dac", "mdac"], rounds=6000, quick_rounds=300),
    "5": dict(title="Fig. 5: scalability, n = 4, 6, 8, 10", ns=[4, 6, 8, 10],
              algorithms=["slam_ac", "dac", "mdac"], rounds=2000, quick_rounds=150),
    "6": dict(title="Fig. 6: SLAM-AC hyperparameters (n = 3)", ns=[3], algorithms=["slam_ac"],
              rounds=3000, quick_rounds=200),
    "7": dict(title="Fig. 7: SLAM-PPO vs Dec-PPO, n = 3", ns=[3],
              algorithms=["slam_ppo", "dec_ppo"], rounds=6000, quick_rounds=300),
    "ablation": dict(title="SLAM-AC ablations, n = 3",
                     ns=[3], algorithms=["slam_ac"], rounds=2000, quick_rounds=150),
    "mechanism": dict(title="Mechanism: critic consensus under zero-sum reward heterogeneity, "
                      "ring n = 6", ns=[6], algorithms=["slam_ac", "dac", "nocomm_ac",
                                                        "central_ac"],
                      rounds=1000, quick_rounds=150, nuisance=[0.0, 0.5, 1.0]),
}
#: plain-SGD actor step: the paper's 1e-4 per sample on a minibatch mean of M = 50 samples
SGD_ACTOR_STEP = 5e-3
CONTROLS = ["nocomm_ac", "central_ac"]
#: ablation label -> (ACConfig overrides, make_hparams overrides)
ABLATIONS = {
    "as implemented": ({}, {}),
    "critic on positions only (paper's 4n state)": ({"critic_velocities": False}, {}),
    "critic step 1e-3 on the mean (literal)": ({}, {"critic_lr": 1e-3}),
    "actor SGD 5e-3 (1e-4 per sample)": ({"actor_optimizer": "sgd"}, {"actor_lr": 5e-3}),
}
#: Fig. 6: (panel, hyperparameter, factor); 1/α = actor step, 1/β = critic step, ρ penalty
FIG6 = [("base", None, 1.0)] + [(p, p, f) for p in ("alpha", "beta", "rho") for f in (0.5, 0.1)]
FIG6_FIELD = {"alpha": "actor_lr", "beta": "critic_lr", "rho": "rho"}


# ----------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------
def final_window(rounds: int) -> int:
    return max(10, rounds // 10)


def _mstd(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return (float(x.mean()) if len(x) else float("nan"),
            float(x.std(ddof=1)) if len(x) > 1 else 0.0)


def summarize(ret: np.ndarray, diverged_at=None) -> dict:
    """ret: (S, U) returns of one setting (NaN after a divergence). Per-seed final and AUC and
    their mean ± std over the seeds that did not diverge."""
    w = final_window(ret.shape[1])
    final = ret[:, -w:].mean(axis=1)
    auc = ret.mean(axis=1)
    fm, fs = _mstd(final)
    am, as_ = _mstd(auc)
    div = [] if diverged_at is None else [int(d) for d in diverged_at]
    return {"final_per_seed": final.tolist(), "final_mean": fm, "final_std": fs,
            "auc_per_seed": auc.tolist(), "auc_mean": am, "auc_std": as_,
            "initial_mean": float(np.nanmean(ret[:, :min(20, ret.shape[1])])),
            "final_window_rounds": w, "diverged_at": div,
            "diverged_seeds": int(sum(d >= 0 for d in div))}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-seed differences a − b: mean, sd, paired t = mean/(sd/√S), wins (a > b)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]  # seeds on which either run diverged are left out
    S = len(d)
    sd = float(d.std(ddof=1)) if S > 1 else float("nan")
    t = float(d.mean() / (sd / math.sqrt(S))) if S > 1 and sd > 0 else float("nan")
    return {"diff_per_seed": d.tolist(), "mean_diff": float(d.mean()), "sd_diff": sd,
            "t_paired": t, "dof": S - 1, "wins": int((d > 0).sum()), "seeds": S}


def binned(ret: np.ndarray) -> list:
    S, U = ret.shape
    k = U // BIN
    out = ret[:, :k * BIN].reshape(S, k, BIN).mean(axis=2)
    return [[None if not np.isfinite(v) else float(f"{v:.5g}") for v in row] for row in out]


def smooth(x: np.ndarray, w: int = SMOOTH_BINS) -> np.ndarray:
    """Trailing moving average along the last axis (shorter window at the start)."""
    c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(1, 0)]), axis=-1)
    idx = np.arange(1, x.shape[-1] + 1)
    lo = np.maximum(idx - w, 0)
    return (c[..., idx] - c[..., lo]) / (idx - lo)


# ----------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------
def config_kwargs(args, n: int, nuisance=None) -> dict:
    """ACConfig overrides from the issue-13 options (empty with the defaults: figures unchanged).
    ``nuisance`` (multiple of std(R)) overrides ``--nuisance``."""
    kw = {}
    c = args.nuisance if nuisance is None else nuisance
    if c:
        kw["nuisance_scale"] = rl.nuisance_scale(n, c)
    if args.reward_split != "shared":
        kw["reward_split"] = args.reward_split
    if args.actor == "sgd":
        kw["actor_optimizer"] = "sgd"
    if args.track_central:
        kw["track_central"] = True
    if args.num_envs is not None:
        kw["num_envs"] = args.num_envs
    return kw


def hparam_kwargs(args) -> dict:
    kw = {}
    if args.actor == "sgd":
        kw["actor_lr"] = SGD_ACTOR_STEP
    if args.rho is not None:
        kw["rho"] = args.rho
    return kw


def make_graph(args, n):
    return rl.make_rl_graph(args.graph, n)


def run_one(algorithm, n, rounds, seeds, args, hparams=None, graph=None, label=None,
            config_kw=None):
    graph = make_graph(args, n) if graph is None else graph
    t0 = time.perf_counter()
    name = algorithm.algorithm if isinstance(algorithm, rl.ACConfig) else algorithm
    if hparams is None and hparam_kwargs(args):
        hparams = [rl.make_hparams(graph, **hparam_kwargs(args))]
    kw = {} if isinstance(algorithm, rl.ACConfig) else {"n": n, **config_kwargs(args, n)}
    kw.update(config_kw or {})
    res = rl.run(algorithm, graph, hparams=hparams, seeds=seeds, num_updates=rounds,
                 chunk=args.chunk, progress=not args.no_progress,
                 desc=label or f"{DISPLAY[name]} n={n}", fast_compile=args.quick, **kw)
    wall = time.perf_counter() - t0
    print(f"  {label or DISPLAY[name]} (n={n}): compile {res.compile_time:.1f}s, run "
          f"{res.run_time:.1f}s, total {wall:.1f}s", flush=True)
    return res, wall


def entry(res, h: int, wall: float, extra=None) -> dict:
    """Lane ``h`` (hyperparameter setting) of the RunResult ``res`` of :func:`slamjax.rl.run`.
    ``diverged_at`` (per seed): rounds done when the lane went non-finite (−1: finite)."""
    ret = np.array(res.metrics["return"][h], dtype=float)
    cons = np.array(res.metrics["consensus"][h], dtype=float)
    div = res.lane_diverged()[h]
    for s_, r_ in enumerate(rl.first_nonfinite_round(res)[h]):
        if r_ >= 0:  # from the round that went non-finite on the returns are meaningless
            ret[s_, r_:] = np.nan
            cons[s_, r_:] = np.nan
    meta = res.meta
    d = {"summary": summarize(ret, div), "curve_binned": binned(ret),
         "consensus_binned": binned(cons), "td_sq_final": float(
             np.asarray(res.metrics["td_sq"][h])[:, -final_window(ret.shape[1]):].mean()),
         "entropy_final": float(np.asarray(res.metrics["entropy"][h])[:, -1].mean()),
         "hparams": {k: float(v) for k, v in meta["hparams"][h]._asdict().items()},
         "compile_time_s": res.compile_time, "run_time_s": res.run_time, "wall_time_s": wall,
         "random_policy_return": meta["random_policy_return"], "graph": meta["graph"],
         "communication": meta["communication"],
         "config": __import__("dataclasses").asdict(meta["config"])}
    if meta["config"].track_central:
        w = final_window(ret.shape[1])
        for k in ("consensus_w", "consensus_w_ema", "value_err", "rhat_err"):
            v = np.array(res.metrics[k][h], dtype=float)  # (S, U)
            d[f"{k}_binned"] = binned(v)
            d[f"{k}_final_per_seed"] = v[:, -w:].mean(axis=1).tolist()
        va = np.array(res.metrics["value_err_agent"][h], dtype=float)  # (S, U, n)
        d["value_err_agent_final"] = va[:, -w:].mean(axis=1).tolist()  # (S, n)
    if extra:
        d.update(extra)
    return d


def figure_runs(fig: str, args):
    spec = FIGURES[fig]
    rounds = args.updates or (spec["quick_rounds"] if args.quick else spec["rounds"])
    seeds = list(range(args.seeds))
    runs, raw = {}, {}
    for n in spec["ns"]:
        graph = make_graph(args, n)
        print(f"{spec['title']}: n={n}, graph {graph!r} (spectral gap "
              f"{rl.graph_info(graph)['spectral_gap']:.3f}), {rounds} rounds x "
              f"{args.seeds} seeds", flush=True)
        if fig == "mechanism":
            algs = args.algorithms.split(",") if args.algorithms else spec["algorithms"]
            std = rl.team_reward_std(n)
            for c in spec["nuisance"]:
                for alg in algs:
                    kw = config_kwargs(args, n, nuisance=c)
                    kw["track_central"] = True
                    res, wall = run_one(alg, n, rounds, seeds, args, graph=graph,
                                        label=f"{DISPLAY[alg]} c={c:g}", config_kw=kw)
                    runs[f"{alg}@c={c:g}"] = entry(res, 0, wall, {
                        "algorithm": alg, "n": n, "nuisance_rel": c,
                        "nuisance_abs": kw.get("nuisance_scale", 0.0), "team_reward_std": std})
            continue
        if fig == "ablation":
            for lab, (ckw, hkw) in ABLATIONS.items():
                cfg = rl.ACConfig("slam_ac", n=n, **ckw)
                hp = rl.make_hparams(graph, **hkw)
                res, wall = run_one(cfg, n, rounds, seeds, args, hparams=[hp], graph=graph,
                                    label=lab)
                runs[lab] = entry(res, 0, wall, {"algorithm": "slam_ac", "n": n,
                                                 "setting": lab})
        elif fig == "6":
            hps, labels = [], []
            base = dict(actor_lr=rl.core.PAPER_ACTOR_STEP,
                        critic_lr=rl.core.PAPER_CRITIC_STEP_PER_SAMPLE * rl.core.DEFAULT_MINIBATCH,
                        rho=rl.core.PAPER_RHO)
            for panel, name, f in FIG6:
                kw = dict(base)
                if name:
                    kw[FIG6_FIELD[name]] = base[FIG6_FIELD[name]] * f
                hps.append(rl.make_hparams(graph, gamma_from=(base["critic_lr"], base["rho"]),
                                           **kw))
                labels.append("base" if not name else f"{name} x{f:g}")
            res, wall = run_one("slam_ac", n, rounds, seeds, args, hparams=hps, graph=graph,
                                label="SLAM-AC x7 settings")
            for h, lab in enumerate(labels):
                runs[lab] = entry(res, h, wall, {"algorithm": "slam_ac", "n": n,
                                                 "setting": lab})
                raw[lab] = res
        else:
            algs = (args.algorithms.split(",") if args.algorithms else spec["algorithms"])
            algs = algs + ([a for a in CONTROLS if a not in algs] if args.controls else [])
            if args.controls and fig == "7":
                algs = [a.replace("_ac", "_ppo") if a in CONTROLS else a for a in algs]
            for alg in algs:
                res, wall = run_one(alg, n, rounds, seeds, args, graph=graph)
                key = f"{alg}@n={n}" if len(spec["ns"]) > 1 else alg
                runs[key] = entry(res, 0, wall, {"algorithm": alg, "n": n})
                raw[key] = res
    return spec, rounds, runs


def comparisons(fig: str, runs: dict) -> list:
    out = []

    def add(a, b, label):
        if a not in runs or b not in runs:  # --algorithms left one of them out
            return
        for what in ("final", "auc"):
            p = paired(runs[a]["summary"][f"{what}_per_seed"],
                       runs[b]["summary"][f"{what}_per_seed"])
            out.append({"comparison": label, "metric": what, **p})

    if fig in ("1", "5"):
        ns = sorted({r["n"] for r in runs.values()})
        for n in ns:
            sfx = f"@n={n}" if fig == "5" else ""
            for base in ("dac", "mdac"):
                add(f"slam_ac{sfx}", f"{base}{sfx}",
                    f"SLAM-AC − {DISPLAY[base]}" + (f" (n={n})" if fig == "5" else ""))
    elif fig == "7":
        add("slam_ppo", "dec_ppo", "SLAM-PPO − Dec-PPO")
    elif fig == "6":
        for lab in runs:
            if lab != "base":
                add("base", lab, f"base − {lab}")
    elif fig == "ablation":
        for lab in runs:
            if lab != "as implemented":
                add("as implemented", lab, f"as implemented − [{lab}]")
    elif fig == "mechanism":
        for c in sorted({r["nuisance_rel"] for r in runs.values()}):
            a, b = f"slam_ac@c={c:g}", f"dac@c={c:g}"
            if a in runs and b in runs:
                # positive = DAC's error above SLAM-AC's (log10 ratio per seed)
                for m, lab in (("consensus_w", "‖Aw‖²"), ("consensus_w_ema", "‖A avg(w)‖²"),
                               ("value_err", "value err")):
                    la = np.log10(np.maximum(runs[a][f"{m}_final_per_seed"], 1e-30))
                    lb = np.log10(np.maximum(runs[b][f"{m}_final_per_seed"], 1e-30))
                    out.append({"comparison": f"log10 {lab}: DAC − SLAM-AC (c={c:g})",
                                "metric": "final", **paired(lb, la)})
    return out


# ----------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------
def print_mechanism(runs):
    print("\nCritic consensus ‖Aw‖² and error against the centralized critic (mean over the "
          "last 10% of rounds; mean ± std over seeds)")
    r0 = next(iter(runs.values()))
    print(f"graph {r0['graph']['kind']} n={r0['graph']['n']}: spectral gap "
          f"{r0['graph']['spectral_gap']:.3f}, λ_max(L) {r0['graph']['lam_max']:.3f}; "
          f"std(R) = {r0['team_reward_std']:.4f} per step")
    print(f"{'c/std(R)':>8s} {'algorithm':22s} {'‖Aw‖²':>20s} {'‖A avg(w)‖²':>20s} "
          f"{'value err':>20s} {'R̂ err':>18s} {'return':>16s} {'rounds/it':>9s}")
    for k, r in runs.items():
        cw, ce, ve, re = (_mstd(r[f"{m}_final_per_seed"]) for m in (
            "consensus_w", "consensus_w_ema", "value_err", "rhat_err"))
        s = r["summary"]
        cr = r["communication"]["rounds_per_iteration"]
        print(f"{r['nuisance_rel']:8.2f} {DISPLAY[r['algorithm']]:22s} {cw[0]:9.3g} ± {cw[1]:8.2g}"
              f" {ce[0]:9.3g} ± {ce[1]:8.2g}"
              f" {ve[0]:9.3g} ± {ve[1]:8.2g} {re[0]:8.3g} ± {re[1]:7.2g} "
              f"{s['final_mean']:7.2f} ± {s['final_std']:5.2f} {'all' if cr is None else cr:>9}")


def print_tables(fig, runs, comps):
    if fig == "mechanism":
        print_mechanism(runs)
    print(f"\nFinal reward (mean over the last 10% of rounds; mean ± std over seeds) — Fig. {fig}")
    names = {k: r.get("setting") or f"{DISPLAY[r['algorithm']]}" + (
        f" n={r['n']}" if fig == "5" else "") + (
        f" c={r['nuisance_rel']:g}" if "nuisance_rel" in r else "") for k, r in runs.items()}
    wd = max(24, *(len(v) for v in names.values()))
    print(f"{'run':{wd}s} {'final':>18s} {'AUC':>18s} {'initial':>9s} {'random':>8s} "
          f"{'wall s':>7s} {'diverged':>8s}")
    for k, r in runs.items():
        s = r["summary"]
        name = names[k]
        print(f"{name:{wd}s} {s['final_mean']:9.2f} ± {s['final_std']:5.2f} "
              f"{s['auc_mean']:9.2f} ± {s['auc_std']:5.2f} {s['initial_mean']:9.2f} "
              f"{r['random_policy_return']:8.2f} {r['wall_time_s']:7.0f} "
              f"{s['diverged_seeds']:>4d}/{len(s['final_per_seed'])}")
    if comps:
        print("\nPaired comparison over seeds (difference a − b; t = mean/(sd/√S))")
        wc = max(32, *(len(c["comparison"]) for c in comps))
        for c in comps:
            print(f"  {c['comparison']:{wc}s} {c['metric']:5s} mean {c['mean_diff']:+7.3f}  "
                  f"sd {c['sd_diff']:6.3f}  t({c['dof']}) {c['t_paired']:+6.2f}  "
                  f"ahead on {c['wins']}/{c['seeds']} seeds")


def plot(fig, spec, rounds, runs, path):
    plt = pyplot()

    def band(ax, r, label, color=None, ls="-"):
        cur = np.array(r["curve_binned"], dtype=float)  # (S, rounds/BIN), NaN after divergence
        x = (np.arange(cur.shape[1]) + 1) * BIN
        sm = smooth(cur)
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                m = np.nanmean(sm, 0)
                s = np.nanstd(sm, 0, ddof=1) if sm.shape[0] > 1 else np.zeros(sm.shape[1])
        s = np.nan_to_num(s)
        line, = ax.plot(x, m, label=label, color=color, ls=ls, lw=1.4)
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)

    colors = {"slam_ac": "C3", "dac": "C0", "mdac": "C2", "slam_ppo": "C3", "dec_ppo": "C0",
              "dac_extra_mixing": "C2", "mdac_fresh": "C4", "nocomm_ac": "C7",
              "central_ac": "k", "nocomm_ppo": "C7", "central_ppo": "k"}
    if fig == "mechanism":
        cs = sorted({r["nuisance_rel"] for r in runs.values()})
        f, axes = plt.subplots(2, len(cs), figsize=(4.2 * len(cs), 6.4), squeeze=False)
        for j, c in enumerate(cs):
            for k, r in runs.items():
                if r["nuisance_rel"] != c:
                    continue
                col = colors.get(r["algorithm"])
                for i, m in enumerate(("consensus_w", "value_err")):
                    if i == 0 and r["algorithm"] in ("slam_ac", "dac"):
                        v = np.maximum(np.array(r["consensus_w_ema_binned"], dtype=float),
                                       CONS_FLOOR)
                        x = (np.arange(v.shape[1]) + 1) * BIN
                        axes[0, j].semilogy(x, np.exp(np.nanmean(np.log(v), 0)), color=col,
                                            ls=":", label=f"{DISPLAY[r['algorithm']]} "
                                            "(moving avg. of w)")
                    v = np.maximum(np.array(r[f"{m}_binned"], dtype=float), CONS_FLOOR)
                    x = (np.arange(v.shape[1]) + 1) * BIN
                    axes[i, j].semilogy(x, np.exp(np.nanmean(np.log(v), 0)), color=col,
                                        label=DISPLAY[r["algorithm"]])
            axes[0, j].set_title(f"c = {c:g}·std(R)")
            for i in range(2):
                axes[i, j].grid(alpha=0.3)
                axes[1, j].set_xlabel("update round (16 episodes each)")
        axes[0, 0].set_ylabel(r"value-critic consensus $\|Aw\|^2$ (geo. mean)")
        axes[0, 0].set_title(axes[0, 0].get_title() + "\n(dotted: moving average of w)",
                             fontsize=9)
        axes[1, 0].set_ylabel("value error vs centralized critic")
        axes[0, 0].legend(fontsize=7)
    elif fig in ("1", "7"):
        f, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for k, r in runs.items():
            band(axes[0], r, DISPLAY[r["algorithm"]], colors[r["algorithm"]])
            c = np.maximum(np.array(r["consensus_binned"], dtype=float), CONS_FLOOR)
            x = (np.arange(c.shape[1]) + 1) * BIN
            axes[1].semilogy(x, np.exp(np.nanmean(np.log(c), 0)), color=colors[r["algorithm"]],
                             label=DISPLAY[r["algorithm"]])
        rand = next(iter(runs.values()))["random_policy_return"]
        axes[0].axhline(rand, color="gray", ls=":", lw=1, label="random policy")
        axes[0].set_ylabel("average episode return (25 steps)")
        axes[1].set_ylabel(r"critic consensus error $\|Ay\|^2$ (geo. mean)")
        axes[1].set_title(f"values below {CONS_FLOOR:g} (exact averaging) drawn at "
                          f"{CONS_FLOOR:g}", fontsize=8)
        for ax in axes:
            ax.set_xlabel("update round (16 episodes each)")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    elif fig == "5":
        ns = sorted({r["n"] for r in runs.values()})
        f, axes = plt.subplots(1, len(ns), figsize=(4.0 * len(ns), 3.6))
        for ax, n in zip(np.atleast_1d(axes), ns):
            for k, r in runs.items():
                if r["n"] == n:
                    band(ax, r, DISPLAY[r["algorithm"]], colors[r["algorithm"]])
            ax.axhline(next(r for r in runs.values() if r["n"] == n)["random_policy_return"],
                       color="gray", ls=":", lw=1, label="random policy")
            ax.set_title(f"n = {n}")
            ax.set_xlabel("update round")
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("average episode return")
        np.atleast_1d(axes)[0].legend(fontsize=8)
    elif fig == "ablation":
        f, ax = plt.subplots(1, 1, figsize=(6.5, 4.0))
        for i, (k, r) in enumerate(runs.items()):
            band(ax, r, k, f"C{i}")
        ax.axhline(next(iter(runs.values()))["random_policy_return"], color="gray", ls=":",
                   lw=1, label="random policy")
        ax.set_xlabel("update round (16 episodes each)")
        ax.set_ylabel("average episode return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    else:  # fig 6
        f, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, p, sym in zip(axes, ("alpha", "beta", "rho"),
                              (r"$1/\alpha$ (actor step)", r"$1/\beta$ (critic step)",
                               r"$\rho$")):
            band(ax, runs["base"], "× 1 (paper)", "C3")
            for fct, col in ((0.5, "C1"), (0.1, "C0")):
                band(ax, runs[f"{p} x{fct:g}"], f"× {fct:g}", col)
            ax.set_title(f"varying {sym}")
            ax.set_xlabel("update round")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("average episode return")
    how = ("geometric mean over seeds" if fig == "mechanism" else "mean ± std over seeds")
    f.suptitle(f"{spec['title']} — {how}, {rounds} rounds", fontsize=10)
    f.tight_layout()
    f.savefig(path, dpi=120)
    plt.close(f)


def run_figure(fig: str, args) -> dict:
    t0 = time.perf_counter()
    spec, rounds, runs = figure_runs(fig, args)
    comps = comparisons(fig, runs)
    wall = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "figure": fig, "title": spec["title"], "rounds": rounds, "seeds": args.seeds,
        "quick": bool(args.quick), "command": " ".join(sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "machine": {**machine_info(extra_packages=()), "loadavg_at_end": os.getloadavg()},
        "setting": {"episode_length": 25, "envs_per_round": 16, "iters_per_round": 8,
                    "minibatch": 50, "hidden": 20, "discount": 0.95,
                    "actor": "Adam, step 1e-4", "critic": "plain step 0.05 on the mean "
                    "(= 1e-3 per sample)", "rho": 0.1, "gamma": "auto (critical damping)",
                    "graph": "Erdős–Rényi G(n, 2 ln n / n), first connected draw from seed 0",
                    "critic_inputs": "positions + agent velocities (6n)",
                    "actor_inputs": "positions (4n)"},
        "wall_time_s": wall, "runs": runs, "paired": comps,
        "options": {"graph": args.graph, "actor": args.actor, "nuisance": args.nuisance,
                    "reward_split": args.reward_split, "controls": bool(args.controls),
                    "track_central": bool(args.track_central), "rho": args.rho,
                    "num_envs": args.num_envs,
                    "algorithms": args.algorithms},
    }
    if fig == "mechanism" or args.actor == "sgd":
        payload["setting"]["actor"] = f"plain SGD, step {SGD_ACTOR_STEP:g} on the minibatch mean"
    if args.graph != "er":
        payload["setting"]["graph"] = args.graph
    if args.rho is not None:
        payload["setting"]["rho"] = args.rho
    stem = fig if fig in ("ablation", "mechanism") else f"fig{fig}"
    write_json(out / f"{stem}.json", payload)
    print_tables(fig, runs, comps)
    if not args.no_plot:
        plot(fig, spec, rounds, runs, out / f"{stem}.png")
    print(f"\n{stem}: wall time {wall:.0f} s ({wall / 60:.1f} min); wrote "
          f"{out / f'{stem}.json'}" + ("" if args.no_plot else f" and {out / f'{stem}.png'}"),
          flush=True)
    return payload


def parse_args(argv=None):
    """Parsed options with the per-figure defaults filled in (``--graph`` er and ``--actor``
    adam for the paper figures, ring and sgd for ``mechanism``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figure", default="1",
                   choices=["1", "5", "6", "7", "all", "ablation", "mechanism"],
                   help="paper figure (all = 1, 7, 5, 6); 'ablation' = SLAM-AC design choices; "
                        "'mechanism' = critic consensus under reward heterogeneity (issue 13)")
    p.add_argument("--graph", default=None, choices=list(rl.GRAPH_KINDS),
                   help="communication graph (er: G(n, 2 ln n/n), the figures' default; "
                        "er_sparse: G(n, 1.2 ln n/n); ring — the mechanism's default)")
    p.add_argument("--actor", default=None, choices=["adam", "sgd"],
                   help="actor steps: adam 1e-4 (figures 1-7 default) or plain sgd 5e-3 on the "
                        "minibatch mean (Algorithm 2; the mechanism's default)")
    p.add_argument("--nuisance", type=float, default=0.0,
                   help="zero-sum reward heterogeneity c in units of std(R) (0: mpe2's rewards)")
    p.add_argument("--reward-split", default="shared", choices=["shared", "owner"],
                   help="owner: agent i owns landmark i's coverage term")
    p.add_argument("--controls", action="store_true",
                   help="add the no-communication and centralized-critic controls")
    p.add_argument("--track-central", action="store_true",
                   help="log ‖Aw‖² and the critics' errors against a reference centralized critic")
    p.add_argument("--rho", type=float, default=None, help="SLAM's ρ (default: the paper's 0.1)")
    p.add_argument("--num-envs", type=int, default=None,
                   help="episodes per update round (default 16; minibatch M = 25·E/8)")
    p.add_argument("--algorithms", default=None,
                   help="comma-separated algorithms (default: the figure's)")
    p.add_argument("--quick", action="store_true",
                   help="few rounds, unoptimised fast compile (a smoke run, minutes)")
    p.add_argument("--seeds", type=int, default=5, help="Monte-Carlo trials (5)")
    p.add_argument("--updates", type=int, default=None,
                   help="update rounds (default per figure: 6000 / 2000 / 3000 / 6000)")
    p.add_argument("--chunk", type=int, default=500, help="rounds per compiled chunk (500)")
    p.add_argument("--out", default=None,
                   help="output directory (results/; results/quick/ with --quick)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="redraw the PNG (and reprint the tables) from an existing JSON")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings (graph, actor, ACConfig and make_hparams "
                        "overrides per n of each figure) as JSON and exit")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.updates is not None and args.updates < 1:
        p.error("--updates must be >= 1")
    if args.chunk < 1:
        p.error("--chunk must be >= 1")
    if args.out is None:
        args.out = str(ROOT / "results" / "quick") if args.quick else str(ROOT / "results")
    mech = args.figure == "mechanism"
    args.graph = args.graph or ("ring" if mech else "er")
    args.actor = args.actor or ("sgd" if mech else "adam")
    if args.nuisance < 0:
        p.error("--nuisance must be >= 0")
    if args.num_envs is not None and args.num_envs < 1:
        p.error("--num-envs must be >= 1")
    if args.rho is not None and not args.rho > 0:
        p.error("--rho must be > 0")
    if args.algorithms:
        for a in args.algorithms.split(","):
            try:
                rl.canonical_algorithm(a)
            except ValueError as e:
                p.error(str(e))
    return args


def resolved_config(args, figs) -> dict:
    """What the runs of ``figs`` would use: the graph kind and actor, and per figure and n the
    ACConfig and make_hparams overrides and the graph's kind (``--print-config``)."""
    return {"graph": args.graph, "actor": args.actor, "hparam_kwargs": hparam_kwargs(args),
            "figures": {fig: {str(n): {"config_kwargs": config_kwargs(args, n),
                                       "graph_kind": make_graph(args, n).kind}
                              for n in FIGURES[fig]["ns"]} for fig in figs}}


def main(argv=None) -> int:
    args = parse_args(argv)
    figs = ["1", "7", "5", "6"] if args.figure == "all" else [args.figure]
    if args.print_config:
        print(json.dumps(resolved_config(args, figs)))
        return 0
    if args.replot:
        for fig in figs:
            stem = fig if fig in ("ablation", "mechanism") else f"fig{fig}"
            d = json.loads((Path(args.out) / f"{stem}.json").read_text())
            print_tables(fig, d["runs"], d["paired"])
            plot(fig, FIGURES[fig], d["rounds"], d["runs"], Path(args.out) / f"{stem}.png")
            print(f"redrew {Path(args.out) / f'{stem}.png'}")
        return 0
    print(f"navigation experiments {figs}: jax {jax.__version__} on {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    for fig in figs:
        run_figure(fig, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
