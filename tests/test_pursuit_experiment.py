"""Issue 14: ``experiments/pursuit.py`` end to end (the CI smoke: 4 pursuers, 2 seeds, 3 rounds,
fast compile), its outputs, ``--replot`` and its argument errors. The scripts run as
subprocesses (tests never import experiment scripts)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slamjax.rl import pursuit_ac as P

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
#: the smoke runs three of the five methods (five compiled programs instead of nine; every
#: method's rules are tested in test_pursuit_ac.py)
ALGS = {"slam_ac", "cac", "nocomm"}
#: the script's paired comparisons (``PAIRS`` in experiments/pursuit.py)
PAIRS = [("slam_ac", "cac"), ("slam_ac", "mdac"), ("cac", "mdac"), ("slam_ac", "nocomm"),
         ("slam_ac", "central"), ("central", "nocomm")]


def _script(name, argv):
    """Run ``experiments/<name> argv``: (exit code, stdout, stderr)."""
    out = subprocess.run([sys.executable, str(EXPERIMENTS / name), *argv], capture_output=True,
                         text=True, timeout=1800)
    return out.returncode, out.stdout, out.stderr


def test_pursuit_reproduction_smoke(tmp_path):
    code, _, err = _script("pursuit.py", ["--quick", "--no-progress", "--methods",
                                          ",".join(sorted(ALGS)), "--out", str(tmp_path)])
    assert code == 0, err
    payload = json.loads((tmp_path / "pursuit.json").read_text())
    assert payload["graph"]["kind"] == "ring" and payload["env"]["shared_reward"] is False
    assert 0 <= payload["random"]["capture_rate"] <= 1
    for fig in ("fig2", "fig4"):
        runs = payload[fig]["runs"]
        assert set(runs) == ALGS
        for alg, e in runs.items():
            assert len(e["final_return"]) == payload["cfg"]["seeds"] == 2
            assert np.all(np.isfinite(e["final_return"])) and e["diverged_at"] == [-1, -1]
            want = ["conv1"] if fig == "fig2" and alg != "nocomm" else []
            assert e["shared_actor_layers"] == want
        assert {(r["a"], r["b"]) for r in payload[fig]["paired"]} == {
            (a, b) for a, b in PAIRS if a in ALGS and b in ALGS}
        assert (tmp_path / f"pursuit_{fig}.png").stat().st_size > 10_000
    # the no-communication control is one run shown in both figures (same numbers)
    assert payload["fig2"]["runs"]["nocomm"] == payload["fig4"]["runs"]["nocomm"]
    # Fig 4 shares no actor layer; Fig 2's shared layer contracts under every consensus rule
    for alg in ALGS:
        f4 = np.asarray(payload["fig4"]["runs"][alg]["curves"]["consensus_actor_shared"])
        assert np.all(f4 == 0)
    for alg in ("slam_ac", "cac"):
        e = payload["fig2"]["runs"][alg]
        end = np.asarray(e["curves"]["consensus_actor_shared"])[:, -1]
        assert np.all(end < 0.5 * e["initial_disagreement"]["actor_shared"]), alg
    md = (tmp_path / "pursuit.md").read_text()
    assert md.count("Ordering by mean final return") == 2 and "SLAM-AC − CAC" in md
    before = md
    (tmp_path / "pursuit.md").unlink()
    assert _script("pursuit.py", ["--replot", "--out", str(tmp_path)])[0] == 0
    assert (tmp_path / "pursuit.md").read_text() == before


@pytest.mark.parametrize("argv,msg", [
    (["--seeds", "1"], "--seeds must be >= 2"),
    (["--figs", "fig3"], "--figs: choose from"),
    (["--pursuers", "2"], "--pursuers must be >= 3"),
    (["--tune-steps", "1e-3,-1"], "--tune-steps must be positive"),
    (["--tune-steps", "abc"], "comma-separated numbers"),
    (["--methods", "slam_ac,dac"], "--methods: choose from"),
])
def test_pursuit_reproduction_bad_arguments(argv, msg):
    code, _, err = _script("pursuit.py", argv)
    assert code == 2 and msg in err


def test_methods_subset():
    code, out, err = _script("pursuit.py", ["--methods", "nocomm, central", "--quick",
                                            "--print-config"])
    assert code == 0, err
    assert json.loads(out)["methods"] == ["central", "nocomm"]
    code, out, err = _script("pursuit.py", ["--print-config"])
    assert code == 0, err
    assert json.loads(out)["methods"] == sorted(P.ALGORITHMS)


def test_replot_without_results_is_a_clear_error(tmp_path):
    code, _, err = _script("pursuit.py", ["--replot", "--out", str(tmp_path)])
    assert code == 2
    assert "does not exist; run without --replot first" in err


def test_bench_conv_smoke(tmp_path):
    out = tmp_path / "b.json"
    code, _, err = _script("bench_conv.py", ["--seeds", "1", "--agents", "2", "--batch", "2",
                                             "--reps", "1", "--rounds", "1", "--out", str(out)])
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert set(payload["agent_samples_per_s"]) == {"patch", "lax_conv"}
    assert all(v > 0 for v in payload["ratio"].values())


def test_pursuit_pilot_smoke(tmp_path):
    out = tmp_path / "p.json"
    code, _, err = _script("pursuit_pilot.py", ["--seeds", "1", "--rounds", "10",
                                                "--max-cycles", "10", "--num-envs", "2",
                                                "--iters", "2", "--out", str(out)])
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert set(payload["runs"]) == {"local", "estimate"}
    assert all(len(r["capture_rate_tenths"]) == 10 for r in payload["runs"].values())


@pytest.mark.parametrize("argv,msg", [(["--advantage", "oracle"], "--advantage: choose from"),
                                      (["--rounds", "5"], "--rounds must be >= 10")])
def test_pursuit_pilot_bad_arguments(argv, msg):
    code, _, err = _script("pursuit_pilot.py", argv)
    assert code == 2 and msg in err
