"""The one way a tool runs from the command line: ``slamjax <tool>`` and the thin
``experiments/<script>.py`` wrappers both parse with the tool's ``add_arguments`` and call its
``main(args)``; a bad argument or output place is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser(tool, prog: str | None = None,
                 parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """An argument parser for ``tool`` (a module with ``DESCRIPTION``, ``add_arguments``
    and ``main``), or ``parser`` filled with its arguments."""
    if parser is None:
        parser = argparse.ArgumentParser(prog=prog, description=tool.DESCRIPTION)
    tool.add_arguments(parser)
    parser.set_defaults(_tool=tool)
    return parser


def run_tool(tool, args: argparse.Namespace, prog: str, argv) -> int:
    """``tool.main(args)`` with the command line recorded in ``args.command``; a
    ``ValueError`` (bad input, an output place that cannot be written) is one line
    ``<prog>: error: ...`` and exit code 2."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    args.command = " ".join([prog] + list(argv))
    try:
        rc = tool.main(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


def script_main(tool, prog: str, argv=None) -> int:
    """Entry point of an ``experiments/`` wrapper script (``prog``: how the command is
    shown in usage lines and in the recorded command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(tool, prog).parse_args(argv)
    return run_tool(tool, args, prog, argv)
