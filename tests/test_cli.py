"""The ``slamjax`` command line: help, version, choices, reproduction targets, the memory
refusal, and what a wheel install (no ``experiments/``) says. Fast: nothing here runs a job
larger than a few agents."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import slamjax
import slamjax as sj
from slamjax import cli
from slamjax.cli import main
from slamjax.comm import MIXING_MODES
from slamjax.graphs import GRAPH_KINDS
from slamjax.solvers import SOLVERS
from slamjax.tools import memory, reproduce

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "sweep", "tune", "bench", "bench-grad", "bench-envs", "reproduce")


def test_bare_command_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slamjax")
    for cmd in COMMANDS:
        assert re.search(rf"^\s+{re.escape(cmd)}\b", out, re.M), cmd
    assert "``" not in out and "slamjax: decentralized bilevel optimization" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"slamjax {slamjax.__version__}"


def test_python_dash_m_slamjax(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slamjax", "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"slamjax {slamjax.__version__}"


@pytest.mark.parametrize("cmd", ["sweep", "tune", "bench", "bench-grad", "run"])
def test_subcommand_help_names_the_command(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: slamjax {cmd} ")
    assert "--out" in out and "``" not in out


def _run_parser():
    p = argparse.ArgumentParser(prog="slamjax run")
    cli.add_run_arguments(p)
    return p


def test_enumerated_flags_are_choices_and_the_error_lists_them_all(capsys, tmp_path):
    p = _run_parser()
    acts = {a.dest: a for a in p._actions}
    assert tuple(acts["graph"].choices) == GRAPH_KINDS
    assert tuple(acts["mixing"].choices) == MIXING_MODES
    assert tuple(acts["solver"].choices) == tuple(SOLVERS)
    assert tuple(acts["variant"].choices) == ("all",) + tuple(sj.VARIANTS)
    help_text = p.format_help()
    assert "{" + ",".join(MIXING_MODES) + "}" in help_text  # help and error list the same 5
    assert main(["run", "--mixing", "fast", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown mixing mode 'fast'" in err and str(MIXING_MODES) in err
    assert "Traceback" not in err
    args = p.parse_args(["--graph", "er", "--variant", "SLAM-L", "--solver", "NEUMANN"])
    assert (args.graph, args.variant, args.solver) == ("erdos_renyi", "slam_l", "neumann")


def test_reproduce_list_and_help_name_every_target(capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "measured on a 2-core CPU" in listed
    for name, t in reproduce.TARGETS.items():
        block = listed[listed.index(f"  {name} "):]
        assert t.script in block and "≈" in block and "Writes" in block, name
    assert main(["reproduce", "--help"]) == 0
    helped = capsys.readouterr().out
    assert helped.startswith("usage: slamjax reproduce") and all(n in helped
                                                                 for n in reproduce.TARGETS)
    assert main(["reproduce"]) == 0  # no target: the help, not an error
    assert main(["reproduce", "fig3"]) == 2
    assert "unknown target 'fig3'" in capsys.readouterr().err


def test_reproduce_targets_exist_in_the_checkout():
    for t in list(reproduce.TARGETS.values()) + list(reproduce.SOURCE_COMMANDS.values()):
        assert (ROOT / "experiments" / t.script).is_file(), t.script


def test_forwarded_script_help_names_the_command(capsys):
    assert main(["bench-envs", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: slamjax bench-envs ")


def test_without_a_source_checkout_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    """What a wheel install says: --help works (exit 0), running is one line (exit 2)."""
    monkeypatch.setattr(reproduce, "EXPERIMENTS", tmp_path / "site-packages" / "experiments")
    for argv in (["reproduce", "fig1"], ["reproduce", "suite", "--quick"], ["bench-envs"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "source checkout" in err and "git clone" in err, err
    for argv in (["reproduce", "fig1", "--help"], ["bench-envs", "--help"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: slamjax {' '.join(argv[:-1])}") and "Writes" in out


def test_reproduce_outputs_default_to_cwd_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig1 = reproduce.TARGETS["fig1"]
    argv, out = reproduce.forwarded_argv(fig1, ["--quick"])
    assert out == tmp_path / "results" / "quick" and argv[-2:] == ["--out", str(out)]
    argv, out = reproduce.forwarded_argv(reproduce.TARGETS["suite"], [])
    assert out == tmp_path / "results"
    nf = reproduce.TARGETS["network_faults"]  # its script's --out is a JSON file
    argv, out = reproduce.forwarded_argv(nf, ["--out", "x"])
    assert out == Path("x") and argv == ["--out", str(Path("x") / "network_faults.json")]
    argv, _ = reproduce.forwarded_argv(nf, ["--quick", "--out=y"])
    assert argv == ["--quick", f"--out={Path('y') / 'network_faults_quick.json'}"]


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a graph or running anything fails the test."""
    def boom(*a, **k):
        raise AssertionError("allocated before the memory check")

    monkeypatch.setattr(sj, "run", boom)
    monkeypatch.setattr(sj, "make_graph", boom)
    monkeypatch.setattr(sj.graphs, "make_graph", boom)
    monkeypatch.setattr(sj.graphs, "complete", boom)


def test_run_that_cannot_fit_is_refused_before_allocating(nothing_built, monkeypatch,
                                                          tmp_path, capsys):
    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 2**30)
    rc = main(["run", "--n", "1000000", "--graph", "complete", "--mixing", "dense",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(r"needs about [\d.]+ TiB .*more than the 16.0 GiB available: the largest "
                     r"n that fits is about 4,096 \(the dense-mixing limit\)", err), err
    assert main(["run", "--n", "10000000", "--graph", "ring", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    fit = int(re.search(r"largest n that fits is about ([\d,]+)", err).group(1).replace(",", ""))
    opts = dict(graph="ring", dx=10, dy=10, m=2, variants=3)
    assert memory.estimate_run_bytes(fit, **opts).total <= 16 * 2**30
    assert memory.estimate_run_bytes(fit + 1, **opts).total > 16 * 2**30
    assert not any(tmp_path.iterdir())  # nothing written


def test_dense_mixing_above_the_limit_is_refused_before_building(nothing_built, tmp_path,
                                                                 capsys):
    assert main(["run", "--n", "5000", "--graph", "ring", "--mixing", "dense",
                 "--out", str(tmp_path)]) == 2
    assert "refused for --n 5000 > 4096" in capsys.readouterr().err


def test_output_names_stay_in_the_output_directory(tmp_path, capsys):
    for argv in (["run", "--name", "../escape"], ["sweep", "--name", "a/b"],
                 ["tune", "--name", ".."], ["bench", "--name", "/abs"]):
        assert main(argv + ["--out", str(tmp_path)]) == 2, argv
        assert "must be a plain file name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_run_without_matplotlib_writes_the_json_and_says_so(monkeypatch, tmp_path, capsys):
    from slamjax.tools import _machine

    monkeypatch.setattr(_machine, "have_matplotlib", lambda: False)
    rc = main(["run", "--n", "8", "--steps", "20", "--dx", "2", "--dy", "2", "--m", "1",
               "--variant", "slam", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.json"]


# ----------------------------------------------------------------------------------------
# the memory estimator
# ----------------------------------------------------------------------------------------
#: peak RSS (KiB) of `slamjax run --steps 20 --variant slam --no-plot` measured on the 2-core
#: CPU (GNU time %M), and the options of each run
MEASURED = [
    (dict(n=100_000, graph="ring"), 686_112),
    (dict(n=1_000_000, graph="ring"), 2_727_300),
    (dict(n=1_000_000, graph="ring", dx=5, dy=5, m=1), 1_212_196),
    (dict(n=300_000, graph="ring", dx=20, dy=20, m=2), 2_358_268),
    (dict(n=1_000_000, graph="ring", x64=True), 5_129_596),
    (dict(n=1_000_000, graph="small_world"), 3_590_568),
    (dict(n=300_000, graph="small_world", dx=5, dy=5, m=1), 827_020),
    (dict(n=100_000, graph="erdos_renyi"), 1_261_604),
    (dict(n=300_000, graph="erdos_renyi"), 3_159_736),
    (dict(n=300_000, graph="ring", heterogeneous_hessian=True), 2_268_416),
    (dict(n=1_000_000, graph="complete"), 2_671_764),
    (dict(n=4096, graph="complete", mixing="dense"), 1_270_708),
    (dict(n=15_000, graph="complete"), 14_252_152),  # still building its edge list when stopped
]


@pytest.mark.parametrize("opts,kib", MEASURED)
def test_estimate_is_a_modest_upper_bound_of_measured_runs(opts, kib):
    est = memory.estimate_run_bytes(variants=1, **opts)
    assert 1.0 < est.total / (kib * 1024) < 1.6, (opts, est)


def test_estimate_terms():
    ring = memory.estimate_run_bytes(10**6, graph="ring")
    assert ring.mixing == "stencil" and ring.edges == 10**6
    big_k = memory.estimate_run_bytes(10**6, graph="complete")
    assert big_k.mixing == "complete" and big_k.edges == 0  # the O(n) product
    dense = memory.estimate_run_bytes(10**6, graph="complete", mixing="dense")
    assert dense.edges == 10**6 * (10**6 - 1) // 2 and dense.parts["graph"] > 12 * 10**12
    assert memory.estimate_run_bytes(1000, graph="ring", x64=True).parts["state"] == \
        2 * memory.estimate_run_bytes(1000, graph="ring").parts["state"]
    het = memory.estimate_run_bytes(1000, graph="ring", heterogeneous_hessian=True)
    assert het.parts["data"] > memory.estimate_run_bytes(1000, graph="ring").parts["data"]
    assert memory.edge_count("erdos_renyi", 1000, er_p=0.5) == 0.5 * 1000 * 999 / 2
    assert memory.DENSE_MAX_N == sj.comm.DENSE_MAX_N


def test_largest_n_and_check_run_fits():
    budget = 4 * 2**30
    n = memory.largest_n(budget, 10**8, graph="small_world")
    assert memory.estimate_run_bytes(n, graph="small_world").total <= budget
    assert memory.estimate_run_bytes(n + 1, graph="small_world").total > budget
    assert memory.largest_n(2**20, 100, graph="ring") == 0  # below the runtime itself
    est = memory.check_run_fits(64, available=budget, graph="erdos_renyi")
    assert est.total < budget
    with pytest.raises(ValueError, match=rf"largest n that fits is about {n:,}"):
        memory.check_run_fits(10**8, available=budget, graph="small_world")
    assert memory.available_bytes() is None or memory.available_bytes() > 0
    assert memory.format_bytes(1536) == "1.5 KiB"


def test_experiment_wrappers_are_thin():
    """The tools' experiments/ scripts only parse and call the library (same code, same
    numbers): no experiment logic left in them."""
    for script, mod in (("speedup_sweep.py", "sweep"), ("tune_by_gradient.py", "tune"),
                        ("bench_grad.py", "bench_grad"), ("bench_throughput.py", "bench")):
        text = (ROOT / "experiments" / script).read_text()
        code = text[text.index('"""', 3) + 3:]
        assert f"from slamjax.tools import {mod} as _tool" in code
        assert len(code.splitlines()) < 30 and "def main" in code, script
        assert cli.SCRIPTS[{"bench_grad": "bench-grad"}.get(mod, mod)] == script


def test_tools_write_into_out_only(tmp_path, monkeypatch):
    """Default output place: ./results of the current directory (never the package)."""
    from slamjax.tools import _runner, sweep

    monkeypatch.chdir(tmp_path)
    args = _runner.build_parser(sweep, "slamjax sweep").parse_args([])
    assert args.out == "results" and not Path(args.out).is_absolute()
    pkg = Path(slamjax.__file__).resolve().parent
    assert os.path.abspath(args.out) == str(tmp_path / "results")
    assert not str(tmp_path).startswith(str(pkg))
