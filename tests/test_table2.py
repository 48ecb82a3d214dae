"""Table 2 protocol (``experiments/meta_learning.py``): step selection that stops once decided,
reporting on fresh seeds, samples counted as drawn, the summary the figure and the README use,
and an end-to-end run at toy size.

The selection rule must never stop before the choice is decided (an unfinished grid point
that could still win keeps the run going) and must stop once it is; the summary's efficiency,
speed-up and monotonicity are checked against hand-computed values.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "experiments" / "meta_learning.py"
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"
needs_script = pytest.mark.skipif(not SCRIPT.is_file(),
                                  reason="experiments/ not present (installed package)")
needs_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST not found at {SHARED_MNIST}")


def _script(*args, timeout=300):
    """The experiment script run as a command (tests never import experiment scripts)."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=timeout)


def _curves(crossings, num_logs, log_every):
    """Accuracy rows that cross 0.5 exactly at the given steps (NaN: never), logged every
    ``log_every`` steps."""
    steps = np.arange(num_logs) * log_every
    rows = []
    for c in crossings:
        if c is None or not math.isfinite(c):
            rows.append(np.full(num_logs, 0.2))
        else:
            rows.append(np.clip(0.5 + (steps - c) / (10.0 * log_every), 0.0, 1.0))
    return steps, np.asarray(rows)


def test_selection_stop_waits_until_the_choice_is_decided():
    from slamjax.problems.meta_anil import selection_stop

    stop = selection_stop(num_points=2, num_seeds=2, threshold=0.5)
    # point 0 finished (crossings 40, 60: mean 50); point 1 has one seed at 20 and one still
    # running at step 70: its mean can still be (20 + 70)/2 = 45 < 50 → must not stop
    steps, acc = _curves([40, 60, 20, None], 8, 10)
    assert not stop(steps, {"test_acc_avg": acc})
    # at step 80 the unfinished seed's lower bound gives (20 + 80)/2 = 50 ≥ 50 → decided
    steps, acc = _curves([40, 60, 20, None], 9, 10)
    assert stop(steps, {"test_acc_avg": acc})
    # nothing finished yet → never stops, however late
    steps, acc = _curves([None, 60, None, None], 50, 10)
    assert not stop(steps, {"test_acc_avg": acc})
    # every point finished → stops
    steps, acc = _curves([40, 60, 20, 30], 8, 10)
    assert stop(steps, {"test_acc_avg": acc})


def test_all_crossed_stop():
    from slamjax.problems.meta_anil import all_crossed_stop

    stop = all_crossed_stop(threshold=0.5)
    steps, acc = _curves([40, None], 10, 10)
    assert not stop(steps, {"test_acc_avg": acc})
    steps, acc = _curves([40, 85], 10, 10)
    assert stop(steps, {"test_acc_avg": acc})


def _rec(mean, std=1.0, chosen=0.1):
    return {"report": {"mean": mean, "std": std, "reached": 5, "seeds": 5}, "chosen": chosen}


@needs_script
def test_summary_efficiency_speedup_and_monotonicity(tmp_path):
    per_n = {"1": {"slam_u": _rec(30000), "oracle_sgd": _rec(24000), "oracle_adam": _rec(27000),
                   "alone": _rec(30000)},
             "2": {"slam_u": _rec(20000), "oracle_sgd": _rec(15000), "oracle_adam": _rec(18000),
                   "alone": _rec(33000)},
             "10": {"slam_u": _rec(10000), "oracle_sgd": _rec(7000), "oracle_adam": _rec(5000),
                    "alone": {"report": {"mean": None, "std": None, "reached": 3, "seeds": 5},
                              "chosen": 0.1}}}
    def summarize(per_n):
        path = tmp_path / "per_n.json"
        path.write_text(json.dumps({"per_n": per_n}))
        out = _script("--ns", "1,2,10", "--summarize", str(path))
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    s = summarize(per_n)
    assert s["n"] == [1, 2, 10]
    for key in ("slam_u_samples_mean", "slam_u_samples_std", "oracle_samples_mean",
                "alone_samples_mean", "paper"):
        assert len(s[key]) == 3, key
    assert s["paper"] == [None, 62976, 6656]
    assert s["oracle_samples_mean"] == [24000, 15000, 5000]          # the better oracle
    np.testing.assert_allclose(s["efficiency_vs_sgd_oracle"], [0.8, 0.75, 0.7])
    np.testing.assert_allclose(s["efficiency_vs_adam_oracle"], [0.9, 0.9, 0.5])
    np.testing.assert_allclose(s["speedup_slam_u"], [1.0, 1.5, 3.0])
    np.testing.assert_allclose(s["speedup_oracle_sgd"], [1.0, 1.6, 24000 / 7000])
    assert s["alone_samples_mean"][2] is None and s["speedup_alone"][2] is None
    assert s["monotone"] is True
    assert s["speedup_2_to_10"]["slam_u"] == pytest.approx(2.0)
    assert s["speedup_2_to_10"]["paper"] == pytest.approx(62976 / 6656)
    assert s["slope_slam_u"] == pytest.approx(np.polyfit(np.log([1, 2, 10]),
                                                         np.log([3e4, 2e4, 1e4]), 1)[0])
    per_n["10"]["slam_u"] = _rec(21000)
    assert summarize(per_n)["monotone"] is False


@needs_script
@pytest.mark.parametrize("bad", [["--select-seeds", "0,1,2", "--report-seeds", "2,3"],
                                 ["--methods", "slam_u,adam"], ["--grid", "0.1,-1"],
                                 ["--ns", "4,2"], "blocked-out"])
def test_bad_arguments_fail_before_any_work(tmp_path, bad):
    if bad == "blocked-out":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        bad = ["--ns", "2", "--out", str(blocker), "--no-progress"]
    out = _script(*bad)
    assert out.returncode == 2, out.stdout[-500:] + out.stderr[-1500:]
    assert "Traceback" not in out.stderr


@needs_script
@needs_mnist
def test_table2_end_to_end_at_toy_size(tmp_path):
    """The whole pipeline at n = 2 with two grid points, a low threshold and a short cap:
    every file is written, the lists align on n, samples are counted as drawn (one minibatch
    of 32 per agent and iteration for SLAM-U; 32 per agent for the oracle's batch of 32·n),
    the chosen step comes from the grid and the report seeds are not the selection seeds."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--ns", "2", "--methods",
         "slam_u,oracle_adam,alone", "--max-steps", "96", "--threshold", "0.7",
         "--test-size", "1000", "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for name in ("table2_quick.json", "table2_summary_quick.json", "table2_quick.md",
                 "table2_quick.png", "fig8a_quick.png"):
        assert (tmp_path / name).is_file(), name
    s = json.loads((tmp_path / "table2_summary_quick.json").read_text())
    assert s["n"] == [2]
    for key in ("slam_u_samples_mean", "slam_u_samples_std", "oracle_samples_mean",
                "alone_samples_mean", "paper"):
        assert len(s[key]) == 1, key
    assert s["paper"] == [62976]
    res = json.loads((tmp_path / "table2_quick.json").read_text())
    for n in ("2",):
        rec = res["per_n"][n]["slam_u"]
        assert rec["samples_per_iteration"] == pytest.approx(32.0)
        assert rec["chosen"] in res["config"]["grid"]
        assert rec["selection"]["seeds"] == [0]
        assert res["per_n"][n]["oracle_adam"]["samples_per_iteration"] == pytest.approx(32.0)
        assert rec["report"]["reached"] == 2, rec["report"]            # 70 % is easy
        assert rec["report"]["mean"] < 96 * 32
    alone = res["per_n"]["2"]["alone"]
    assert alone["chosen"] in res["config"]["grid"]
    assert alone["samples_per_iteration"] == pytest.approx(32.0)    # one agent, batch 32
    assert "| 2 | 62,976 |" in (tmp_path / "table2_quick.md").read_text()
