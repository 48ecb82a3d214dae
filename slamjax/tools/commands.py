"""The ``slamjax`` command's dispatch: the top-level parser, the tools of :mod:`slamjax.tools`
(``slamjax sweep``, ``tune``, ``bench``, ``bench-grad``, whose options are parsed only when
one is chosen) and ``slamjax reproduce``. ``slamjax run`` itself is :mod:`slamjax.cli`."""

from __future__ import annotations

import argparse
import importlib
import sys

from slamjax.tools.reproduce import SOURCE_COMMANDS, TARGETS, reproduce_help

__all__ = ["TOOLS", "SCRIPTS", "version", "build_parser", "parse", "run_tool_command",
           "reproduce_command"]

TOOLS = {
    "sweep": ("slamjax.tools.sweep", "linear speed-up of SLAM over n = 1 … 4096 next to a "
              "centralized oracle (--quick: n ≤ 64, ≈ 2 min)"),
    "tune": ("slamjax.tools.tune", "tune ρ and α by gradient through 200-step SLAM runs "
             "(≈ 1–2 min)"),
    "bench": ("slamjax.tools.bench", "throughput against NumPy, per-agent loops and a "
              "hand-written kernel (--quick ≈ 2 min, full ≈ 15 min)"),
    "bench-grad": ("slamjax.tools.bench_grad", "time and memory of differentiating a whole "
                   "SLAM run (--quick ≈ 1 min)"),
}
"""Sub-command → (module of :mod:`slamjax.tools`, one-line help): installed with the package."""
SCRIPTS = {
    "bench": "bench_throughput.py",
    "bench-grad": "bench_grad.py",
    "bench-envs": "bench_envs.py",
    "sweep": "speedup_sweep.py",
    "tune": "tune_by_gradient.py",
}
"""Sub-command → its ``experiments/`` script (for the tools, a thin wrapper of the same code)."""


def version() -> str:
    """``slamjax.__version__`` (the one version of the package)."""
    from slamjax import __version__

    return __version__


def build_parser(description: str) -> argparse.ArgumentParser:
    """The top-level parser (``description``: its first lines): every sub-command with its
    one-line help (the tools' own options are added only when one is chosen, so
    ``slamjax --help`` imports none of them)."""
    parser = argparse.ArgumentParser(
        prog="slamjax", description=description,
        epilog="`slamjax <command> --help` shows a command's options; `slamjax reproduce "
               "--list` the paper reproductions. --cache-dir DIR (any sub-command; or "
               "$SLAMJAX_CACHE_DIR): keep compiled XLA programs in DIR so repeated runs skip "
               "compilation (off by default). Outputs go to --out (default ./results in the "
               "current directory).")
    parser.add_argument("--version", action="version", version=f"slamjax {version()}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.add_parser("run", help="main job: SLAM / SLAM-L / SLAM-U on a quadratic problem "
                               "(default 64 agents, 3000 steps, ≈ 20 s)")
    for name, (_, text) in TOOLS.items():
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("bench-envs", add_help=False,
                   help="throughput of the JAX navigation and pursuit environments against "
                        f"mpe2 / PettingZoo (source checkout; ≈ "
                        f"{SOURCE_COMMANDS['bench-envs'].duration})")
    sub.add_parser("reproduce", add_help=False,
                   help=f"reproduce a table or figure of the paper (source checkout; "
                        f"{len(TARGETS)} targets: slamjax reproduce --list)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]):
    """``parser.parse_args(argv)``; ``--help``/``--version`` and usage errors become the
    exit code (0 / 2) instead of ``SystemExit``."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as e:
        return None, (e.code if isinstance(e.code, int) else (0 if e.code is None else 2))


def run_tool_command(cmd: str, argv: list[str]) -> int:
    """``slamjax <cmd> ARGS`` for a tool of :data:`TOOLS` (its module imported only now)."""
    from slamjax.tools._runner import build_parser as tool_parser, run_tool

    tool = importlib.import_module(TOOLS[cmd][0])
    args, rc = parse(tool_parser(tool, prog=f"slamjax {cmd}"), argv)
    if args is None:
        return rc
    return run_tool(tool, args, f"slamjax {cmd}", argv)


def reproduce_command(argv: list[str]) -> int:
    """``slamjax reproduce ARGS``: ``--help``/``--list`` (exit 0), a target (the script's
    exit code), or an unknown target (exit 2)."""
    from slamjax.tools.reproduce import list_targets, run_script

    if not argv or argv[0] in ("-h", "--help"):
        print(reproduce_help(), end="")
        return 0
    if argv[0] == "--list":
        print(list_targets())
        return 0
    if argv[0] not in TARGETS:
        print("usage: slamjax reproduce [-h] [--list] TARGET [options of the script ...]\n"
              f"slamjax reproduce: error: unknown target {argv[0]!r}; choose one of "
              f"{sorted(TARGETS)} (slamjax reproduce --list says what each writes)",
              file=sys.stderr)
        return 2
    return run_script(f"reproduce {argv[0]}", TARGETS[argv[0]], argv[1:])
