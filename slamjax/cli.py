"""The slamjax command line: run SLAM, sweep, tune, benchmark, reproduce the paper.

``slamjax run`` is the main job: a heterogeneous-data quadratic bilevel problem on n = 64 agents
(Erdős–Rényi graph), solved by SLAM, SLAM-L and SLAM-U side by side; it prints progress and a
final metrics table and writes ``<out>/<name>.json`` and ``.png`` (default ``./results``).
``slamjax sweep``, ``tune``, ``bench`` and ``bench-grad`` run the tools of
:mod:`slamjax.tools` (installed with the package); ``slamjax reproduce <target>`` and
``slamjax bench-envs`` run the ``experiments/`` scripts of a source checkout
(:mod:`slamjax.tools.reproduce`). A bare ``slamjax`` prints this help and exits with 0.

``--cache-dir DIR`` (with any sub-command) or ``SLAMJAX_CACHE_DIR=DIR`` turns on JAX's
persistent compilation cache (off by default, see :func:`enable_compilation_cache`); scripts
run by the command and the processes they start use it too.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from slamjax.tools import reproduce as _reproduce_mod
from slamjax.tools.commands import (SCRIPTS, TOOLS, build_parser, parse, reproduce_command,
                                    run_tool_command)
from slamjax.tools.reproduce import SOURCE_COMMANDS

REPRODUCE = _reproduce_mod.REPRODUCE
"""``slamjax reproduce <target>`` → (script, forwarded arguments); see
:data:`slamjax.tools.reproduce.TARGETS` for what each writes and takes."""

__all__ = ["main", "add_run_arguments", "cmd_run", "run_distributed", "check_steps",
           "default_log_every", "check_run_memory", "enable_compilation_cache", "TOOLS",
           "SCRIPTS", "REPRODUCE", "CACHE_ENV", "DESCRIPTION"]

DESCRIPTION = ("slamjax: decentralized bilevel optimization with SLAM (JAX). Run a quadratic "
               "problem, sweep the number of agents, tune hyperparameters by gradient, "
               "benchmark, or reproduce the paper's experiments.")
"""The command's description (plain text: the first lines of ``slamjax --help``)."""
_GRAPH_ALIASES = {"er": "erdos_renyi", "erdos-renyi": "erdos_renyi",
                  "small-world": "small_world"}
_VARIANT_ALIASES = {"slam-l": "slam_l", "slaml": "slam_l", "slam-u": "slam_u",
                    "slamu": "slam_u"}  # the spellings SLAMConfig accepts


def _positive(kind):
    def parse(s):
        v = kind(s)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def _one_of(what: str, options, aliases=None):
    """An argparse type: the value (lower case, aliases resolved) if it is one of
    ``options``, else the error "unknown <what> ...; choose one of (...)"."""
    def parse(s):
        v = (aliases or {}).get(s.lower(), s.lower())
        if v not in options:
            raise argparse.ArgumentTypeError(f"unknown {what} {s!r}; choose one of "
                                             f"{tuple(options)}")
        return v
    return parse
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``slamjax run`` (every enumerated one with its choices)."""
    from slamjax.comm import MIXING_MODES
    from slamjax.graphs import GRAPH_KINDS
    from slamjax.slam import VARIANTS
    from slamjax.solvers import SOLVERS

    p.add_argument("--n", type=_positive(int), default=64, help="number of agents (64)")
    p.add_argument("--graph", default="erdos_renyi", choices=GRAPH_KINDS,
                   type=_one_of("graph kind", GRAPH_KINDS, _GRAPH_ALIASES),
                   help="communication graph (erdos_renyi)")
    p.add_argument("--er-p", type=float, default=None,
                   help="Erdős–Rényi edge probability (default 2 ln(n)/n: connected w.h.p.)")
    p.add_argument("--mixing", default="auto", choices=MIXING_MODES,
                   type=_one_of("mixing mode", MIXING_MODES),
                   help="implementation of L·v (auto: stencil for ring/torus, O(n) for the "
                        "complete graph, sparse otherwise)")
    variants = ("all",) + tuple(VARIANTS)
    p.add_argument("--variant", default="all", choices=variants,
                   type=_one_of("SLAM variant", variants, _VARIANT_ALIASES),
                   help="SLAM variant(s) to run (all)")
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
    p.add_argument("--solver", default="cg", choices=tuple(SOLVERS),
                   type=_one_of("solver", tuple(SOLVERS)),
                   help="linear solver of the hypergradient (cg)")
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
    p.add_argument("--out", default="results",
                   help="output directory (default ./results in the current directory)")
    p.add_argument("--name", default="main", help="<out>/<name>.json and .png (main)")
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
    """Everything ``slamjax run`` will write, checked before any compute (without
    matplotlib, the plot extra, no figure is drawn: said once, not an error)."""
    from slamjax.io import check_name, check_output_dir, check_output_file
    from slamjax.tools._machine import NO_PLOT_NOTE, have_matplotlib

    out = check_output_dir(args.out, "--out")
    check_name(args.name)
    if not args.no_plot and not have_matplotlib():
        print(f"slamjax run: {NO_PLOT_NOTE}", file=sys.stderr)
        args.no_plot = True
    for suffix in (".json",) + (() if args.no_plot else (".png",)):
        check_output_file(out / f"{args.name}{suffix}", "--out/--name: output file")


def check_run_memory(args):
    """The memory estimate of ``slamjax run`` (:mod:`slamjax.tools.memory`), or a
    ``ValueError`` before anything is allocated if it does not fit; also the dense-mixing
    limit (an n×n Laplacian for n ≤ ``DENSE_MAX_N`` only)."""
    from slamjax.comm import DENSE_MAX_N
    from slamjax.tools.memory import check_run_fits

    est = check_run_fits(args.n, graph=args.graph, mixing=args.mixing, dx=args.dx, dy=args.dy,
                         m=args.m, x64=args.x64, heterogeneous_hessian=args.heterogeneous_hessian,
                         er_p=args.er_p if args.graph == "erdos_renyi" else None,
                         variants=3 if args.variant == "all" else 1)
    if est.mixing == "dense" and args.n > DENSE_MAX_N:
        raise ValueError(f"--mixing dense needs an n×n Laplacian: refused for --n {args.n} > "
                         f"{DENSE_MAX_N}; use --mixing auto or sparse")
    return est


def _configs_and_graph(args):
    """(solver, one SLAMConfig per variant, graph) of ``slamjax run``."""
    import slamjax as sj

    variants = list(sj.VARIANTS) if args.variant == "all" else [args.variant]
    solver = sj.make_solver(args.solver, **({"maxiter": args.cg_iters} if args.solver == "cg"
                                            else {"K": args.neumann_k, "eta": args.neumann_eta}
                                            if args.solver == "neumann" else {}))
    configs = [sj.SLAMConfig(variant=v, solver=solver) for v in variants]  # validates names
    extra = {"p": args.er_p} if (args.er_p is not None and args.graph.startswith("er")) else {}
    graph = sj.make_graph(args.graph, args.n, seed=args.seed, mixing=args.mixing, **extra)
    return solver, configs, graph


def _quadratic(args):
    """(problem, data, x0, y0) of ``slamjax run``: the quadratic bilevel problem."""
    import jax.numpy as jnp

    from slamjax.problems.quadratic import make_quadratic

    dtype = jnp.float64 if args.x64 else jnp.float32
    return make_quadratic(args.n, args.dx, args.dy, args.m, seed=args.seed, noise=args.noise,
                          dtype=dtype, homogeneous=not args.heterogeneous_hessian)


def _print_final(results, args) -> None:
    """The final-metrics table of ``slamjax run`` (the step each row shows, and where a
    variant diverged)."""
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


def cmd_run(args) -> int:
    """``slamjax run`` for parsed ``args`` (:func:`add_run_arguments`); exit code 1 if a
    variant diverged."""
    args.log_every = check_steps(args.steps, args.log_every)
    check_run_memory(args)  # before any allocation: a run that cannot fit is refused
    _check_run_outputs(args)  # before any compute: a bad --out loses nothing
    if args.distributed:
        return run_distributed(args)
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)

    import slamjax as sj

    solver, configs, graph = _configs_and_graph(args)
    problem, data, x0, y0 = _quadratic(args)
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

    _print_final(results, args)
    out = Path(args.out)
    meta = {"command": "slamjax " + " ".join(sys.argv[1:]), "config": vars(args),
            "graph": {"kind": graph.kind, "n": graph.n, "edges": graph.num_edges,
                      "lam_max": graph.lam_max},
            "backend": jax.default_backend(), "jax_version": jax.__version__}
    import tempfile

    from slamjax.io import to_json, write_text

    payload = to_json({**meta, "variants": {v: r.to_dict() for v, r in results.items()}})
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


def run_distributed(args) -> int:
    """``slamjax run --distributed``: the quadratic problem of ``slamjax run`` with the agents
    split over every process's devices. Every process builds the same problem from the seed
    and feeds its own agents' rows; process 0 prints the progress and the table and writes
    ``<out>/<name>.json`` (+ .png) once."""
    from slamjax import distributed as dist

    launch = dist.initialize(args.coordinator, args.num_processes, args.process_id,
                             timeout=args.dist_timeout)
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)

    import slamjax as sj
    from slamjax import sharding
    from slamjax.io import write_json

    mesh = dist.global_mesh()
    _, configs, graph = _configs_and_graph(args)
    dist.check_divisible(args.n, mesh, graph)
    skip = ("process_id", "coordinator", "no_progress")
    dist.check_consistent({k: v for k, v in vars(args).items() if k not in skip}
                     | {"num_processes": jax.process_count()})
    problem, data, x0, y0 = _quadratic(args)
    x0, y0, data = dist.from_local(mesh, args.n,
                                   *dist.local_rows((x0, y0, data), args.n, mesh))
    pg = sharding.partition_graph(graph, mesh)
    params = sj.SLAMParams.create(args.alpha, args.beta, args.rho, args.gamma)
    procs = jax.process_count()
    dist.print0(f"slamjax run --distributed: {procs} process(es), {mesh.size} devices "
           f"({jax.local_device_count()} here), coordinator {launch.coordinator}; {pg!r}; "
           f"quadratic d_x={args.dx}, d_y={args.dy}, m={args.m}, noise σ={args.noise}; "
           f"T={args.steps}; {args.n // mesh.size} agents per device")
    results, xbar = {}, {}
    for cfg in configs:
        res = sj.run(sj.slam(problem, pg, cfg), params, data, x0, y0, num_steps=args.steps,
                     log_every=args.log_every, seed=args.seed, placement=dist.placement(mesh),
                     progress=not args.no_progress, desc=cfg.variant)
        results[cfg.variant] = res
        xbar[cfg.variant] = dist.gather(res.state.x).mean(axis=0).tolist()  # all processes join
    per_agent = {"slam": args.dx + args.m * args.dy, "slam_l": args.m * args.dy,
                 "slam_u": args.dx}
    comm = {v: dist.predicted_bytes(pg, per_agent[v], 8 if args.x64 else 4)
            for v in results} if pg.scheme in ("halo", "edges") else {}
    if not dist.is_main():
        return 1 if any(r.diverged_at is not None for r in results.values()) else 0
    names = ("grad_F_sq", "consensus_x", "consensus_y", "ll_error")
    head = f"{'variant':8s} {'step':>6s} " + " ".join(f"{m:>12s}" for m in names) + \
        f" {'agent-steps/s':>14s} {'compile s':>9s}"
    print(f"\nfinal metrics (T={args.steps})\n{head}\n" + "-" * len(head))
    for v, res in results.items():
        fin = res.final()
        print(f"{v:8s} {int(res.steps[-1]):6d} " + " ".join(f"{fin[m]:12.3e}" for m in names)
              + f" {res.steps_per_sec * args.n:14.3e} {res.compile_time:9.2f}"
              + (f"  DIVERGED by step {res.diverged_at}" if res.diverged_at is not None
                 else ""))
    out = Path(args.out)
    meta = {"command": "slamjax " + " ".join(sys.argv[1:]),
            "config": {k: v for k, v in vars(args).items() if k != "process_id"},
            "distributed": {"processes": procs, "devices": mesh.size,
                            "scheme": pg.scheme, "bytes_per_step": comm},
            "graph": {"kind": graph.kind, "n": graph.n, "edges": graph.num_edges,
                      "lam_max": graph.lam_max},
            "backend": jax.default_backend(), "jax_version": jax.__version__}
    payload = {**meta, "variants": {v: {**r.to_dict(), "x_mean": xbar[v]}
                                    for v, r in results.items()}}
    path = write_json(out / f"{args.name}.json", payload)
    print(f"\nwrote {path}", end="")
    if not args.no_plot:
        from slamjax.plotting import plot_theorem1

        png = plot_theorem1({v: (r.steps, r.history) for v, r in results.items()},
                            out / f"{args.name}.png",
                            title=f"{graph.kind} graph, n={graph.n}, T={args.steps}, "
                                  f"{procs} processes")
        print(f" and {png}", end="")
    print(flush=True)
    return 1 if any(r.diverged_at is not None for r in results.values()) else 0




CACHE_ENV = "SLAMJAX_CACHE_DIR"
"""Environment variable naming a persistent compilation-cache directory (unset: no cache)."""


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


def _cmd_run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="slamjax run", description=(
        "The main job: a heterogeneous-data quadratic bilevel problem solved by SLAM, SLAM-L "
        "and SLAM-U side by side; prints a final metrics table and writes <out>/<name>.json "
        "and .png. Runs that cannot fit in memory are refused before anything is allocated."))
    add_run_arguments(p)
    args, rc = parse(p, argv)
    if args is None:
        return rc
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        return cmd_run(args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"slamjax: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """The ``slamjax`` command (``argv``: the arguments after the program name; default
    ``sys.argv[1:]``); returns the exit code. A bare ``slamjax`` prints the help (exit 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # persistent compilation cache: --cache-dir DIR, else $SLAMJAX_CACHE_DIR, else off
        argv, cache = _pop_cache_dir(argv)
        enable_compilation_cache(cache if cache is not None else os.environ.get(CACHE_ENV))
    except ValueError as e:
        print(f"slamjax: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser(DESCRIPTION)
    if not argv:
        parser.print_help()
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return _cmd_run(rest)
    if cmd in TOOLS:
        return run_tool_command(cmd, rest)
    if cmd in SOURCE_COMMANDS:
        from slamjax.tools.reproduce import run_script

        return run_script(cmd, SOURCE_COMMANDS[cmd], rest)
    if cmd == "reproduce":
        return reproduce_command(rest)
    _, rc = parse(parser, argv)  # --help, --version, or an unknown command (exit 2)
    return rc if rc is not None else 0


if __name__ == "__main__":
    sys.exit(main())
