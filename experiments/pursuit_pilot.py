"""Pursuit pilots behind the choices of ``experiments/pursuit.py`` (README, pursuit section).

    python experiments/pursuit_pilot.py                      # the TD-error pilot (below)
    python experiments/pursuit_pilot.py --pursuers 4 --evaders 4 --n-catch 2 --max-cycles 100

Trains one algorithm (default: no communication) for each ``--advantage`` setting of
:class:`slamjax.rl.pursuit_ac.PursuitACConfig` and prints the capture rate per tenth of the run
next to the random team's.  Default: the easy variant of the TD-error pilot — 4 pursuers, 10
evaders, single-pursuer captures, 25-step episodes, 3 seeds, 60 rounds, actor step 3e-4 per
sample — comparing the actor's TD error with the agent's observed reward (``local``) against
eq. (212)'s reward estimator (``estimate``).  Writes ``results/pursuit_pilot.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_json  # noqa: E402

from slamjax.rl import pursuit_ac as P  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="nocomm", choices=sorted(P.ALGORITHMS))
    p.add_argument("--advantage", default="local,estimate",
                   help="comma-separated advantage_reward settings (local, estimate)")
    p.add_argument("--pursuers", type=int, default=4)
    p.add_argument("--evaders", type=int, default=10)
    p.add_argument("--n-catch", type=int, default=1)
    p.add_argument("--max-cycles", type=int, default=25)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--iters", type=int, default=4, help="iterations per round")
    p.add_argument("--step", type=float, default=3e-4, help="actor step per sample")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--out", default=str(ROOT / "results" / "pursuit_pilot.json"))
    args = p.parse_args(argv)
    advs = [a.strip() for a in args.advantage.split(",") if a.strip()]
    if not advs or any(a not in P.ADVANTAGE_REWARDS for a in advs):
        p.error(f"--advantage: choose from {P.ADVANTAGE_REWARDS}, got {args.advantage!r}")
    if args.rounds < 10:
        p.error("--rounds must be >= 10 (the table shows tenths of the run)")
    try:
        configs = {a: P.PursuitACConfig(
            args.algorithm, n_pursuers=args.pursuers, n_evaders=args.evaders,
            n_catch=args.n_catch, max_cycles=args.max_cycles, num_envs=args.num_envs,
            iters_per_round=args.iters, advantage_reward=a) for a in advs}
    except ValueError as e:
        p.error(str(e))
    first = configs[advs[0]]
    graph = P.pursuit_graph(first.n)
    rand = P.random_capture_rate(first, episodes=512)
    print(f"random team: capture rate {rand['capture_rate']:.3f}, return {rand['return']:.3f} "
          f"({rand['episodes']} episodes)", flush=True)
    out = {"command": " ".join(sys.argv), "args": vars(args), "random": rand, "runs": {},
           "machine": machine_info(extra_packages=())}
    t0 = time.perf_counter()
    for a, cfg in configs.items():
        res = P.run(cfg, graph, hparams=P.make_pursuit_hparams(graph, cfg, actor_step=args.step),
                    seeds=args.seeds, num_rounds=args.rounds, chunk=args.rounds,
                    progress=False)
        cap = np.asarray(res.metrics["capture_rate"])[0]  # (seeds, rounds)
        tenths = cap.mean(0).reshape(10, -1).mean(1)
        out["runs"][a] = {"capture_rate_tenths": tenths.tolist(),
                          "capture_rate": cap.tolist(),
                          "diverged_at": res.lane_diverged()[0].tolist()}
        print(f"{a:>9}: capture rate per tenth of the run "
              + " ".join(f"{v:.3f}" for v in tenths), flush=True)
    out["wall_time_s"] = time.perf_counter() - t0
    path = write_json(Path(args.out), out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
