"""Throughput of the JAX navigation and pursuit envs against their references (mpe2, PettingZoo).

JAX: ``jit`` + ``vmap`` over B environments (B in 1, 16, 256, 4096 by default),
``lax.scan`` over whole episodes (a vmapped reset, then ``max_steps`` steps;
several episodes per jitted call; random actions drawn inside the scan).  Reference:
mpe2's ``simple_spread_v3.parallel_env`` (same N, discrete actions, same
``max_cycles``) stepped in a Python loop, reset at every episode end, random
actions pre-drawn with NumPy (so the reference is not charged for them).

An "env-step" is one synchronous step of all N agents of one environment.
The reference steps one environment at a time, so its env-steps/s does not
depend on B; the ratio column is JAX env-steps/s divided by it.

Throughput is taken from the fastest timed chunk (one jitted call for JAX, one
episode for mpe2; compile time excluded and reported apart), which is robust
to other processes sharing the CPU; medians are printed and stored as well.
Reference and JAX timings are interleaved so both see the same machine load.

Writes ``results/bench_envs.json`` and the log-log plot ``results/bench_envs.png``.

Pursuit section (``--env pursuit``; issue 14): :class:`slamjax.envs.PursuitEnv` with the
paper's settings (15 x 15, rectangle obstacles, n_catch = 2, per-agent rewards, tag 0.1,
capture 5, episodes of ``max_cycles`` = 100 steps) for (pursuers, evaders) = (4, 4) and (8, 30),
against PettingZoo's ``pursuit_v5.parallel_env`` with the same arguments (the reference whose
rules the parity tests check), timed the same way: JAX jit + vmap with whole episodes in
``lax.scan`` (random pursuer actions drawn in the scan, evader actions from the step key);
the reference stepped in a Python loop until its episode ends (it computes every pursuer's
7 x 7 observation each step, as its API does), pursuer actions pre-drawn, its own random
evaders.  An env-step is one parallel step (all pursuer sub-steps and the evaders' moves).
JAX episodes run the full ``max_cycles`` steps (no early termination is skipped, they are
counted as steps); the reference's env-steps are the steps it actually took.  Writes
``results/bench_envs_pursuit.json``.

    python experiments/bench_envs.py                 # navigation N = 3, 5 and pursuit (~3 min)
    python experiments/bench_envs.py --quick         # short timings
    python experiments/bench_envs.py --env pursuit   # only the pursuit section
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, pyplot, write_json  # noqa: E402
from slamjax.envs import NUM_ACTIONS, NavigationEnv, PursuitEnv  # noqa: E402


def _episode_runner(env, n: int, batch: int, max_steps: int, episodes: int, probe):
    """Jitted function running ``episodes`` whole episodes of ``batch`` envs with uniformly
    random actions: an outer ``lax.scan`` over episodes (each starts with a vmapped ``reset``),
    an inner ``lax.scan`` over the ``max_steps`` steps. Returns (summed reward, ``probe`` of
    every episode's final states) so that nothing is optimised away."""

    def step_all(carry, k):
        states, total = carry
        k_act, k_step = jax.random.split(k)
        actions = jax.random.randint(k_act, (batch, n), 0, NUM_ACTIONS, dtype=jnp.int32)
        states, rew, _ = jax.vmap(env.step)(jax.random.split(k_step, batch), states, actions)
        return (states, total + rew.sum()), None

    def episode(total, k):
        k_reset, k_run = jax.random.split(k)
        states = jax.vmap(env.reset)(jax.random.split(k_reset, batch))
        (states, total), _ = jax.lax.scan(step_all, (states, total),
                                          jax.random.split(k_run, max_steps))
        return total, probe(states)

    @jax.jit
    def run(key):
        return jax.lax.scan(episode, jnp.zeros((), jnp.float32), jax.random.split(key, episodes))

    return run


def make_jax_runner(n: int, batch: int, max_steps: int, episodes: int):
    """Navigation: ``episodes`` episodes of ``batch`` envs (:func:`_episode_runner`)."""
    env = NavigationEnv(n, max_steps=max_steps)
    return _episode_runner(env, n, batch, max_steps, episodes, lambda s: s.agent_pos.sum())


def _run_meta(args, min_time, ref_name: str, ref_versions: dict, load_start) -> dict:
    """The JSON fields both benchmarks share: run options, how timing works, the machine."""
    return {"quick": args.quick, "min_time_s": min_time,
            "timing": "throughput from the fastest timed chunk (one jitted call for JAX, one "
                      f"episode for {ref_name}), robust to load from other processes; medians "
                      "are also stored; reference and JAX timings are interleaved",
            "machine": {**machine_info(extra_packages=()), **ref_versions,
                        "load_avg_1_5_15min_start": load_start,
                        "load_avg_1_5_15min_end": os.getloadavg()}}


def _summary(durations, work):
    """work units / s from the fastest and the median timed chunk."""
    d = np.asarray(durations)
    return {"best": work / d.min(), "median": work / float(np.median(d)), "samples": int(d.size)}


def make_pursuit_runner(env: PursuitEnv, batch: int, episodes: int):
    """Pursuit: ``episodes`` whole episodes of ``batch`` envs (:func:`_episode_runner`; both
    environments have 5 actions)."""
    assert env.num_actions == NUM_ACTIONS
    return _episode_runner(env, env.n_pursuers, batch, env.max_cycles, episodes,
                           lambda s: s.evader_alive.sum())


def time_jax(n, batch, max_steps, target_steps_per_call, min_time, pursuit_env=None):
    """Time whole jitted calls; compile time is measured separately (navigation with ``n``
    agents, or ``pursuit_env`` when given)."""
    episodes = max(1, math.ceil(target_steps_per_call / (batch * max_steps)))
    if pursuit_env is None:
        run = make_jax_runner(n, batch, max_steps, episodes)
    else:
        run = make_pursuit_runner(pursuit_env, batch, episodes)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(run(key))
    compile_s = time.perf_counter() - t0
    steps_per_call = batch * episodes * max_steps
    durations, t_start, i = [], time.perf_counter(), 0
    while i < 3 or time.perf_counter() - t_start < min_time:
        i += 1
        t0 = time.perf_counter()
        jax.block_until_ready(run(jax.random.fold_in(key, i)))
        durations.append(time.perf_counter() - t0)
    stats = _summary(durations, steps_per_call)
    return {"batch": batch, "episodes_per_call": episodes, "steps_per_call": steps_per_call,
            "compile_s": compile_s, "env_steps_per_s": stats["best"],
            "env_steps_per_s_median": stats["median"], "timed_calls": stats["samples"]}


class Mpe2Reference:
    """mpe2 simple_spread parallel env stepped in a Python loop, timed per episode."""

    def __init__(self, n, max_steps):
        from mpe2 import simple_spread_v3

        self.max_steps = max_steps
        self.penv = simple_spread_v3.parallel_env(N=n, max_cycles=max_steps, continuous_actions=False)
        names = list(self.penv.possible_agents)
        actions = np.random.default_rng(0).integers(0, NUM_ACTIONS, size=(64, max_steps, n))
        self.act_dicts = [[{a: int(x) for a, x in zip(names, row)} for row in ep] for ep in actions]
        self.durations = []
        self.episodes = 0

    def run(self, min_time):
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < min_time:
            acts = self.act_dicts[self.episodes % len(self.act_dicts)]
            t0 = time.perf_counter()
            self.penv.reset(seed=self.episodes)
            for t in range(self.max_steps):
                self.penv.step(acts[t])
            self.durations.append(time.perf_counter() - t0)
            self.episodes += 1

    def summary(self):
        return _summary(self.durations, self.max_steps)


class PursuitReference:
    """PettingZoo pursuit_v5 parallel env (same settings as the JAX env) stepped in a Python
    loop until the episode ends, timed per episode."""

    def __init__(self, env: PursuitEnv):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pettingzoo.sisl import pursuit_v5

        self.penv = pursuit_v5.parallel_env(
            n_pursuers=env.n_pursuers, n_evaders=env.n_evaders, x_size=env.x_size,
            y_size=env.y_size, max_cycles=env.max_cycles, shared_reward=env.shared_reward,
            n_catch=env.n_catch, surround=env.surround, tag_reward=env.tag_reward,
            catch_reward=env.catch_reward, urgency_reward=env.urgency_reward,
            obs_range=env.obs_range, freeze_evaders=env.freeze_evaders)
        names = list(self.penv.possible_agents)
        actions = np.random.default_rng(0).integers(0, NUM_ACTIONS, size=(16, env.max_cycles, len(names)))
        self.act_dicts = [[{a: int(x) for a, x in zip(names, row)} for row in ep] for ep in actions]
        self.durations, self.steps = [], []
        self.episodes = 0

    def run(self, min_time):
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < min_time:
            acts = self.act_dicts[self.episodes % len(self.act_dicts)]
            t0 = time.perf_counter()
            self.penv.reset(seed=self.episodes)
            t = 0
            while self.penv.agents:
                self.penv.step(acts[t])
                t += 1
            self.durations.append(time.perf_counter() - t0)
            self.steps.append(t)
            self.episodes += 1

    def summary(self):
        rate = np.asarray(self.steps) / np.asarray(self.durations)
        return {"best": float(rate.max()), "median": float(np.median(rate)), "samples": int(rate.size),
                "mean_episode_steps": float(np.mean(self.steps))}


PURSUIT_CONFIGS = ((4, 4), (8, 30))


def bench_pursuit(args, min_time, target):
    """The pursuit section: JAX vs PettingZoo, interleaved, per (pursuers, evaders)."""
    try:
        pz_version = metadata.version("pettingzoo")
    except metadata.PackageNotFoundError:
        sys.exit("pettingzoo is not installed: it is the reference of the pursuit benchmark "
                 "(pip install 'pettingzoo==1.27.*' pygame-ce)")
    load_start = os.getloadavg()
    results = []
    for n_p, n_e in PURSUIT_CONFIGS:
        env = PursuitEnv(n_pursuers=n_p, n_evaders=n_e)
        ref = PursuitReference(env)
        rows = []
        ref.run(min_time)
        for b in args.batches:
            rows.append(time_jax(n_p, b, env.max_cycles, target, min_time, pursuit_env=env))
            ref.run(min_time / 2)
        ref_stats = ref.summary()
        for r in rows:
            r["ratio"] = r["env_steps_per_s"] / ref_stats["best"]
            r["ratio_median"] = r["env_steps_per_s_median"] / ref_stats["median"]
        results.append({"n_pursuers": n_p, "n_evaders": n_e,
                        "pettingzoo_env_steps_per_s": ref_stats["best"],
                        "pettingzoo_env_steps_per_s_median": ref_stats["median"],
                        "pettingzoo_timed_episodes": ref_stats["samples"],
                        "pettingzoo_mean_episode_steps": ref_stats["mean_episode_steps"],
                        "jax": rows})
        print(f"\npursuit {n_p} pursuers / {n_e} evaders, episode = {env.max_cycles} steps "
              f"(PettingZoo {pz_version} pursuit_v5: {ref_stats['best']:,.0f} env-steps/s best, "
              f"{ref_stats['median']:,.0f} median of {ref_stats['samples']} episodes)")
        print(f"{'batch':>6} | {'JAX env-steps/s':>16} | {'PZ env-steps/s':>16} | "
              f"{'ratio':>9} | {'ratio (median)':>14} | {'compile s':>9}")
        print("-" * 87)
        for r in rows:
            print(f"{r['batch']:>6} | {r['env_steps_per_s']:>16,.0f} | {ref_stats['best']:>16,.0f} | "
                  f"{r['ratio']:>8.1f}x | {r['ratio_median']:>13.1f}x | {r['compile_s']:>9.2f}")
    env = PursuitEnv()
    out = {
        "benchmark": "pursuit-evasion (PettingZoo SISL pursuit_v5 rules): env-steps/s",
        "definition": "env-step = one parallel step (all pursuer sub-steps, captures, evader moves) "
                      "of one environment; JAX: jit+vmap over `batch` envs, nested lax.scan over "
                      "episodes (vmapped reset) and max_cycles steps, random pursuer actions sampled "
                      "in the scan, evader actions from the step key, compile time excluded; "
                      "PettingZoo: pursuit_v5.parallel_env with the same arguments stepped in a "
                      "Python loop until the episode ends (it builds every pursuer's observation "
                      "each step, as its API does), pre-drawn pursuer actions, its own random evaders",
        "settings": {"x_size": env.x_size, "y_size": env.y_size, "max_cycles": env.max_cycles,
                     "n_catch": env.n_catch, "surround": env.surround,
                     "shared_reward": env.shared_reward, "tag_reward": env.tag_reward,
                     "catch_reward": env.catch_reward, "urgency_reward": env.urgency_reward,
                     "obs_range": env.obs_range},
        "goal": "ratio >= 1000 at 4096 envs (issue 14)",
        **_run_meta(args, min_time, "PettingZoo", {"pettingzoo": pz_version}, load_start),
        "results": results,
    }
    json_path = write_json(args.out_dir / "bench_envs_pursuit.json", out)
    print(f"wrote {json_path}")
    return out


def plot(results, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, res in enumerate(results):
        color = f"C{i}"
        b = [r["batch"] for r in res["jax"]]
        s = [r["env_steps_per_s"] for r in res["jax"]]
        ax.plot(b, s, "o-", color=color, label=f"JAX jit+vmap, N={res['n']}")
        ax.axhline(res["mpe2_env_steps_per_s"], color=color, ls="--",
                   label=f"mpe2 Python loop, N={res['n']}")
        ax.annotate(f"{res['jax'][-1]['ratio']:.0f}x", (b[-1], s[-1]),
                    textcoords="offset points", xytext=(-8, -14), ha="right", color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parallel environments (vmap batch)")
    ax.set_ylabel("env-steps / s")
    ax.set_title("Cooperative navigation (simple_spread) throughput, CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--env", choices=("navigation", "pursuit", "all"), default="all",
                   help="which section(s) to run (default all)")
    p.add_argument("--agents", type=int, nargs="+", default=None, help="N values (default 3 5; quick: 3)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 4096])
    p.add_argument("--max-steps", type=int, default=25, help="episode length (mpe2 max_cycles)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timing per configuration (default 2, quick 0.5)")
    p.add_argument("--out", "--out-dir", dest="out_dir", type=Path, default=ROOT / "results",
                   help="output directory (results/)")
    args = p.parse_args(argv)

    agents = args.agents or ([3] if args.quick else [3, 5])
    min_time = args.min_time or (0.5 if args.quick else 2.0)
    target = 12_500 if args.quick else 50_000  # env-steps per jitted call

    args.out_dir.mkdir(parents=True, exist_ok=True)
    pursuit_out = bench_pursuit(args, min_time, target) if args.env in ("pursuit", "all") else None
    if args.env == "pursuit":
        return pursuit_out

    try:
        mpe2_version = metadata.version("mpe2")
    except metadata.PackageNotFoundError:
        sys.exit("mpe2 is not installed: it is the reference of this benchmark (pip install mpe2)")

    load_start = os.getloadavg()
    results = []
    for n in agents:
        ref = Mpe2Reference(n, args.max_steps)
        rows = []
        # interleave reference and JAX timing so both see the same machine load
        ref.run(min_time)
        for b in args.batches:
            rows.append(time_jax(n, b, args.max_steps, target, min_time))
            ref.run(min_time / 2)
        ref_stats = ref.summary()
        ref_best = ref_stats["best"]
        for r in rows:
            r["ratio"] = r["env_steps_per_s"] / ref_best
            r["ratio_median"] = r["env_steps_per_s_median"] / ref_stats["median"]
        results.append({"n": n, "mpe2_env_steps_per_s": ref_best,
                        "mpe2_env_steps_per_s_median": ref_stats["median"],
                        "mpe2_timed_episodes": ref_stats["samples"], "jax": rows})

        print(f"\nN = {n} agents, episode = {args.max_steps} steps "
              f"(mpe2 {mpe2_version} reference: {ref_best:,.0f} env-steps/s best, "
              f"{ref_stats['median']:,.0f} median of {ref_stats['samples']} episodes)")
        print(f"{'batch':>6} | {'JAX env-steps/s':>16} | {'mpe2 env-steps/s':>16} | "
              f"{'ratio':>9} | {'ratio (median)':>14} | {'compile s':>9}")
        print("-" * 87)
        for r in rows:
            print(f"{r['batch']:>6} | {r['env_steps_per_s']:>16,.0f} | {ref_best:>16,.0f} | "
                  f"{r['ratio']:>8.1f}x | {r['ratio_median']:>13.1f}x | {r['compile_s']:>9.2f}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "cooperative navigation (MPE simple_spread rules): env-steps/s",
        "definition": "env-step = one synchronous step of all N agents of one environment; "
                      "JAX: jit+vmap over `batch` envs, nested lax.scan over episodes (vmapped reset) and steps, "
                      "random actions sampled in the scan, compile time excluded; "
                      "mpe2: parallel_env stepped in a Python loop with reset every episode",
        "max_steps": args.max_steps,
        **_run_meta(args, min_time, "mpe2", {"mpe2": mpe2_version}, load_start),
        "results": results,
    }
    json_path = write_json(args.out_dir / "bench_envs.json", out)
    png_path = args.out_dir / "bench_envs.png"
    plot(results, png_path)
    print(f"\nload average (1/5/15 min) at start {tuple(round(x, 1) for x in load_start)}, "
          f"at end {tuple(round(x, 1) for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"wrote {json_path} and {png_path}")
    return out


if __name__ == "__main__":
    main()
