"""Pursuit-evasion: SLAM-AC against CAC and MDAC with partial parameter sharing (paper Figs 2
and 4, supplement C.3), with the no-communication and centralized controls.

    python experiments/pursuit.py                 # Figs 2 and 4 (= slamjax reproduce pursuit)
    python experiments/pursuit.py --figs fig2     # one figure (= slamjax reproduce fig2)
    python experiments/pursuit.py --quick         # CI smoke: tiny, fast compile, results/quick/
    python experiments/pursuit.py --replot        # tables and figures from results/pursuit.json

Setting (every number is also written to ``results/pursuit.json``):

* environment: :class:`slamjax.envs.PursuitEnv` with the paper's rules — 15 × 15 grid with the
  rectangle obstacles, capture by 2 pursuers on the evader's cell, capture reward 5, tag reward
  0.1, **per-pursuer rewards** (the heterogeneity: each pursuer is paid for its own captures and
  tags); 8 pursuers and 30 evaders by default (``--pursuers/--evaders``; with 4 and 4 a random
  team catches 1 % of the evaders per 100-step episode and no method learned in our pilots, see
  the README), 100-step episodes;
* graph: ring over the pursuers (the paper's; λ_max = 4, spectral gap stated in the JSON);
* networks: per-agent CNNs (:mod:`slamjax.rl.cnn`): a value critic on the 3 × 15 × 15 global
  state (output layer initialised to 0) and actors reading the reference's 7 × 7 local view;
  the actor's TD error uses the agent's own observed reward, R_i + γ_d V(s'; w_i) − V(s; w_i)
  (``advantage_reward="local"``; the paper's reward estimator R̂ did not learn within the
  budget — :mod:`slamjax.rl.pursuit_ac` and the README give the pilots);
* Fig 2: consensus on the actor's first convolution ``conv1`` and on both critics; Fig 4:
  consensus on the critics only; the same scheme for every algorithm;
* step sizes: plain steps; critic 1e-3 per sample (paper), ρ = 5 (paper), γ's by critical
  damping, discount γ_d = 0.95; the actor step is **tuned per method** on one grid (``--tune-steps``, per sample) in
  a pilot on separate seeds (Fig 2's sharing scheme; Fig 4 reuses each algorithm's choice);
* ``--seeds`` (10) seeds vmapped and paired across methods (same initial networks, same
  environment streams); final = mean of the last ``--final-window`` rounds; AUC = mean over all
  rounds; 95 % t-intervals; paired per-seed differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

from _common import machine_info, out_dir_error, pyplot, replot, write_json  # noqa: E402
from navigation import smooth  # noqa: E402

from slamjax.rl import pursuit_ac as P  # noqa: E402
from slamjax.rl.stats import ci95, ordering, paired_ci  # noqa: E402
from slamjax.slam import StabilityWarning  # noqa: E402

FULL = dict(pursuers=8, evaders=30, max_cycles=100, num_envs=8, iters_per_round=16,
            seeds=10, rounds=60, tune_seeds=2, tune_rounds=20, tune_steps=[1e-4, 3e-4, 1e-3],
            final_window=10, figs=["fig2", "fig4"])
QUICK = dict(pursuers=4, evaders=4, max_cycles=25, num_envs=4, iters_per_round=2,
             seeds=2, rounds=3, tune_seeds=2, tune_rounds=2, tune_steps=[3e-4],
             final_window=2, figs=["fig2", "fig4"])
SHARED = ("conv1",)
#: figure -> [(algorithm, shared actor layers)]
FIGS = {
    "fig2": [("slam_ac", SHARED), ("cac", SHARED), ("mdac", SHARED), ("central", SHARED),
             ("nocomm", ())],
    "fig4": [("slam_ac", ()), ("cac", ()), ("mdac", ()), ("central", ()), ("nocomm", ())],
}
PAIRS = [("slam_ac", "cac"), ("slam_ac", "mdac"), ("cac", "mdac"), ("slam_ac", "nocomm"),
         ("slam_ac", "central"), ("central", "nocomm")]
COLORS = {"slam_ac": "tab:red", "cac": "tab:blue", "mdac": "tab:green", "central": "black",
          "nocomm": "tab:gray"}
TUNE_SEED0 = 1000  # pilot seeds are disjoint from the reported ones


def _config(cfg, alg, shared):
    return P.PursuitACConfig(alg, shared_actor_layers=shared, n_pursuers=cfg["pursuers"],
                             n_evaders=cfg["evaders"], max_cycles=cfg["max_cycles"],
                             num_envs=cfg["num_envs"], iters_per_round=cfg["iters_per_round"])


def _hp(graph, config, step):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)  # recorded in the JSON instead
        return P.make_pursuit_hparams(graph, config, actor_step=step)


def tune(cfg, graph, args, log) -> dict:
    """Per algorithm: the actor step (per sample) of ``tune_steps`` with the best mean return
    over the last third of a pilot (Fig 2's sharing scheme, seeds TUNE_SEED0 + k)."""
    out = {}
    seeds = list(range(TUNE_SEED0, TUNE_SEED0 + cfg["tune_seeds"]))
    if len(cfg["tune_steps"]) == 1:  # nothing to choose: no pilot
        return {alg: {"steps": cfg["tune_steps"], "score": [float("nan")],
                      "chosen": cfg["tune_steps"][0], "diverged": [0], "wall_s": 0.0}
                for alg, _ in FIGS["fig2"] if alg in cfg.get("methods", P.ALGORITHMS)}
    for alg, shared in FIGS["fig2"]:
        if alg not in cfg.get("methods", P.ALGORITHMS):
            continue
        config = _config(cfg, alg, shared)
        hps = [_hp(graph, config, s) for s in cfg["tune_steps"]]
        res = P.run(config, graph, hparams=hps, seeds=seeds, num_rounds=cfg["tune_rounds"],
                    chunk=cfg["tune_rounds"], progress=not args.no_progress,
                    desc=f"tune {P.DISPLAY[alg]}", fast_compile=args.quick)
        last = max(1, cfg["tune_rounds"] // 3)
        score = np.asarray(res.metrics["return"])[..., -last:].mean(-1)  # (H, S)
        score = np.where(np.isfinite(score), score, -np.inf).mean(-1)
        best = int(np.argmax(score))  # ties -> the smaller step (first)
        out[alg] = {"steps": cfg["tune_steps"], "score": score.tolist(),
                    "chosen": cfg["tune_steps"][best],
                    "diverged": (res.lane_diverged() >= 0).sum(-1).tolist(),
                    "wall_s": res.compile_time + res.run_time}
        log(f"tune {P.DISPLAY[alg]:>18}: mean return (last {last} rounds) "
            + ", ".join(f"{s:g}: {v:.3f}" for s, v in zip(cfg["tune_steps"], score))
            + f" -> {out[alg]['chosen']:g}")
    return out


def _entry(res, step, cfg) -> dict:
    """The one setting of the RunResult ``res`` of :func:`slamjax.rl.pursuit_ac.run`;
    ``diverged_at`` per seed: rounds done when the lane went non-finite (−1: finite)."""
    m = {k: np.asarray(v)[0] for k, v in res.metrics.items()}  # (S, rounds)
    w = cfg["final_window"]
    config, hp = res.meta["config"], res.meta["hparams"][0]
    return {"algorithm": config.algorithm, "display": P.DISPLAY[config.algorithm],
            "shared_actor_layers": list(config.shared_actor_layers),
            "actor_step_per_sample": step,
            "hparams": {k: float(v) for k, v in hp._asdict().items()},
            "final_return": res.window_mean("return", w)[0].tolist(),
            "auc_return": m["return"].mean(-1).tolist(),
            "final_capture": res.window_mean("capture_rate", w)[0].tolist(),
            "curves": {k: v.tolist() for k, v in m.items()},
            "initial_disagreement": res.meta["initial_disagreement"],
            "diverged_at": res.lane_diverged()[0].tolist(),
            "compile_s": res.compile_time, "run_s": res.run_time}


def train_fig(fig, cfg, graph, steps, args, log, cache) -> dict:
    seeds = list(range(cfg["seeds"]))
    out = {}
    for alg, shared in FIGS[fig]:
        if alg not in cfg.get("methods", P.ALGORITHMS):
            continue
        config = _config(cfg, alg, shared)
        key = (config, steps[alg])
        if key not in cache:  # the no-communication control is the same run in both figures
            res = P.run(config, graph, hparams=_hp(graph, config, steps[alg]), seeds=seeds,
                        num_rounds=cfg["rounds"], chunk=cfg["rounds"],
                        progress=not args.no_progress, desc=f"{fig} {P.DISPLAY[alg]}",
                        fast_compile=args.quick)
            cache[key] = _entry(res, steps[alg], cfg)
            e = cache[key]
            log(f"{fig} {e['display']:>18}: final return {np.mean(e['final_return']):.3f}, "
                f"capture {np.mean(e['final_capture']):.3f} ({e['compile_s']:.0f} s compile, "
                f"{e['run_s']:.0f} s run)")
        out[alg] = cache[key]
    return out


def compare(runs: dict) -> list:
    rows = []
    for a, b in PAIRS:
        if a in runs and b in runs:
            rows.append({"a": a, "b": b,
                         "final": paired_ci(runs[a]["final_return"], runs[b]["final_return"]),
                         "auc": paired_ci(runs[a]["auc_return"], runs[b]["auc_return"]),
                         "capture": paired_ci(runs[a]["final_capture"],
                                              runs[b]["final_capture"])})
    return rows


def _fmt(c) -> str:
    return f"{c['mean']:.3f} ± {c['ci95']:.3f}"


def tables(payload: dict) -> str:
    cfg = payload["cfg"]
    lines = [f"# Pursuit-evasion: {cfg['pursuers']} pursuers, {cfg['evaders']} evaders, ring, "
             f"{cfg['seeds']} seeds, {cfg['rounds']} rounds × {payload['env_steps_per_round']} "
             f"env steps", "",
             f"Random policy: team return {payload['random']['return']:.3f}, capture rate "
             f"{payload['random']['capture_rate']:.3f} ({payload['random']['episodes']} "
             "episodes).", ""]
    if "tuning" in payload:
        lines += ["## Actor step (per sample) tuned per method (pilot, seeds "
                  f"{TUNE_SEED0}+, {cfg['tune_rounds']} rounds)", "",
                  "| method | " + " | ".join(f"{s:g}" for s in cfg["tune_steps"]) + " | chosen |",
                  "|---|" + "---|" * (len(cfg["tune_steps"]) + 1)]
        for alg, t in payload["tuning"].items():
            lines.append(f"| {P.DISPLAY[alg]} | " + " | ".join(f"{v:.3f}" for v in t["score"])
                         + f" | {t['chosen']:g} |")
        lines.append("")
    for fig in ("fig2", "fig4"):
        if fig not in payload:
            continue
        runs = payload[fig]["runs"]
        title = ("Fig 2 — consensus on actor `conv1` and the critics" if fig == "fig2"
                 else "Fig 4 — consensus on the critics only")
        lines += [f"## {title}", "",
                  "| method | actor step | final return | AUC return | final capture rate | "
                  "critic ‖Ay‖² (end) | actor shared ‖Aθ‖² (end) | diverged |",
                  "|---|---|---|---|---|---|---|---|"]
        for alg, e in runs.items():
            cc = np.asarray(e["curves"]["consensus_critic"])[:, -1]
            ca = np.asarray(e["curves"]["consensus_actor_shared"])[:, -1]
            lines.append(
                f"| {e['display']} | {e['actor_step_per_sample']:g} | "
                f"{_fmt(ci95(e['final_return']))} | {_fmt(ci95(e['auc_return']))} | "
                f"{_fmt(ci95(e['final_capture']))} | {np.nanmean(cc):.2e} | "
                f"{np.nanmean(ca):.2e} | {sum(d >= 0 for d in e['diverged_at'])} |")
        means = {e["display"]: float(np.nanmean(e["final_return"])) for e in runs.values()}
        lines += ["", f"Ordering by mean final return: {ordering(means)}.", "",
                  "| paired (a − b) | final return | AUC | capture rate | verdict (final) |",
                  "|---|---|---|---|---|"]
        for r in payload[fig]["paired"]:
            f, a, c = r["final"], r["auc"], r["capture"]
            lines.append(f"| {P.DISPLAY[r['a']]} − {P.DISPLAY[r['b']]} | {f['mean']:+.3f} "
                         f"[{f['lo']:+.3f}, {f['hi']:+.3f}] | {a['mean']:+.3f} "
                         f"[{a['lo']:+.3f}, {a['hi']:+.3f}] | {c['mean']:+.3f} "
                         f"[{c['lo']:+.3f}, {c['hi']:+.3f}] | {f['verdict']} "
                         f"({f['wins']}/{f['seeds']} wins) |")
        lines.append("")
    return "\n".join(lines)


def plot_fig(payload: dict, fig: str, path: Path):
    plt = pyplot()
    runs = payload[fig]["runs"]
    steps = payload["env_steps_per_round"]
    panels = [("return", "team return per episode"), ("capture_rate", "capture rate"),
              ("consensus_critic", "critic disagreement ‖Ay‖²"),
              ("consensus_actor_shared", "actor conv1 disagreement ‖Aθ‖²")]
    if fig == "fig4":
        panels = panels[:3]
    f, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6))
    for ax, (k, lab) in zip(axes, panels):
        for alg, e in runs.items():
            c = np.asarray(e["curves"][k], float)  # (S, rounds)
            if k.startswith("consensus"):
                c = np.maximum(c, 1e-12)
                mu = np.exp(np.nanmean(np.log(c), 0))
                ax.semilogy(np.arange(1, c.shape[1] + 1) * steps, mu, color=COLORS[alg],
                            label=e["display"])
                continue
            c = np.stack([smooth(x, 5) for x in c])
            mu = np.nanmean(c, 0)
            h = 2.262 * np.nanstd(c, 0, ddof=1) / np.sqrt(c.shape[0]) if c.shape[0] > 1 else 0
            x = np.arange(1, c.shape[1] + 1) * steps
            ax.plot(x, mu, color=COLORS[alg], label=e["display"])
            ax.fill_between(x, mu - h, mu + h, color=COLORS[alg], alpha=0.15)
        if k in ("return", "capture_rate"):
            ax.axhline(payload["random"][k], color="k", ls=":", lw=1, label="random policy")
        ax.set_xlabel("environment steps per seed")
        ax.set_title(lab, fontsize=10)
    axes[0].legend(fontsize=7)
    cfg = payload["cfg"]
    f.suptitle(f"Pursuit {cfg['pursuers']}p/{cfg['evaders']}e, ring, {cfg['seeds']} seeds "
               f"(mean, 95 % band; smoothed over 5 rounds) — "
               + ("consensus on actor conv1 + critics" if fig == "fig2" else "critics only"),
               fontsize=10)
    f.tight_layout()
    f.savefig(path, dpi=120)
    plt.close(f)


def render(payload: dict, out: Path):
    for fig in ("fig2", "fig4"):
        if fig in payload:
            plot_fig(payload, fig, out / f"pursuit_{fig}.png")
    (out / "pursuit.md").write_text(tables(payload) + "\n")


def _methods(p, text):
    """The ``--methods`` subset (all five by default); unknown names are a usage error."""
    if not text:
        return set(P.ALGORITHMS)
    names = {m.strip() for m in text.split(",") if m.strip()}
    bad = names - set(P.ALGORITHMS)
    if bad or not names:
        p.error(f"--methods: choose from {sorted(P.ALGORITHMS)}, got {text!r}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figs", default=None, help="comma-separated: fig2,fig4 (default both)")
    p.add_argument("--quick", action="store_true", help="smoke run into results/quick/")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of slam_ac,cac,mdac,central,nocomm (default all)")
    p.add_argument("--pursuers", type=int, default=None)
    p.add_argument("--evaders", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None, help="seeds (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="update rounds (default 60)")
    p.add_argument("--tune-steps", default=None,
                   help="comma-separated actor steps per sample (default 1e-4,3e-4,1e-3)")
    p.add_argument("--tune-rounds", type=int, default=None)
    p.add_argument("--out", default=None, help="output directory (results/)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="rewrite the tables and figures from the existing JSON")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings as JSON and exit")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.figs:
        cfg["figs"] = [f.strip() for f in args.figs.split(",") if f.strip()]
        bad = [f for f in cfg["figs"] if f not in FIGS]
        if bad or not cfg["figs"]:
            p.error(f"--figs: choose from {sorted(FIGS)}, got {args.figs!r}")
    cfg["methods"] = sorted(_methods(p, args.methods))
    for name in ("pursuers", "evaders", "seeds", "rounds", "tune_rounds"):
        v = getattr(args, name)
        if v is not None:
            lo = {"pursuers": 3, "seeds": 2}.get(name, 1)
            if v < lo:
                p.error(f"--{name.replace('_', '-')} must be >= {lo}"
                        + (" (a ring needs 3 agents)" if name == "pursuers" else "")
                        + (" (a confidence interval needs two seeds)" if name == "seeds" else ""))
            cfg[name] = v
    if args.tune_steps:
        try:
            cfg["tune_steps"] = [float(s) for s in args.tune_steps.split(",")]
        except ValueError:
            p.error(f"--tune-steps must be comma-separated numbers, got {args.tune_steps!r}")
        if not all(s > 0 and np.isfinite(s) for s in cfg["tune_steps"]):
            p.error("--tune-steps must be positive")
    cfg["final_window"] = min(cfg["final_window"], cfg["rounds"])
    try:
        _config(cfg, "slam_ac", SHARED)
    except ValueError as e:
        p.error(str(e))
    if args.out is None:
        args.out = str(ROOT / "results" / ("quick" if args.quick else ""))
    return args, cfg


def main(argv=None) -> int:
    args, cfg = parse_args(argv)
    if args.print_config:
        print(json.dumps(cfg))
        return 0
    out = Path(args.out)
    if out_dir_error(out, "pursuit"):
        return 2
    path = out / "pursuit.json"
    if args.replot:
        return replot(path, "pursuit", lambda payload: (render(payload, out),
                                                         print(tables(payload))))
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"pursuit {cfg['figs']}: jax {jax.__version__} on {jax.default_backend()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {cfg}")
    t0, c0 = time.perf_counter(), time.process_time()
    base = _config(cfg, "slam_ac", SHARED)
    graph = P.pursuit_graph(base.n)
    payload = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "quick": bool(args.quick), "cfg": cfg,
               "env": dataclasses.asdict(base.env()),
               "config": {k: v for k, v in dataclasses.asdict(base).items()
                          if k not in ("algorithm", "shared_actor_layers")},
               "graph": P.graph_info(graph), "env_steps_per_round": base.batch_size,
               "random": P.random_capture_rate(base, episodes=512),
               "machine": machine_info(extra_packages=("scipy",)), "wall_time_s": {}}
    log(f"random policy: {payload['random']}")
    tp = time.perf_counter()
    payload["tuning"] = tune(cfg, graph, args, log)
    payload["wall_time_s"]["tuning"] = time.perf_counter() - tp
    write_json(path, payload)
    steps = {alg: t["chosen"] for alg, t in payload["tuning"].items()}
    cache = {}
    for fig in cfg["figs"]:
        tp = time.perf_counter()
        runs = train_fig(fig, cfg, graph, steps, args, log, cache)
        payload[fig] = {"runs": runs, "paired": compare(runs)}
        payload["wall_time_s"][fig] = time.perf_counter() - tp
        write_json(path, payload)  # a crash keeps what is done
    payload["wall_time_s"]["total"] = time.perf_counter() - t0
    payload["cpu_time_s"] = time.process_time() - c0
    payload["loadavg_at_end"] = os.getloadavg()
    write_json(path, payload)
    render(payload, out)
    log(tables(payload))
    log(f"\nwall time {payload['wall_time_s']['total'] / 60:.1f} min (CPU "
        f"{payload['cpu_time_s'] / 60:.1f} min); wrote {path}, pursuit.md and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
