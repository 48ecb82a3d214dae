"""Issue 13: the critics' consensus mechanism on a fixed dataset, the statistics of the
navigation comparisons, and the < 2 min smoke run of ``experiments/navigation_hetero.py``
(run as a script: tests never import experiment scripts)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax.rl as rl
from slamjax.consensus import PrimalDualState
from slamjax.rl import stats
from slamjax.rl.evaluation import critic_fixed_points, random_policy_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "navigation_hetero.py"
#: the script's parts and mechanism nuisance levels (``PARTS``, ``MECH_C``)
PARTS = ("mechanism", "returns", "ppo")
MECH_C = (0.0, 0.5, 1.0)


def _script(argv):
    """Run ``experiments/navigation_hetero.py argv``: (exit code, stdout, stderr)."""
    out = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                         timeout=1800)
    return out.returncode, out.stdout, out.stderr


# ---------------------------------------------------------------- statistics
def test_ci95_matches_hand_computation():
    c = stats.ci95([1.0, 2.0, 3.0])
    # mean 2, sd 1, t_{0.975, 2} = 4.302653
    assert c["mean"] == pytest.approx(2.0)
    assert c["std"] == pytest.approx(1.0)
    assert c["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert stats.ci95([1.0, np.nan, 3.0])["seeds"] == 2  # NaN (diverged seeds) dropped


def test_paired_ci_verdicts():
    base = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    up = stats.paired_ci(base + 1.0 + 0.01 * np.arange(5), base)
    assert up["verdict"] == "a > b" and up["wins"] == 5 and up["lo"] > 0
    down = stats.paired_ci(base - 1.0 - 0.01 * np.arange(5), base)
    assert down["verdict"] == "a < b" and down["hi"] < 0
    tie = stats.paired_ci(base + np.array([1.0, -1.0, 1.0, -1.0, 0.0]), base)
    assert tie["verdict"] == "tie" and tie["lo"] < 0 < tie["hi"]
    assert stats.ordering({"A": 1.0, "B": 3.0, "C": 2.0}) == "B > C > A"


# ---------------------------------------------------------------- mechanism
def _final_consensus(n, kind, cs, rule, rho=1.0, iters=150, mixing_rounds=1):
    """Disagreements ‖Aw‖², ‖Aφ‖² logged at iters/3, 2·iters/3, iters: arrays (len(cs), 3);
    the datasets of the nuisance levels ``cs`` vmapped in one program."""
    g = rl.make_rl_graph(kind, n)
    cfgs = [rl.ACConfig("slam_ac", n=n, nuisance_scale=rl.nuisance_scale(n, c)) for c in cs]
    data = jax.tree.map(lambda *x: jnp.stack(x), *[
        random_policy_dataset(c, jax.random.key(1), 4) for c in cfgs])
    hp = rl.make_hparams(g, rho=rho)
    fn = jax.jit(jax.vmap(lambda b: critic_fixed_points(
        cfgs[0], g, hp, b, jax.random.key(0), iters, rule=rule, mixing_rounds=mixing_rounds,
        log_every=iters // 3)[1]))
    log = fn(data)
    return np.asarray(log.consensus_w), np.asarray(log.consensus_phi)


def test_dgd_disagreement_is_a_bias_that_grows_with_c_and_slam_has_none():
    """The issue's first 'must show' on a fixed dataset: at c > 0 on a sparse graph DGD (DAC's
    critic rule) plateaus at a disagreement that grows with c; SLAM's is orders lower."""
    dgd = _final_consensus(6, "ring", (0.5, 1.0), "dgd")[0]
    slam = _final_consensus(6, "ring", (1.0,), "slam")[0]
    assert dgd[1, -1] > 2.5 * dgd[0, -1] > 0  # ∝ c² (≈ 4× measured)
    assert abs(dgd[1, -1] / dgd[1, -2] - 1) < 0.2  # a plateau, not a transient
    assert slam[0, -1] < 1e-2 * dgd[1, -1]


def test_dgd_exact_on_complete_graph_and_more_mixing_shrinks_bias():
    # Metropolis weights of the complete graph are exact averaging: no disagreement at all
    w_complete, phi_complete = _final_consensus(5, "complete", (1.0,), "dgd", iters=30)
    assert w_complete[0, -1] < 1e-10 and phi_complete[0, -1] < 1e-10
    one = _final_consensus(6, "ring", (1.0,), "dgd", iters=60)[0][0, -1]
    ten = _final_consensus(6, "ring", (1.0,), "dgd", iters=60, mixing_rounds=10)[0][0, -1]
    assert ten < 1e-2 * one


def test_fixed_point_bad_arguments():
    g = rl.make_rl_graph("ring", 4)
    cfg = rl.ACConfig("slam_ac", n=4)
    data = random_policy_dataset(cfg, jax.random.key(1), 2)
    hp = rl.make_hparams(g)
    with pytest.raises(ValueError, match="unknown rule"):
        critic_fixed_points(cfg, g, hp, data, jax.random.key(0), 10, rule="gossip")
    with pytest.raises(ValueError, match="multiple of"):
        critic_fixed_points(cfg, g, hp, data, jax.random.key(0), 15, log_every=10)
    with pytest.raises(ValueError, match="mixing_rounds"):
        critic_fixed_points(cfg, g, hp, data, jax.random.key(0), 10, rule="dgd",
                            mixing_rounds=0, log_every=10)
    cfg5 = rl.ACConfig("slam_ac", n=5)
    with pytest.raises(ValueError, match="agents"):
        critic_fixed_points(cfg5, rl.make_rl_graph("ring", 5), hp, data, jax.random.key(0), 10,
                            log_every=10)


def test_slam_duals_sum_to_zero_on_fixed_dataset():
    """u = Aᵀλ: Σ_i u_i = 0 throughout (the property that makes the consensus point the
    centralized critic); checked on the final duals of a short full-batch run."""
    g = rl.make_rl_graph("ring", 5)
    cfg = rl.ACConfig("slam_ac", n=5, nuisance_scale=rl.nuisance_scale(5, 1.0))
    data = random_policy_dataset(cfg, jax.random.key(2), 2)
    hp = rl.make_hparams(g, rho=1.0)
    _, vnet, rnet = cfg.nets()
    crit = rl.init_state(cfg, hp, jax.random.key(0)).critic
    dual = PrimalDualState(jax.tree.map(jnp.zeros_like, crit))
    rule = rl.critic_rule("slam", cfg)

    def body(c, _):
        cr, du = c
        cr, du, _ = rl.critic_update(rule, cr, du, lambda a, b: rl.critic_grads(
            vnet, rnet, a, b, hp.discount), data, g, hp)
        return (cr, du), None

    (_, dual), _ = jax.lax.scan(body, (crit, dual), None, length=20)
    for leaf in jax.tree.leaves(dual.dual):
        assert float(jnp.max(jnp.abs(leaf.sum(axis=0)))) < 1e-4 * (
            1.0 + float(jnp.max(jnp.abs(leaf))))
        assert float(jnp.max(jnp.abs(leaf))) > 1e-6  # the duals did move


# ---------------------------------------------------------------- smoke run
def test_smoke_run_end_to_end(tmp_path):
    """The CI version of the whole reproduction: every part, tiny."""
    out = tmp_path / "res"
    code, _, err = _script(["--quick", "--no-progress", "--out", str(out)])
    assert code == 0, err
    d = json.loads((out / "nav_hetero.json").read_text())
    assert set(PARTS) <= set(d)
    blk = d["returns"]["ring@n=4"]
    labels = set(blk["runs"])
    assert {"SLAM-AC ρ=0.1", "SLAM-AC ρ=1", "DAC", "MDAC (fresh minibatches)",
            "no communication", "centralized critic"} == labels
    for r in blk["runs"].values():
        assert len(r["final_per_seed"]) == 2 and np.all(np.isfinite(r["final_per_seed"]))
        assert "value_err_final_per_seed" in r
    assert blk["graph"]["spectral_gap"] == pytest.approx(2 / 3, rel=1e-5)
    assert blk["runs"]["centralized critic"]["consensus_w_final_per_seed"] == [0.0, 0.0]
    comps = blk["comparisons"]
    assert {c["verdict"] for c in comps} <= {"a > b", "a < b", "tie"}
    mech = d["mechanism"]["ring@n=4"]["lanes"]
    assert len(mech) == 5 * len(MECH_C)
    for f in ("nav_hetero.md", "nav_hetero_mechanism.png", "nav_hetero_fig1.png",
              "nav_hetero_fig5.png", "nav_hetero_fig7.png"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "nav_hetero.md").read_text()
    assert "ordering (final)" in md and "95 %" in md
    # --replot redraws from the JSON
    (out / "nav_hetero_fig5.png").unlink()
    assert _script(["--quick", "--replot", "--out", str(out)])[0] == 0
    assert (out / "nav_hetero_fig5.png").exists()


@pytest.mark.parametrize("argv, msg", [
    (["--seeds", "1"], "--seeds"), (["--ns", "2"], "--ns"), (["--graphs", "torus"], "--graphs"),
    (["--rounds", "0"], "--rounds"), (["--nuisance", "-1"], "--nuisance"),
    (["--ns", "a,b"], "--ns")])
def test_bad_arguments(argv, msg):
    code, _, err = _script(argv)
    assert code == 2
    assert msg in err


def test_out_is_a_file_and_replot_without_json(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = _script(["--quick", "--out", str(f)])
    assert code == 2
    assert "existing file" in err
    code, _, err = _script(["--quick", "--replot", "--out", str(tmp_path / "none")])
    assert code == 2
    assert "run without --replot" in err
