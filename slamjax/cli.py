"""The ``slamjax`` command.

``slamjax run`` is the main job: a heterogeneous-data quadratic bilevel problem on n = 64 agents
(Erdős–Rényi graph), solved by SLAM, SLAM-L and SLAM-U side by side; it prints progress and a
final metrics table and writes ``results/<name>.json`` and ``results/<name>.png``.

Other sub-commands run the scripts in ``experiments/`` of a source checkout
(``slamjax bench``, ``slamjax sweep``, ``slamjax reproduce <figure>``, ...); extra arguments
are passed through to the script.

``--cache-dir DIR`` (with any sub-command) or ``SLAMJAX_CACHE_DIR=DIR`` turns on JAX's
persistent compilation cache (off by default, see :func:`enable_compilation_cache`); scripts
run by the command and the processes they start use it too.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO_ROOT / "experiments"

#: sub-command -> experiments/<script>.py (extra CLI arguments are forwarded)
SCRIPTS = {
    "bench": "bench_throughput.py",
    "bench-grad": "bench_grad.py",
    "bench-envs": "bench_envs.py",
    "sweep": "speedup_sweep.py",
    "tune": "tune_by_gradient.py",
}
#: what a script's ``--out`` names (checked before the script runs): an output directory,
#: or a JSON file (bench_grad, tune_by_gradient: ``--out X.json``, the PNG beside it)
OUT_FILE_SCRIPTS = ("bench_grad.py", "tune_by_gradient.py")
#: the scripts' ``--out`` spellings (bench_envs also takes ``--out-dir``)
OUT_FLAGS = ("--out", "--out-dir")
#: ``slamjax reproduce <what>`` -> (script, forwarded arguments)
REPRODUCE = {
    "table2": ("meta_learning.py", []),
    "suite": ("bilevel_suite.py", []),
    "fig8": ("meta_learning.py", []),
    "fig9": ("meta_learning.py", ["--fig9"]),
    "fig1": ("navigation.py", ["--figure", "1"]),
    "fig5": ("navigation.py", ["--figure", "5"]),
    "fig6": ("navigation.py", ["--figure", "6"]),
    "fig7": ("navigation.py", ["--figure", "7"]),
    # issue 13: Figs 1/5/7 redone with reward heterogeneity, sparse graphs and controls
    "navigation_hetero": ("navigation_hetero.py", []),
    # issue 14: pursuit-evasion, SLAM-AC / CAC / MDAC with partial parameter sharing
    "fig2": ("pursuit.py", ["--figs", "fig2"]),
    "fig4": ("pursuit.py", ["--figs", "fig4"]),
    "pursuit": ("pursuit.py", []),
}


def _positive(kind):
    def parse(s):
        v = kind(s)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=_positive(int), default=64, help="number of agents (64)")
    p.add_argument("--graph", default="erdos_renyi",
                   help="erdos_renyi | ring | torus | star | complete | path | small_world")
    p.add_argument("--er-p", type=float, default=None,
                   help="Erdős–Rényi edge probability (default 2 ln(n)/n: connected w.h.p.)")
    p.add_argument("--mixing", default="auto", help="auto | sparse | stencil | dense")
    p.add_argument("--variant", default="all", help="all | slam | slam_l | slam_u")
    p.add_argument("--steps", type=_positive(int), default=3000,
                   help="iterations T (3000); exactly T are run")
    p.add_argument("--log-every", type=_positive(int), default=None,
                   help="log interval; must divide --steps (default: the largest divisor of "
                        "--steps that is ≤ 20)")
    p.add_argument("--seed", type=int, default=0, help="problem, graph and noise seed")
    p.add_argument("--alpha", type=float, default=30.0, help="UL: step size is 1/alpha (30)")
    p.add_argument("--beta", type=float, default=30.0, help="LL: step size is 1/beta (30)")
    p.add_argument("--rho", type=float, default=1.0, help="penalty rho (1)")
    p.add_argument("--gamma", type=float, default=1.0, help="Lagrangian scaling gamma (1)")
    p.add_argument("--solver", default="cg", help="cg | neumann | exact")
    p.add_argument("--cg-iters", type=_positive(int), default=10)
    p.add_argument("--neumann-k", type=_positive(int), default=30)
    p.add_argument("--neumann-eta", type=float, default=0.2)
    p.add_argument("--dx", type=_positive(int), default=10, help="UL dimension per agent")
    p.add_argument("--dy", type=_positive(int), default=10, help="LL dimension per task")
    p.add_argument("--m", type=_positive(int), default=2, help="LL tasks per agent")
    p.add_argument("--noise", type=float, default=0.0, help="gradient noise σ (stochastic oracle)")
    p.add_argument("--heterogeneous-hessian", action="store_true",
                   help="agent-specific LL Hessians (SLAM's fixed point is then biased)")
    p.add_argument("--x64", action="store_true", help="run in float64")
    p.add_argument("--out", default="results", help="output directory (results/)")
    p.add_argument("--name", default="main", help="results/<name>.json and .png")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    d = p.add_argument_group(
        "multi-process (jax.distributed)",
        "--distributed runs the agents split over every device of every process; start the "
        "same command once per process (slamjax.distributed explains the launch)")
    d.add_argument("--distributed", action="store_true",
                   help="join jax.distributed and shard the agents over all processes")
    d.add_argument("--coordinator", default=None,
                   help="host:port of process 0 (default $JAX_COORDINATOR_ADDRESS)")
    d.add_argument("--num-processes", type=_positive(int), default=None,
                   help="number of processes (default $JAX_NUM_PROCESSES)")
    d.add_argument("--process-id", type=int, default=None,
                   help="this process, 0..N-1 (default $JAX_PROCESS_ID)")
    d.add_argument("--dist-timeout", type=_positive(float), default=120.0,
                   help="seconds to wait for the coordinator and all processes (120)")


def default_log_every(steps: int, at_most: int = 20) -> int:
    """The largest divisor of ``steps`` that is ≤ ``at_most`` (so that exactly ``steps``
    iterations are run and logged)."""
    return max(d for d in range(1, min(steps, at_most) + 1) if steps % d == 0)


def check_steps(steps: int, log_every: int | None) -> int:
    """``log_every`` for a run of exactly ``steps`` iterations; a ``--log-every`` that does
    not divide ``--steps`` is refused (never rounded: no run longer or shorter than asked)."""
    if log_every is None:
        return default_log_every(steps)
    if steps % log_every:
        up = steps + log_every - steps % log_every
        down = steps - steps % log_every
        raise ValueError(
            f"--steps {steps} is not a multiple of --log-every {log_every}: pass --steps {up}"
            + (f" or --steps {down}" if down else "") + f", or --log-every "
            f"{default_log_every(steps, log_every)} (a divisor of {steps}), or leave "
            "--log-every out")
    return log_every


def _check_run_outputs(args) -> None:
    """Everything ``slamjax run`` will write, checked before any compute."""
    from slamjax.run import check_output_dir, check_output_file

    out = check_output_dir(args.out, "--out")
    for suffix in (".json",) + (() if args.no_plot else (".png",)):
        check_output_file(out / f"{args.name}{suffix}", "--out/--name: output file")


def cmd_run(args) -> int:
    args.log_every = check_steps(args.steps, args.log_every)
    _check_run_outputs(args)  # before any compute: a bad --out loses nothing
    if args.distributed:
        from slamjax.distributed import cli_run

        return cli_run(args)
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import slamjax as sj
    from slamjax.problems.quadratic import make_quadratic

    variants = list(sj.VARIANTS) if args.variant == "all" else [args.variant]
    solver = sj.make_solver(args.solver, **({"maxiter": args.cg_iters} if args.solver == "cg"
                                            else {"K": args.neumann_k, "eta": args.neumann_eta}
                                            if args.solver == "neumann" else {}))
    configs = [sj.SLAMConfig(variant=v, solver=solver) for v in variants]  # validates names
    extra = {"p": args.er_p} if (args.er_p is not None and args.graph.startswith("er")) else {}
    graph = sj.make_graph(args.graph, args.n, seed=args.seed, mixing=args.mixing, **extra)
    dtype = jnp.float64 if args.x64 else jnp.float32
    problem, data, x0, y0 = make_quadratic(
        args.n, args.dx, args.dy, args.m, seed=args.seed, noise=args.noise, dtype=dtype,
        homogeneous=not args.heterogeneous_hessian)
    params = sj.SLAMParams.create(args.alpha, args.beta, args.rho, args.gamma)
    print(f"slamjax run: {graph!r}; quadratic bilevel problem d_x={args.dx}, d_y={args.dy}, "
          f"m={args.m}, noise σ={args.noise}, "
          f"{'heterogeneous' if args.heterogeneous_hessian else 'shared'} LL Hessians, "
          f"heterogeneous data; solver={solver}; α={args.alpha} β={args.beta} ρ={args.rho} "
          f"γ={args.gamma}; T={args.steps}; backend={jax.default_backend()}", flush=True)
    print(f"stability bound (ρ·λ_max·(1+2γ) < 4β): ρ < "
          f"{sj.stability_bound(graph.lam_max, min(args.alpha, args.beta), args.gamma):.4g}",
          flush=True)

    results = {}
    for cfg in configs:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            res = sj.run(sj.slam(problem, graph, cfg), params, data, x0, y0,
                         num_steps=args.steps, log_every=args.log_every, seed=args.seed,
                         progress=not args.no_progress, desc=cfg.variant)
        results[cfg.variant] = res

    names = ("grad_F_sq", "consensus_x", "consensus_y", "ll_error")
    head = f"{'variant':8s} {'step':>6s} " + " ".join(f"{m:>12s}" for m in names) + \
        f" {'steps/s':>10s} {'agent-steps/s':>14s} {'compile s':>9s}"
    print(f"\nfinal metrics (T={args.steps} requested; 'step' is the step whose values are "
          "shown)")
    print(head)
    print("-" * len(head))
    for v, res in results.items():
        fin = res.final()
        shown = int(res.steps[-1])
        print(f"{v:8s} {shown:6d} " + " ".join(f"{fin[m]:12.3e}" for m in names) +
              f" {res.steps_per_sec:10.1f} {res.steps_per_sec * args.n:14.3e}"
              f" {res.compile_time:9.2f}" +
              (f"  DIVERGED by step {res.diverged_at}: values from step {shown}, the last "
               "finite log" if res.diverged_at is not None else ""))
    out = Path(args.out)
    meta = {"command": "slamjax " + " ".join(sys.argv[1:]), "config": vars(args),
            "graph": {"kind": graph.kind, "n": graph.n, "edges": graph.num_edges,
                      "lam_max": graph.lam_max},
            "backend": jax.default_backend(), "jax_version": jax.__version__}
    import json
    import tempfile

    from slamjax.run import write_text

    payload = json.dumps({**meta, "variants": {v: r.to_dict() for v, r in results.items()}},
                         indent=1, default=str)
    try:
        path = write_text(out / f"{args.name}.json", payload)
    except OSError as e:  # checked before the run, so only a change since: keep the results
        fd, rescue = tempfile.mkstemp(prefix=f"slamjax-{args.name}-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
        print(f"\nslamjax: error: could not write {out / (args.name + '.json')} ({e}); the "
              f"results were saved to {rescue} instead", file=sys.stderr)
        return 1
    print(f"\nwrote {path}", end="")
    if not args.no_plot:
        from slamjax.plotting import plot_theorem1

        png = plot_theorem1({v: (r.steps, r.history) for v, r in results.items()},
                            out / f"{args.name}.png",
                            title=f"{graph.kind} graph, n={graph.n}, T={args.steps}")
        print(f" and {png}", end="")
    print()
    return 1 if any(r.diverged_at is not None for r in results.values()) else 0


def _out_argument(argv: list[str]) -> tuple[str, str] | None:
    """(flag, value) of the last ``--out``/``--out-dir`` in a script's arguments (argparse
    semantics: the last one wins; ``--out=X`` and ``--out X``), or None."""
    found = None
    for i, a in enumerate(argv):
        flag, eq, val = a.partition("=")
        if flag in OUT_FLAGS:
            if eq:
                found = (flag, val)
            elif i + 1 < len(argv):
                found = (flag, argv[i + 1])
    return found


def check_script_outputs(script: str, argv: list[str]) -> None:
    """A script's output place (its ``--out``, or the default ``results/``), checked before
    the script runs: a file where a directory is expected (or the reverse), a path under a
    file or an unwritable place is a ``ValueError`` naming the argument."""
    from slamjax.run import check_output_dir, check_output_file

    if "-h" in argv or "--help" in argv:
        return
    given = _out_argument(argv)
    if given is None:
        check_output_dir(REPO_ROOT / "results", "default output directory")
    elif script in OUT_FILE_SCRIPTS:
        check_output_file(Path(given[1]).with_suffix(".json"), given[0])
    else:
        check_output_dir(given[1], given[0])


def _run_script(script: str, argv: list[str]) -> int:
    path = EXPERIMENTS / script
    if not path.exists():
        print(f"slamjax: {path} not found — this sub-command runs the experiment scripts of a "
              "source checkout (git clone, then `pip install -e .`).", file=sys.stderr)
        return 2
    try:
        check_script_outputs(script, argv)
    except ValueError as e:
        print(f"slamjax: error: {e}", file=sys.stderr)
        return 2
    old = sys.argv
    sys.argv = [str(path)] + argv
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:  # the script's own exit code
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old
    return 0


#: environment variable naming a persistent compilation-cache directory (unset: no cache)
CACHE_ENV = "SLAMJAX_CACHE_DIR"


def enable_compilation_cache(path) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (created if needed) for this
    process and the processes it starts (``JAX_COMPILATION_CACHE_DIR``): every compiled
    program is written there and read back by later runs, so a repeated command skips XLA
    compilation. ``""``/``"off"``/``"none"`` leave it off. Returns the directory or ``None``.

    Off by default: it writes to disk without being asked, JAX does not evict entries
    (``jax_compilation_cache_max_size`` is unlimited), and the benchmarks report compile
    time, which a warm cache would silently replace by a cache read."""
    if path is None or str(path).strip().lower() in ("", "off", "none", "0"):
        return None
    p = Path(str(path)).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--cache-dir {path}: cannot create the directory ({e.strerror}); "
                         f"pass a writable directory, e.g. --cache-dir ~/.cache/slamjax") from None
    if not os.access(p, os.W_OK):
        raise ValueError(f"--cache-dir {path}: not writable; pass a writable directory, e.g. "
                         "--cache-dir ~/.cache/slamjax")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(p)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    import jax

    jax.config.update("jax_compilation_cache_dir", str(p))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(p)


def _pop_cache_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove ``--cache-dir DIR`` / ``--cache-dir=DIR`` (before or after the sub-command)."""
    out, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--cache-dir":
            if i + 1 >= len(argv):
                raise ValueError("--cache-dir needs a directory, e.g. --cache-dir "
                                 "~/.cache/slamjax (or 'off')")
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith("--cache-dir="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return out, value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # persistent compilation cache: --cache-dir DIR, else $SLAMJAX_CACHE_DIR, else off
        argv, cache = _pop_cache_dir(argv)
        enable_compilation_cache(cache if cache is not None else os.environ.get(CACHE_ENV))
    except ValueError as e:
        print(f"slamjax: error: {e}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="slamjax", description=__doc__.split("\n\n")[0],
        epilog="--cache-dir DIR (any sub-command; or $SLAMJAX_CACHE_DIR): keep compiled XLA "
               "programs in DIR so repeated runs skip compilation (off by default)")
    sub = parser.add_subparsers(dest="cmd")
    p_run = sub.add_parser("run", help="main job: SLAM / SLAM-L / SLAM-U on a quadratic problem")
    add_run_arguments(p_run)
    for name, script in SCRIPTS.items():
        sub.add_parser(name, help=f"experiments/{script} (arguments forwarded)", add_help=False)
    p_rep = sub.add_parser("reproduce", help="reproduce a paper table/figure", add_help=False)
    p_rep.add_argument("what", nargs="?", choices=sorted(REPRODUCE))
    if not argv:
        argv = ["run"]
    if argv[0] in SCRIPTS:
        return _run_script(SCRIPTS[argv[0]], argv[1:])
    if argv[0] == "reproduce":
        if len(argv) < 2 or argv[1] not in REPRODUCE:
            parser.error(f"reproduce needs one of {sorted(REPRODUCE)}")
        script, extra = REPRODUCE[argv[1]]
        return _run_script(script, extra + argv[2:])
    args = parser.parse_args(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        return cmd_run(args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"slamjax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
