"""Cooperative navigation comparisons that can tell the algorithms apart (issue 13).

    python experiments/navigation_hetero.py              # everything, < 45 min on 2 cores
    python experiments/navigation_hetero.py --quick      # smoke run (CI, < 2 min)
    python experiments/navigation_hetero.py --part mechanism|returns|ppo
    python experiments/navigation_hetero.py --replot     # tables + figures from the JSON
    slamjax reproduce navigation_hetero                  # = the first line

The paper-figure runs (``experiments/navigation.py``) tie because the agents barely differ and
the graph at n = 3 is complete. Here every comparison states its
heterogeneity and its graph and carries both controls:

* **heterogeneity**: mpe2's rewards plus a zero-sum nuisance r_i = R_i + c·ξ_i(s), Σ_i ξ_i = 0
  (``NavigationEnv(nuisance_scale=...)``): it changes no one's optimum and leaves the team
  reward R = (1/n) Σ_i r_i unchanged, only what each agent's critic sees. c in units of std(R),
  the per-step std of the team reward under the random policy. The reported return is always
  the team average.
* **graphs**: ring and Erdős–Rényi just above the connectivity threshold
  (G(n, 1.2 ln n / n), first connected draw), n = 6, 8, 10; spectral gap 1 − |λ₂(W)| of the
  Metropolis matrix and λ_max(L) recorded per run.
* **controls**: no communication (each agent fits its own reward) and a centralized critic
  fitted to the team reward (exact averaging).

Three parts:

1. ``mechanism`` — the critics' consensus error without sampling noise. The policy is frozen
   (uniformly random), one dataset of 16 episodes is drawn per (graph, c) and every critic rule
   takes full-batch steps on it (:mod:`slamjax.rl.evaluation`): SLAM (ρ = 0.1 with γ auto and
   γ = 1, ρ = 1 with γ auto), DAC's DGD step with one Metropolis round and DGD with 10 rounds
   (MDAC's communication per iteration); c ∈ {0, 0.5, 1}, every graph. (No communication is
   left out here: its disagreement is the spread of independent networks, ~10³; the training
   runs report it.)
   Prediction: DGD's ‖Aw‖² plateaus ∝ c² and grows with 1/(spectral gap); SLAM's has no
   heterogeneity term.
2. ``returns`` (Figs 1 and 5 redone): SLAM-AC (ρ = 0.1 as the paper and ρ = 1, γ auto), DAC,
   MDAC (Chen et al.: fresh B = 10 minibatch per inner step, 5 inner steps, 5 extra mixings)
   and both controls; nuisance c = 1·std(R); n = 6, 8, 10 on both graphs; plain SGD actor steps
   as Algorithm 2 (1e-4 per sample = 5e-3 on the minibatch mean of 50), critic 1e-3 per sample
   (0.05 on the mean); 16 episodes (400 environment steps) per update round for every
   algorithm; ≥ 10 seeds vmapped, the same seeds (initial networks, first episodes) for every
   algorithm, so differences are paired. Every run also trains a reference centralized critic
   on the same minibatches and logs each agent's critic error against it and ‖Aw‖².
3. ``ppo`` (Fig 7 redone): SLAM-PPO (ρ = 0.1 and 1) against Dec-PPO and the PPO controls,
   n = 6, both graphs, same setting.

Reported per run: final return (mean over the last 10 % of the rounds) and area under the
curve (mean over all rounds) per seed; per comparison the paired difference with its 95 %
t-interval over the seeds. A seed whose networks produce NaN/Inf is frozen and counted as
diverged (column "diverged"); its return is left out of the means and of the paired
differences (so a method that diverges often is *flattered* by its mean: read both columns). Outputs: ``results/nav_hetero.json`` (everything, per-seed
curves binned over 10 rounds), ``results/nav_hetero.md`` (tables), PNG figures
``nav_hetero_mechanism.png``, ``nav_hetero_fig1.png`` (curves against environment steps,
n = 6), ``nav_hetero_fig5.png`` (final return with 95 % intervals per n and graph),
``nav_hetero_fig7.png``. ``--quick`` writes to ``results/quick/``.
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
import jax.numpy as jnp  # noqa: E402

from _common import machine_info, out_dir_error, pyplot, replot, write_json  # noqa: E402
from navigation import smooth  # noqa: E402  (the figures' moving average)

import slamjax.rl as rl  # noqa: E402
from slamjax.rl.core import DISPLAY  # noqa: E402
from slamjax.rl.evaluation import critic_fixed_points, random_policy_dataset  # noqa: E402
from slamjax.rl.stats import ci95, ordering, paired_ci, t_quantile  # noqa: E402

BIN = 10  # rounds per stored point of the per-seed curves (as experiments/navigation.py)
ENV_STEPS_PER_ROUND = 16 * 25
SGD_ACTOR_STEP = 5e-3  # 1e-4 per sample on the minibatch mean of 50
PARTS = ("mechanism", "returns", "ppo")
AC_ALGS = ["slam_ac", "dac", "mdac_fresh", "nocomm_ac", "central_ac"]
PPO_ALGS = ["slam_ppo", "dec_ppo", "nocomm_ppo", "central_ppo"]
FULL = dict(ns=[6, 8, 10], graphs=["ring", "er_sparse"], seeds=10, rounds=500,
            ppo_ns=[6], ppo_algs=PPO_ALGS, mech_iters=600, mech_seeds=2, mech_envs=16,
            nuisance=1.0)
#: the CI smoke run: every part and every code path, tiny (the PPO controls are the AC
#: controls' critic rules, exercised by the returns part)
QUICK = dict(ns=[4], graphs=["ring"], seeds=2, rounds=20, ppo_ns=[4],
             ppo_algs=["slam_ppo", "dec_ppo"], mech_iters=100, mech_seeds=2, mech_envs=4,
             nuisance=1.0)
MECH_C = (0.0, 0.5, 1.0)
#: SLAM lanes: label -> (rho, gamma)
SLAM_LANES = {"ρ=0.1": (0.1, "auto"), "ρ=1": (1.0, "auto")}
MECH_SLAM_LANES = {"ρ=0.1, γ auto": (0.1, "auto"), "ρ=0.1, γ=1": (0.1, 1.0),
                   "ρ=1, γ auto": (1.0, "auto")}


# ----------------------------------------------------------------------------------------
# part 1: the mechanism on a fixed dataset
# ----------------------------------------------------------------------------------------
def _stack(trees):
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def mechanism(cfg: dict, progress=print, out=None, save=None, fast_compile=False) -> dict:
    """Full-batch critic iterations on fixed random-policy datasets, every graph and c.
    ``out`` is filled per graph (and ``save()`` called after each) so a long run keeps what
    is done."""
    out = {} if out is None else out
    opts = rl.train.FAST_COMPILE if fast_compile else None
    iters, log_every = cfg["mech_iters"], max(1, cfg["mech_iters"] // 20)
    keys = jax.random.split(jax.random.key(0), cfg["mech_seeds"])
    for kind in cfg["graphs"]:
        for n in cfg["ns"]:
            g = rl.make_rl_graph(kind, n)
            info = rl.graph_info(g)
            t0 = time.perf_counter()
            cfgs = [rl.ACConfig("slam_ac", n=n, nuisance_scale=rl.nuisance_scale(n, c))
                    for c in MECH_C]
            data = _stack([random_policy_dataset(c_, jax.random.key(1), cfg["mech_envs"])
                           for c_ in cfgs])
            lanes = {}
            slam_hp = _stack([rl.make_hparams(g, rho=r, gamma=gm)
                              for r, gm in MECH_SLAM_LANES.values()])
            plain = _stack([rl.make_hparams(g)])
            for rule, mr, hps, labels in (
                    ("slam", 1, slam_hp, [f"SLAM {k}" for k in MECH_SLAM_LANES]),
                    ("dgd", 1, plain, ["DAC (DGD, 1 mixing round)"]),
                    ("dgd", 10, plain, ["DGD, 10 mixing rounds (MDAC's budget)"])):
                def f(hp, b, k, rule=rule, mr=mr):
                    return critic_fixed_points(cfgs[0], g, hp, b, k, iters, rule=rule,
                                               mixing_rounds=mr, log_every=log_every)[1]
                fn = jax.jit(jax.vmap(jax.vmap(jax.vmap(f, (None, None, 0)), (None, 0, None)),
                                      (0, None, None)))
                fn = fn.lower(hps, data, keys).compile(compiler_options=opts)
                log = jax.tree.map(np.asarray, fn(hps, data, keys))  # (H, C, S, T)
                for h, lab in enumerate(labels):
                    for i, c in enumerate(MECH_C):
                        w = log.consensus_w[h, i]
                        lanes[f"{lab} @c={c:g}"] = {
                            "label": lab, "c": c, "rule": rule, "mixing_rounds": mr,
                            "consensus_w_curve": np.exp(np.mean(np.log(np.maximum(
                                w, 1e-30)), axis=0)).tolist(),
                            "consensus_w_final_per_seed": w[:, -1].tolist(),
                            "consensus_phi_final_per_seed": log.consensus_phi[h, i][:, -1]
                            .tolist(),
                            "td_sq_final": float(log.td_sq[h, i][:, -1].mean())}
            key = f"{kind}@n={n}"
            out[key] = {"graph": {k: v for k, v in info.items() if k != "edges"},
                        "iterations": iters, "log_every": log_every,
                        "seeds": cfg["mech_seeds"], "transitions": cfg["mech_envs"] * 25,
                        "team_reward_std": rl.team_reward_std(n), "lanes": lanes,
                        "wall_time_s": time.perf_counter() - t0}
            progress(f"  mechanism {key}: spectral gap {info['spectral_gap']:.3f}, "
                     f"{time.perf_counter() - t0:.0f} s")
            if save:
                save()
    return out


# ----------------------------------------------------------------------------------------
# parts 2 and 3: training runs
# ----------------------------------------------------------------------------------------
def _entry(res, h, wall) -> dict:
    """Per-seed final / AUC returns, binned curves, critic metrics of lane ``h``."""
    ret = np.array(res.metrics["return"][h], dtype=float)  # (S, U)
    for s_, r_ in enumerate(rl.first_nonfinite_round(res)[h]):
        if r_ >= 0:  # from the round that went non-finite on
            ret[s_, r_:] = np.nan
    U = ret.shape[1]
    w = max(1, U // 10)
    k = U // BIN if U >= BIN else 0

    def binned(v):
        if k == 0:
            return v.tolist()
        return v[:, :k * BIN].reshape(v.shape[0], k, BIN).mean(axis=2).tolist()

    d = {"final_per_seed": ret[:, -w:].mean(axis=1).tolist(),
         "auc_per_seed": ret.mean(axis=1).tolist(), "curve_binned": binned(ret),
         "bin_rounds": BIN if k else 1,
         "diverged_at": [int(x) for x in res.lane_diverged()[h]],  # rounds done, −1: finite
         "hparams": {kk: float(v) for kk, v in res.meta["hparams"][h]._asdict().items()},
         "random_policy_return": res.meta["random_policy_return"],
         "compile_time_s": res.compile_time, "run_time_s": res.run_time, "wall_time_s": wall,
         "communication": res.meta["communication"]}
    if res.meta["config"].track_central:
        for m in ("consensus_w", "value_err"):
            v = np.array(res.metrics[m][h], dtype=float)
            d[f"{m}_final_per_seed"] = v[:, -w:].mean(axis=1).tolist()
            d[f"{m}_binned"] = binned(v)
    return d


def train_part(cfg: dict, algs: list, ns: list, args, progress=print, out=None,
               save=None) -> dict:
    """Training runs of ``algs`` for every graph and n; ``out`` is filled per (graph, n) and
    ``save()`` called after each."""
    out = {} if out is None else out
    for kind in cfg["graphs"]:
        for n in ns:
            g = rl.make_rl_graph(kind, n)
            info = {k: v for k, v in rl.graph_info(g).items() if k != "edges"}
            c_abs = rl.nuisance_scale(n, cfg["nuisance"])
            runs = {}
            for alg in algs:
                if alg.startswith("slam"):
                    lanes = {f"{DISPLAY[alg]} {lab}": rl.make_hparams(
                        g, actor_lr=SGD_ACTOR_STEP, rho=r, gamma=gm)
                        for lab, (r, gm) in SLAM_LANES.items()}
                else:
                    lanes = {DISPLAY[alg]: rl.make_hparams(g, actor_lr=SGD_ACTOR_STEP)}
                t0 = time.perf_counter()
                res = rl.run(alg, g, hparams=list(lanes.values()), seeds=cfg["seeds"],
                             num_updates=cfg["rounds"], chunk=args.chunk,
                             progress=not args.no_progress,
                             desc=f"{DISPLAY[alg]} {kind} n={n}", fast_compile=args.quick,
                             n=n, actor_optimizer="sgd", nuisance_scale=c_abs,
                             track_central=True)
                wall = time.perf_counter() - t0
                for h, lab in enumerate(lanes):
                    runs[lab] = {"algorithm": alg, **_entry(res, h, wall / len(lanes))}
                progress(f"  {DISPLAY[alg]} {kind} n={n}: compile {res.compile_time:.0f} s, "
                         f"run {res.run_time:.0f} s")
            out[f"{kind}@n={n}"] = {"graph": info, "n": n, "nuisance_rel": cfg["nuisance"],
                                    "nuisance_abs": c_abs, "runs": runs,
                                    "comparisons": compare(runs)}
            if save:
                save()
    return out


def compare(runs: dict) -> list:
    """Every SLAM lane against every other method and both controls, final and AUC; and the
    ordering by final return."""
    slam = [k for k, r in runs.items() if r["algorithm"].startswith("slam")]
    out = []
    for a in slam:
        for b in runs:
            if b in slam:
                continue
            for m in ("final", "auc"):
                out.append({"a": a, "b": b, "metric": m,
                            **paired_ci(runs[a][f"{m}_per_seed"], runs[b][f"{m}_per_seed"])})
    return out


# ----------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------
def _finite_mean(x) -> float:
    """Mean of the finite entries (NaN if there are none: every seed diverged)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def tables(payload: dict) -> str:
    L = [f"# Navigation comparisons (issue 13) — {payload['date']}", "",
         f"Setting: {payload['setting']}", ""]
    mech = payload.get("mechanism")
    if mech:
        L += ["## Mechanism: critic consensus error ‖Aw‖² on a fixed dataset (full-batch, "
              "frozen random policy; final value, geometric mean over seeds)", "",
              "| graph | n | gap | λ_max | rule | c = 0 | c = 0.5 | c = 1 |", "|---|---|---|---|---|---|---|---|"]
        for key, m in mech.items():
            labels = dict.fromkeys(ln["label"] for ln in m["lanes"].values())
            for lab in labels:
                vals = []
                for c in MECH_C:
                    v = np.asarray(m["lanes"][f"{lab} @c={c:g}"]["consensus_w_final_per_seed"])
                    vals.append(f"{np.exp(np.mean(np.log(np.maximum(v, 1e-30)))):.2e}")
                gi = m["graph"]
                L.append(f"| {gi['kind']} | {gi['n']} | {gi['spectral_gap']:.3f} | "
                         f"{gi['lam_max']:.2f} | {lab} | " + " | ".join(vals) + " |")
        L.append("")
    for part, title in (("returns", "Figs 1 and 5 redone"), ("ppo", "Fig 7 redone")):
        res = payload.get(part)
        if not res:
            continue
        L += [f"## {title}: team return, c = {payload['cfg']['nuisance']:g}·std(R), "
              f"{payload['cfg']['seeds']} seeds, {payload['cfg']['rounds']} rounds "
              f"({payload['cfg']['rounds'] * ENV_STEPS_PER_ROUND:,} env steps)", "",
              "| graph | n | gap | method | final (95 % CI) | AUC (95 % CI) | ‖Aw‖² | value err | "
              "comm rounds/it | diverged |", "|---|---|---|---|---|---|---|---|---|---|"]
        for key, blk in res.items():
            gi = blk["graph"]
            for lab, r in blk["runs"].items():
                f, a = ci95(r["final_per_seed"]), ci95(r["auc_per_seed"])
                # critic metrics over the seeds that did not diverge
                cw = _finite_mean(r.get("consensus_w_final_per_seed", []))
                ve = _finite_mean(r.get("value_err_final_per_seed", []))
                cr = r["communication"]["rounds_per_iteration"]
                div = sum(x >= 0 for x in r["diverged_at"])
                L.append(f"| {gi['kind']} | {gi['n']} | {gi['spectral_gap']:.3f} | {lab} | "
                         f"{f['mean']:.2f} ± {f['ci95']:.2f} | {a['mean']:.2f} ± {a['ci95']:.2f}"
                         f" | {cw:.3g} | {ve:.3g} | {'all-reduce' if cr is None else cr} | "
                         f"{div}/{len(r['diverged_at'])} |")
            means = {lab: ci95(r["final_per_seed"])["mean"] for lab, r in blk["runs"].items()}
            L.append(f"| | | | **ordering (final)** | {ordering(means)} | | | | | |")
        L += ["", "Paired differences a − b over seeds (95 % t-interval; 'tie' = the interval "
              "contains 0):", "", "| graph | n | a | b | metric | mean diff | 95 % CI | wins | "
              "verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for key, blk in res.items():
            gi = blk["graph"]
            for c in blk["comparisons"]:
                L.append(f"| {gi['kind']} | {gi['n']} | {c['a']} | {c['b']} | {c['metric']} | "
                         f"{c['mean']:+.3f} | [{c['lo']:+.3f}, {c['hi']:+.3f}] | "
                         f"{c['wins']}/{c['seeds']} | {c['verdict']} |")
        L.append("")
    return "\n".join(L)


COLORS = {"slam": "C3", "dac": "C0", "dec": "C0", "mdac": "C2", "no": "C7", "cen": "k"}


def _color(lab: str, alg: str) -> tuple:
    ls = ":" if "ρ=1" in lab else "-"
    for k, c in COLORS.items():
        if alg.startswith(k):
            return c, ls
    return None, ls


def plot_mechanism(mech: dict, path: Path):
    plt = pyplot()
    f, axes = plt.subplots(1, 3, figsize=(14, 4))
    first = next(iter(mech.values()))
    cols = {"SLAM ρ=0.1, γ auto": "C3", "SLAM ρ=0.1, γ=1": "C1", "SLAM ρ=1, γ auto": "C5",
            "DAC (DGD, 1 mixing round)": "C0", "DGD, 10 mixing rounds (MDAC's budget)": "C2",
            "no communication": "C7"}
    # (a) curves at c = 1 on the first graph
    for lane in first["lanes"].values():
        if lane["c"] != 1.0:
            continue
        y = np.asarray(lane["consensus_w_curve"])
        x = (np.arange(len(y)) + 1) * first["log_every"]
        axes[0].semilogy(x, np.maximum(y, 1e-16), color=cols.get(lane["label"]),
                         label=lane["label"])
    g0 = first["graph"]
    axes[0].set_title(f"{g0['kind']} n={g0['n']} (gap {g0['spectral_gap']:.2f}), c = 1·std(R)",
                      fontsize=9)
    axes[0].set_xlabel("full-batch critic iteration")
    axes[0].set_ylabel(r"$\|Aw\|^2$ (geo. mean over seeds)")
    axes[0].legend(fontsize=7)
    # (b) final vs c on the first graph
    for lab in dict.fromkeys(ln["label"] for ln in first["lanes"].values()):
        ys = [np.exp(np.mean(np.log(np.maximum(first["lanes"][f"{lab} @c={c:g}"][
            "consensus_w_final_per_seed"], 1e-30)))) for c in MECH_C]
        axes[1].semilogy(MECH_C, np.maximum(ys, 1e-16), "o-", color=cols.get(lab), label=lab)
    axes[1].set_xlabel("nuisance c / std(R)")
    axes[1].set_title("final ‖Aw‖² against the heterogeneity", fontsize=9)
    # (c) final vs 1/gap at c = 1 across graphs
    for lab in dict.fromkeys(ln["label"] for ln in first["lanes"].values()):
        if lab == "no communication":
            continue
        xs, ys, mk = [], [], []
        for m in mech.values():
            v = m["lanes"][f"{lab} @c=1"]["consensus_w_final_per_seed"]
            xs.append(1.0 / m["graph"]["spectral_gap"])
            ys.append(np.exp(np.mean(np.log(np.maximum(v, 1e-30)))))
        o = np.argsort(xs)
        axes[2].loglog(np.asarray(xs)[o], np.maximum(np.asarray(ys)[o], 1e-16), "o-",
                       color=cols.get(lab), label=lab)
    axes[2].set_xlabel("1 / spectral gap of W (ring and sparse ER, n = 6, 8, 10)")
    axes[2].set_title("final ‖Aw‖² at c = 1·std(R) against the graph", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    f.suptitle("Critic consensus on a fixed dataset (frozen random policy): DGD plateaus at a bias "
               "∝ c² that grows with 1/gap; SLAM has no fixed-point bias, but its duals lag the "
               "moving TD problem when ρ·μ_min(L) is small", fontsize=10)
    f.tight_layout()
    f.savefig(path, dpi=110)
    plt.close(f)


def plot_curves(res: dict, path: Path, title: str, n_show: int):
    """Team return against environment steps (mean and 95 % band over seeds), one panel per
    graph at n = n_show."""
    plt = pyplot()
    blocks = [b for b in res.values() if b["n"] == n_show]
    f, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 4), squeeze=False)
    for ax, blk in zip(axes[0], blocks):
        for lab, r in blk["runs"].items():
            cur = np.asarray(r["curve_binned"], float)
            sm = smooth(cur)
            S = sm.shape[0]
            m = np.nanmean(sm, 0)
            h = t_quantile(S - 1) * np.nanstd(sm, 0, ddof=1) / math.sqrt(S) if S > 1 else 0 * m
            x = (np.arange(cur.shape[1]) + 1) * r["bin_rounds"] * ENV_STEPS_PER_ROUND
            col, ls = _color(lab, r["algorithm"])
            line, = ax.plot(x, m, color=col, ls=ls, lw=1.3, label=lab)
            ax.fill_between(x, m - h, m + h, color=line.get_color(), alpha=0.15, lw=0)
        rr = next(iter(blk["runs"].values()))["random_policy_return"]
        ax.axhline(rr, color="gray", ls="--", lw=0.8, label="random policy")
        gi = blk["graph"]
        ax.set_title(f"{gi['kind']} n={gi['n']}: gap {gi['spectral_gap']:.3f}, "
                     f"c = {blk['nuisance_rel']:g}·std(R)", fontsize=9)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("team return per episode (mean, 95 % band)")
    f.suptitle(title, fontsize=10)
    f.tight_layout()
    f.savefig(path, dpi=110)
    plt.close(f)


def plot_finals(res: dict, path: Path, title: str):
    """Final return with 95 % intervals, per (graph, n) and method."""
    plt = pyplot()
    kinds = list(dict.fromkeys(b["graph"]["kind"] for b in res.values()))
    f, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        blocks = [b for b in res.values() if b["graph"]["kind"] == kind]
        labs = list(dict.fromkeys(lab for b in blocks for lab in b["runs"]))
        wdt = 0.8 / len(labs)
        for j, lab in enumerate(labs):
            xs, ms, hs = [], [], []
            for i, b in enumerate(blocks):
                if lab in b["runs"]:
                    c = ci95(b["runs"][lab]["final_per_seed"])
                    xs.append(i + (j - (len(labs) - 1) / 2) * wdt)
                    ms.append(c["mean"])
                    hs.append(c["ci95"])
            alg = next(b["runs"][lab]["algorithm"] for b in blocks if lab in b["runs"])
            col, ls = _color(lab, alg)
            ax.errorbar(xs, ms, yerr=hs, fmt="o" if ls == "-" else "s", color=col, capsize=3,
                        label=lab, ms=4)
        ax.set_xticks(range(len(blocks)))
        ax.set_xticklabels([f"n={b['n']}\ngap {b['graph']['spectral_gap']:.2f}" for b in blocks])
        ax.set_title(f"{kind}", fontsize=9)
        ax.set_ylabel("final team return (95 % CI over seeds)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    f.suptitle(title, fontsize=10)
    f.tight_layout()
    f.savefig(path, dpi=110)
    plt.close(f)


def render(payload: dict, out: Path):
    (out / "nav_hetero.md").write_text(tables(payload))
    if payload.get("mechanism"):
        plot_mechanism(payload["mechanism"], out / "nav_hetero_mechanism.png")
    cfg = payload["cfg"]
    if payload.get("returns"):
        n0 = cfg["ns"][0]
        plot_curves(payload["returns"], out / "nav_hetero_fig1.png",
                    f"Fig. 1 redone: n = {n0}, zero-sum reward heterogeneity, "
                    f"{cfg['seeds']} seeds", n0)
        plot_finals(payload["returns"], out / "nav_hetero_fig5.png",
                    f"Fig. 5 redone: final team return, c = {cfg['nuisance']:g}·std(R), "
                    f"{cfg['seeds']} seeds, {cfg['rounds']} rounds")
    if payload.get("ppo"):
        plot_curves(payload["ppo"], out / "nav_hetero_fig7.png",
                    f"Fig. 7 redone: SLAM-PPO vs Dec-PPO, n = {cfg['ppo_ns'][0]}, "
                    f"{cfg['seeds']} seeds", cfg["ppo_ns"][0])


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all", choices=list(PARTS) + ["all"])
    p.add_argument("--quick", action="store_true", help="smoke run (n = 4 ring, 2 seeds, "
                   "20 rounds; fast compile) into results/quick/")
    p.add_argument("--ns", default=None, help="comma-separated n (default 6,8,10)")
    p.add_argument("--graphs", default=None, help="comma-separated: ring,er_sparse (default)")
    p.add_argument("--seeds", type=int, default=None, help="seeds (default 10)")
    p.add_argument("--rounds", type=int, default=None,
                   help="update rounds of 16 episodes (default 500)")
    p.add_argument("--nuisance", type=float, default=None,
                   help="zero-sum reward heterogeneity c in units of std(R) (default 1)")
    p.add_argument("--chunk", type=int, default=200, help="rounds per compiled chunk")
    p.add_argument("--out", default=None, help="output directory (results/)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="rewrite the tables and figures from the existing JSON")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.ns:
        try:
            cfg["ns"] = [int(v) for v in args.ns.split(",")]
        except ValueError:
            p.error(f"--ns must be comma-separated integers, got {args.ns!r}")
        if any(n < 3 for n in cfg["ns"]):
            p.error("--ns: every n must be >= 3 (a ring needs 3 agents)")
        cfg["ppo_ns"] = cfg["ns"][:1]
    if args.graphs:
        cfg["graphs"] = [g.strip() for g in args.graphs.split(",")]
        for g in cfg["graphs"]:
            if g not in rl.GRAPH_KINDS:
                p.error(f"--graphs: unknown graph {g!r}; choose from {rl.GRAPH_KINDS}")
    if args.seeds is not None:
        if args.seeds < 2:
            p.error("--seeds must be >= 2 (a confidence interval needs two seeds)")
        cfg["seeds"] = args.seeds
    if args.rounds is not None:
        if args.rounds < 1:
            p.error("--rounds must be >= 1")
        cfg["rounds"] = args.rounds
    if args.nuisance is not None:
        if not (args.nuisance >= 0 and math.isfinite(args.nuisance)):
            p.error("--nuisance must be a finite number >= 0")
        cfg["nuisance"] = args.nuisance
    if args.chunk < 1:
        p.error("--chunk must be >= 1")
    if args.out is None:
        args.out = str(ROOT / "results" / ("quick" if args.quick else ""))
    return args, cfg


def main(argv=None) -> int:
    args, cfg = parse_args(argv)
    out = Path(args.out)
    if out_dir_error(out, "navigation_hetero"):
        return 2
    if args.replot:
        return replot(out / "nav_hetero.json", "navigation_hetero",
                      lambda payload: (render(payload, out), print(tables(payload))))
    out.mkdir(parents=True, exist_ok=True)
    parts = PARTS if args.part == "all" else (args.part,)
    print(f"navigation_hetero {parts}: jax {jax.__version__} on {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {cfg}", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    payload = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "quick": bool(args.quick), "cfg": cfg,
               "setting": (f"zero-sum nuisance c·ξ_i(s) on mpe2 rewards; plain SGD actors "
                           f"{SGD_ACTOR_STEP:g} on the minibatch mean (1e-4 per sample), "
                           "critic 0.05 on the mean (1e-3 per sample), γ_d 0.95, SLAM γ auto "
                           "(critical damping) unless stated, 16 episodes = 400 env steps per "
                           "round, K = 8 iterations per round; graphs ring and G(n, 1.2 ln n/n)"),
               "machine": machine_info(extra_packages=("scipy",)), "wall_time_s": {}}
    path = out / "nav_hetero.json"
    if path.exists() and args.part != "all":  # keep the other parts of an earlier run
        old = json.loads(path.read_text())
        for k in PARTS:
            if k in old and k not in parts:
                payload[k] = old[k]
    for part in parts:
        tp = time.perf_counter()
        print(f"\n== {part} ==", flush=True)
        payload[part] = {}
        kw = dict(progress=lambda s: print(s, flush=True), out=payload[part],
                  save=lambda: write_json(path, payload))  # a crash keeps what is done
        if part == "mechanism":
            mechanism(cfg, fast_compile=args.quick, **kw)
        elif part == "returns":
            train_part(cfg, AC_ALGS, cfg["ns"], args, **kw)
        else:
            train_part(cfg, cfg["ppo_algs"], cfg["ppo_ns"], args, **kw)
        payload["wall_time_s"][part] = time.perf_counter() - tp
        write_json(path, payload)
    payload["wall_time_s"]["total"] = time.perf_counter() - t0
    payload["cpu_time_s"] = time.process_time() - c0
    payload["loadavg_at_end"] = os.getloadavg()
    write_json(path, payload)
    render(payload, out)
    print(tables(payload))
    print(f"\nwall time {payload['wall_time_s']['total'] / 60:.1f} min (CPU "
          f"{payload['cpu_time_s'] / 60:.1f} min); wrote {path}, nav_hetero.md and figures",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
