"""``slamjax reproduce <target>`` and ``slamjax bench-envs``: the commands that run an
``experiments/`` script of a source checkout.

The paper's reproductions need the source tree (the scripts, their reports and, for some, data
or reference packages that a wheel does not carry). Installed from a wheel, each of these
commands says so in one line (exit code 2); ``--help`` and ``--list`` work everywhere.
Outputs go to ``--out`` (default ``./results`` in the current directory, ``./results/quick``
with ``--quick`` for the scripts that keep quick runs apart), never into the package.

:data:`TARGETS` names every target with the script it runs, what it writes and how long it
took (measured on a 2-core CPU, from the experiment reports).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = ["Target", "TARGETS", "REPRODUCE", "SOURCE_COMMANDS", "EXPERIMENTS",
           "script_path", "describe", "list_targets", "reproduce_help", "missing_line",
           "default_out", "forwarded_argv", "run_script"]


class Target(NamedTuple):
    """One reproduction: ``script`` (in ``experiments/``) run with ``args``; ``what`` it
    reproduces, the files it ``writes``, its ``duration`` (measured on a 2-core CPU),
    ``quick_dir`` (``--quick`` writes to ``<out>/quick``) and ``out_file`` (the script's
    ``--out`` names a JSON file: the command's ``--out DIR`` becomes ``DIR/<out_file>``)."""

    script: str
    args: tuple
    what: str
    writes: str
    duration: str
    quick_dir: bool = False
    out_file: str | None = None


_NAV = "Cooperative navigation (mpe2 rules), SLAM-AC vs DAC vs MDAC"
TARGETS = {
    "table2": Target("meta_learning.py", (), "Table 2: decentralized meta-learning on MNIST "
                     "(SLAM-U, ANIL); needs the MNIST files (--data PATH or $SLAMJAX_DATA)",
                     "table2.json, table2_summary.json, table2.md, table2.png, fig8a.png",
                     "14 min"),
    "fig8": Target("meta_learning.py", (), "Fig 8: the accuracy curves of Table 2's runs "
                   "(the same run as table2)", "table2.json, table2.md, table2.png, fig8a.png",
                   "14 min"),
    "fig9": Target("meta_learning.py", ("--fig9",), "Fig 9: SLAM-U's sensitivity to α, β, ρ "
                   "at n = 4 (MNIST)", "fig9.json, fig9_*.png", "4 min"),
    "suite": Target("bilevel_suite.py", (), "Head-to-head suite: SLAM, bias-free SLAM and the "
                    "decentralized bilevel peers on quadratic, hyper-cleaning and ANIL "
                    "problems (121 cases)", "bilevel_suite.json, .md, .png", "22 min"),
    "fig1": Target("navigation.py", ("--figure", "1"), f"Fig 1: {_NAV}, n = 3",
                   "fig1.json, fig1.png", "5 min", quick_dir=True),
    "fig5": Target("navigation.py", ("--figure", "5"), f"Fig 5: {_NAV}, n = 4, 6, 8, 10",
                   "fig5.json, fig5.png", "34 min", quick_dir=True),
    "fig6": Target("navigation.py", ("--figure", "6"), "Fig 6: SLAM-AC's sensitivity to "
                   "α, β, ρ (navigation, n = 3)", "fig6.json, fig6.png", "4 min",
                   quick_dir=True),
    "fig7": Target("navigation.py", ("--figure", "7"), "Fig 7: SLAM-PPO vs Dec-PPO "
                   "(navigation, n = 3)", "fig7.json, fig7.png", "5 min", quick_dir=True),
    "navigation_hetero": Target("navigation_hetero.py", (), "Figs 1, 5, 7 redone with reward "
                                "heterogeneity, sparse graphs and controls",
                                "nav_hetero.json, nav_hetero.md, nav_hetero_fig*.png",
                                "38 min (91 min under load)", quick_dir=True),
    "fig2": Target("pursuit.py", ("--figs", "fig2"), "Fig 2: pursuit-evasion, SLAM-AC vs CAC "
                   "vs MDAC, actor conv1 + critic in consensus (tuning + runs)",
                   "pursuit.json, pursuit.md, pursuit_fig2.png", "23 min", quick_dir=True),
    "fig4": Target("pursuit.py", ("--figs", "fig4"), "Fig 4: pursuit-evasion, consensus on the "
                   "critics only (tuning + runs)",
                   "pursuit.json, pursuit.md, pursuit_fig4.png", "19 min", quick_dir=True),
    "pursuit": Target("pursuit.py", (), "Figs 2 and 4 together (pursuit-evasion)",
                      "pursuit.json, pursuit.md, pursuit_fig2.png, pursuit_fig4.png",
                      "37 min", quick_dir=True),
    "network_faults": Target("network_faults.py", (), "Robustness of SLAM, bias-free SLAM and "
                             "the peers to link drops, quantization and stragglers (n = 256)",
                             "network_faults.json, network_faults.png, "
                             "network_faults_dual.png", "17 min",
                             out_file="network_faults.json"),
}
"""Every ``slamjax reproduce`` target."""
REPRODUCE = {k: (t.script, list(t.args)) for k, t in TARGETS.items()}
"""``slamjax reproduce <target>`` → (script, forwarded arguments)."""
SOURCE_COMMANDS = {
    "bench-envs": Target("bench_envs.py", (), "Throughput of the JAX navigation and pursuit "
                         "environments against their references (mpe2, PettingZoo: the test "
                         "extra)", "bench_envs.json, bench_envs.png, bench_envs_pursuit.json",
                         "3 min"),
}
"""Other sub-commands that run a source checkout's script (``slamjax bench-envs``)."""
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
"""Where the scripts are: ``experiments/`` beside the ``slamjax`` package of a source checkout."""


def script_path(script: str) -> Path | None:
    """The path of ``experiments/<script>`` in this source checkout, or None (a wheel)."""
    path = EXPERIMENTS / script
    return path if path.is_file() else None


def describe(name: str, t: Target, width: int = 96) -> str:
    """One target as an indented paragraph: what it reproduces, writes and takes."""
    import textwrap

    extra = " ".join(t.args)
    text = (f"{t.what}. Writes {t.writes}; ≈ {t.duration}; runs experiments/{t.script}"
            f"{(' ' + extra) if extra else ''}.")
    return textwrap.fill(text, width, initial_indent=f"  {name:18s} ",
                         subsequent_indent=" " * 21)


def list_targets() -> str:
    """The ``--list`` text: every target, what it writes and how long it takes."""
    lines = [describe(k, t) for k, t in TARGETS.items()]
    return ("targets (durations measured on a 2-core CPU; --quick runs a small version in "
            "1–2 min):\n" + "\n".join(lines))


def reproduce_help() -> str:
    """The ``slamjax reproduce --help`` text."""
    import textwrap

    intro = textwrap.fill(
        "Reproduce a table or figure of the paper by running an experiments/ script of a "
        "source checkout (git clone the repository, then pip install -e \".[all]\" there). "
        "Options after TARGET go to the script: `slamjax reproduce TARGET --help` lists "
        "them; --quick runs a small version. Outputs go to --out (default ./results in the "
        "current directory; ./results/quick with --quick for the navigation and pursuit "
        "targets).", 96)
    return ("usage: slamjax reproduce [-h] [--list] TARGET [options of the script ...]\n\n"
            f"{intro}\n\noptions:\n  -h, --help          show this help message and exit\n"
            "  --list              list the targets and exit\n\n" + list_targets() + "\n")


def missing_line(command: str, script: str) -> str:
    """The one line said when ``command`` needs ``experiments/<script>`` and this is not a
    source checkout."""
    return (f"slamjax: `slamjax {command}` runs experiments/{script} of a source checkout, "
            f"which this installation ({EXPERIMENTS.parent}) does not have: git clone the "
            "repository and run it there (pip install -e \".[all]\")")


def default_out(t: Target, argv) -> Path:
    """The output directory when ``--out`` is not given: ``./results`` in the current
    directory (``./results/quick`` with ``--quick`` for the scripts that keep them apart)."""
    out = Path.cwd() / "results"
    return out / "quick" if (t.quick_dir and "--quick" in argv) else out


def _out_value(argv) -> tuple[int, str] | None:
    """(index of the value, value) of the last ``--out``/``--out-dir`` in ``argv``."""
    found = None
    for i, a in enumerate(argv):
        flag, eq, val = a.partition("=")
        if flag in ("--out", "--out-dir"):
            found = (i, val) if eq else ((i + 1, argv[i + 1]) if i + 1 < len(argv) else None)
    return found


def forwarded_argv(t: Target, argv: list) -> tuple[list, Path]:
    """(the script's arguments, the output directory to check): ``t.args`` + ``argv`` with
    ``--out`` added when missing (:func:`default_out`) and, for a script whose ``--out`` is
    a file, the directory turned into ``DIR/<out_file>``."""
    argv = list(t.args) + list(argv)
    given = _out_value(argv)
    out = Path(given[1]) if given else default_out(t, argv)
    if t.out_file:
        stem = t.out_file.replace(".json", "_quick.json") if "--quick" in argv else t.out_file
        target = str(out / stem)
        if given:
            i = given[0]
            argv[i] = f"{argv[i].partition('=')[0]}={target}" if argv[i].startswith("--out=") \
                else target
        else:
            argv += ["--out", target]
    elif not given:
        argv += ["--out", str(out)]
    return argv, out


def run_script(command: str, t: Target, argv: list) -> int:
    """Run ``experiments/<t.script>`` for ``slamjax <command>`` with ``argv`` (``--help``
    shows the script's options under ``usage: slamjax <command>``); the output directory is
    checked before the script starts. Exit code: the script's, 2 for a bad ``--out`` or a
    missing source checkout."""
    from slamjax.io import check_output_dir

    path = script_path(t.script)
    wants_help = "-h" in argv or "--help" in argv
    if path is None:
        if wants_help:
            import textwrap

            print(f"usage: slamjax {command} [options of experiments/{t.script}]\n\n"
                  + textwrap.fill(f"{t.what}. Writes {t.writes} (≈ {t.duration}, measured on "
                                  "a 2-core CPU).", 88) + "\n\n"
                  + textwrap.fill(missing_line(command, t.script), 88))
            return 0
        print(missing_line(command, t.script), file=sys.stderr)
        return 2
    args, out = forwarded_argv(t, argv) if not wants_help else (list(t.args) + argv, None)
    if out is not None:
        try:
            check_output_dir(out, "--out")
        except ValueError as e:
            print(f"slamjax: error: {e}", file=sys.stderr)
            return 2
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        _exec_script(path, [f"slamjax {command}"] + args)
    except SystemExit as e:  # the script's own exit code (a message: printed, exit 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        return int(e.code or 0)
    return 0


def _exec_script(path: Path, argv: list) -> None:
    """Run ``path`` as ``__main__`` with ``sys.argv = argv`` (what ``runpy.run_path`` does,
    except that ``sys.argv[0]`` stays ``argv[0]``, so the script's usage line names the
    ``slamjax`` command instead of the file)."""
    import types

    code = compile(path.read_bytes(), str(path), "exec")
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    saved_argv, saved_main = sys.argv, sys.modules.get("__main__")
    sys.argv, sys.modules["__main__"] = list(argv), module
    try:
        exec(code, module.__dict__)
    finally:
        sys.argv = saved_argv
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
