"""Foundations of the heterogeneous navigation comparisons (issue 13): sparse graphs and their
description, the new critic rules (MDAC with fresh minibatches, no communication, centralized
critic), communication counts, and the critic metrics against a reference centralized critic.

Tiny runs (n = 3 on a ring, 4 environments, 3 update rounds, compiled without LLVM
optimisation); every check compares against an independent computation or an exact property.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax.rl as rl
from slamjax.graphs import mixing_matrix, ring, spectral_gap
from slamjax.rl.train import FAST_COMPILE

N = 3
TINY = dict(n=N, num_envs=4, iters_per_round=2)  # E·T = 100 transitions, M = 50
ROUNDS = 3


@functools.lru_cache(maxsize=None)
def _run(algorithm: str, **kw):
    config = rl.ACConfig(algorithm, **TINY, **kw)
    graph = ring(N)
    hp = rl.make_hparams(graph, actor_lr=3e-3)
    fn = jax.jit(rl.make_train(config, ROUNDS))
    key = jax.random.key(7)
    compiled = fn.lower(graph, hp, key).compile(compiler_options=FAST_COMPILE)
    state, metrics = compiled(graph, hp, key)
    return config, jax.device_get(state), jax.device_get(metrics)


def test_track_central_adds_metrics_and_changes_nothing_else():
    """With the reference critic on, the algorithm's own numbers are bit-for-bit the same, and
    the new metrics agree with a direct computation from the final state."""
    _, s0, m0 = _run("slam_ac", nuisance_scale=0.5)
    cfg, s1, m1 = _run("slam_ac", nuisance_scale=0.5, track_central=True)
    # (the same computation; XLA may fuse the larger program differently: round-off only)
    for k in rl.METRICS:
        np.testing.assert_allclose(m0[k], m1[k], rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves((s0.actor, s0.critic)), jax.tree.leaves((s1.actor, s1.critic))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert s0.central is None and s1.central is not None
    assert m1["value_err_agent"].shape == (ROUNDS, N)
    for k in ("consensus_w", "value_err", "rhat_err", "consensus_w_ema"):
        assert m1[k].shape == (ROUNDS,) and np.all(np.isfinite(m1[k]))
    # the moving average starts at the critics after round 1, then moves 5 % per round
    assert m1["consensus_w_ema"][0] == pytest.approx(m1["consensus_w"][0], rel=1e-5)
    ema = jax.tree.map(lambda a: np.asarray(a, np.float64), s1.critic_ema)
    ring_dis = sum(np.sum((x - np.roll(x, 1, axis=0)) ** 2) for x in jax.tree.leaves(ema))
    np.testing.assert_allclose(m1["consensus_w_ema"][-1], ring_dis, rtol=1e-4)
    assert not np.allclose(jax.tree.leaves(s1.critic_ema)[0], jax.tree.leaves(s1.critic["w"])[0])
    # recompute the last round's metrics from the final state
    _, vnet, rnet = cfg.nets()
    eb = s1.eval_batch
    v = rl.apply_agents(vnet, s1.critic["w"], eb.obs)
    vc = rl.apply_agents(vnet, s1.central["w"], eb.obs)
    np.testing.assert_allclose(m1["value_err_agent"][-1], np.mean((v - vc) ** 2, axis=1),
                               rtol=1e-5)
    w = jax.tree.leaves(s1.critic["w"])
    want = sum(np.sum((np.asarray(x) - np.roll(np.asarray(x), 1, axis=0)) ** 2) for x in w)
    np.testing.assert_allclose(m1["consensus_w"][-1], want, rtol=1e-5)
    assert m1["value_err"][-1] > 0  # independent initialisations: agents differ from the reference
    # the evaluation batch is fixed: the same states for another algorithm / seed
    _, s2, _ = _run("central_ac", track_central=True, nuisance_scale=1.0)
    np.testing.assert_array_equal(s2.eval_batch.obs, eb.obs)


def test_central_control_is_one_critic_fitted_to_the_team_reward():
    cfg, s, m = _run("central_ac", track_central=True, nuisance_scale=1.0)
    for leaf in jax.tree.leaves(s.critic):  # every agent holds the same critic
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
    assert np.all(m["consensus"] == 0.0)
    assert cfg.comm_rounds is None


def test_central_critic_step_equals_a_step_on_the_team_reward():
    cfg = rl.ACConfig("central_ac", n=N)
    _, vnet, rnet = cfg.nets()
    hp = rl.make_hparams(ring(N))
    d = cfg.critic_dim
    grad_fn = lambda c, b: rl.critic_grads(vnet, rnet, c, b, hp.discount)  # noqa: E731

    @jax.jit
    def both(key):
        k = jax.random.split(key, 6)
        critic = {"w": rl.init_agents(vnet, k[0], 2, jnp.zeros(d)),
                  "phi": rl.init_agents(rnet, k[1], 2, jnp.zeros(d + 5 * N))}
        obs, nxt = jax.random.normal(k[2], (8, d)), jax.random.normal(k[3], (8, d))
        acts = jax.random.randint(k[4], (8, N), 0, 5)
        rew = jax.random.normal(k[5], (8, N))
        got, _, _ = rl.critic_update(rl.critic_rule("central", cfg), critic, (), grad_fn,
                                     rl.core.make_batch(obs, acts, rew, nxt), None, hp)
        # by hand: each copy steps on the team reward, then the copies are averaged
        team = rl.core.make_batch(obs, acts, jnp.repeat(rew.mean(1, keepdims=True), 2, 1), nxt)
        h, _ = grad_fn(critic, team)
        want = jax.tree.map(lambda v, g: jnp.broadcast_to(jnp.mean(v - hp.critic_lr * g, 0),
                                                          v.shape), critic, h)
        return got, want, critic

    got, want, critic = both(jax.random.key(0))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(a[0], a[1])  # one critic
    # from two different initial critics
    assert max(float(np.abs(c[0] - c[1]).max()) for c in jax.tree.leaves(critic)) > 1e-2


def _quadratic_grad_fn(c, mb):
    """Per-agent loss ½ mean_b (y_i − r_{b,i})² per coordinate: h = y_i − mean_b r_{·,i}."""
    h = c["w"] - jnp.mean(mb.rewards, axis=-2)[:, None]
    return {"w": h}, jnp.mean(h ** 2, axis=1)


def test_no_communication_control_never_mixes():
    """``local`` rule: y_i <- y_i − lr h_i(y_i), critic_steps times; nothing from neighbours."""
    n = 4
    cfg = rl.ACConfig("nocomm_ac", n=n, critic_steps=2)
    g = ring(n)
    hp = rl.make_hparams(g)
    rng = np.random.default_rng(1)
    y0 = rng.normal(size=(n, 3)).astype(np.float32)
    r = rng.normal(size=(6, n)).astype(np.float32)
    batch = rl.core.CriticBatch(r, r, r, r)
    got, dual, _ = rl.critic_update(rl.critic_rule("local", cfg), {"w": jnp.asarray(y0)},
                                    "dual", _quadratic_grad_fn, batch, g, hp)
    lr = float(hp.critic_lr)
    y = y0.astype(np.float64)
    for _ in range(2):
        y = y - lr * (y - r.mean(axis=0)[:, None])
    np.testing.assert_allclose(np.asarray(got["w"]), y, rtol=1e-5, atol=1e-6)
    assert dual == "dual"
    assert cfg.comm_rounds == 0
    assert rl.comm_info(cfg, g)["scalars_per_iteration"] == 0


def test_mdac_fresh_inner_loop_against_numpy():
    """T_c inner steps on their own minibatches: y <- W (y - lr h(y; mb_t)), then W^extra."""
    n, Tc, B = 4, 3, 2
    cfg = rl.ACConfig("mdac_fresh", n=n, num_envs=4, iters_per_round=2,
                      mdac_inner_steps=Tc, mdac_batch=B, mdac_extra_consensus=2)
    g = ring(n)
    W = mixing_matrix(g)
    hp = rl.make_hparams(g)
    rng = np.random.default_rng(0)
    y0 = rng.normal(size=(n, 5)).astype(np.float32)
    data = rng.normal(size=(Tc, B, n)).astype(np.float32)  # "rewards" of every minibatch

    grad_fn = _quadratic_grad_fn
    batch = rl.core.CriticBatch(data, data, data, data)
    got, _, _ = rl.critic_update(rl.critic_rule("mdac_fresh", cfg), {"w": jnp.asarray(y0)}, (),
                                 grad_fn, batch, g, hp)
    lr = float(hp.critic_lr) * B / cfg.minibatch_size
    y = y0.astype(np.float64)
    for t in range(Tc):
        y = W @ (y - lr * (y - data[t].mean(axis=0)[:, None]))
    y = W @ W @ y
    np.testing.assert_allclose(np.asarray(got["w"]), y, rtol=1e-5, atol=1e-6)
    assert cfg.comm_rounds == Tc + 2 and cfg.critic_samples == Tc * B


def test_mdac_fresh_trains_and_mdac_keeps_its_numbers():
    cfg, s, m = _run("mdac_fresh", mdac_inner_steps=4)  # K·T_c·B = 2·4·10 = 80 <= 100
    assert np.all(np.isfinite(m["return"])) and np.all(np.isfinite(m["td_sq"]))
    assert np.all(m["consensus"] < 1e-8)  # 3-ring: every mixing averages exactly
    # "dac_extra_mixing" is the figures' MDAC under a clear name: the same rule
    assert rl.ACConfig("dac_extra_mixing").critic_rule == rl.ACConfig("mdac").critic_rule
    assert rl.ACConfig("mdac_fresh").critic_rule == "mdac_fresh"
    with pytest.raises(ValueError, match="fresh"):
        rl.ACConfig("mdac_fresh", **TINY, mdac_inner_steps=6)  # 2·6·10 > 100


def test_comm_rounds_per_algorithm():
    want = {"slam_ac": 1, "dac": 1, "slam_ppo": 1, "dec_ppo": 1, "mdac": 5 + 5,
            "dac_extra_mixing": 10, "mdac_fresh": 5 + 5, "nocomm_ac": 0, "central_ac": None}
    for alg, r in want.items():
        assert rl.ACConfig(alg).comm_rounds == r, alg
    assert rl.ACConfig("slam_ac", critic_steps=3).comm_rounds == 3


def test_sparse_graphs_and_their_description():
    for n in (6, 8, 10):
        r = rl.make_rl_graph("ring", n)
        sp = rl.make_rl_graph("er_sparse", n)
        dense = rl.make_rl_graph("er", n)
        assert r.num_edges == n and sp.kind == dense.kind == "erdos_renyi"
        for g in (r, sp):
            info = rl.graph_info(g)
            assert info["spectral_gap"] == pytest.approx(spectral_gap(g))
            L = np.diag(np.asarray(g.degree, float))
            e = g.edges()
            L[e[:, 0], e[:, 1]] = L[e[:, 1], e[:, 0]] = -1.0
            assert info["lam_max"] == pytest.approx(np.linalg.eigvalsh(L).max(), rel=1e-6)
            assert 0.0 < info["spectral_gap"] < 1.0
    # a ring's gap: 1 - (1 + 2 cos(2π/n))/3
    assert rl.graph_info(ring(6))["spectral_gap"] == pytest.approx(1 - (1 + 2 * np.cos(np.pi / 3)) / 3)
    with pytest.raises(ValueError, match="graph kind"):
        rl.make_rl_graph("hypercube", 6)


def test_nuisance_scale_is_relative_to_the_team_reward_std():
    s = rl.team_reward_std(3)
    assert 0.2 < s < 0.6  # per-step std of the team reward under the random policy
    rl.rollout.team_reward_std.cache_clear()
    assert rl.team_reward_std(3) == s  # deterministic (recomputed)
    assert rl.nuisance_scale(3, 0.0) == 0.0
    assert rl.nuisance_scale(3, 2.0) == pytest.approx(2.0 * rl.team_reward_std(3))
    with pytest.raises(ValueError, match="relative"):
        rl.nuisance_scale(3, -1.0)
    cfg = rl.ACConfig("dac", n=3, nuisance_scale=0.4, reward_split="owner")
    env = cfg.env()
    assert env.nuisance_scale == 0.4 and env.reward_split == "owner"
    with pytest.raises(ValueError, match="reward_split"):
        rl.ACConfig("dac", reward_split="mine")


def _nav_settings(*argv) -> dict:
    """``experiments/navigation.py ... --print-config``, run as a script (tests never import
    experiment scripts): the resolved graph, actor and overrides per figure and n."""
    script = Path(__file__).resolve().parents[1] / "experiments" / "navigation.py"
    out = subprocess.run([sys.executable, str(script), *argv, "--print-config"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_experiment_defaults_leave_the_figures_unchanged():
    """experiments/navigation.py: the issue-13 options add nothing to the paper figures unless
    asked for; the mechanism mode defaults to a ring and plain SGD actors."""
    for figs in (["--figure", "all"], ["--figure", "ablation"]):  # all = figures 1, 7, 5, 6
        nav = _nav_settings(*figs)
        assert (nav["graph"], nav["actor"]) == ("er", "adam")
        assert nav["hparam_kwargs"] == {}
        for per_n in nav["figures"].values():
            assert all(v["config_kwargs"] == {} for v in per_n.values())
    nav = _nav_settings("--figure", "mechanism")
    assert (nav["graph"], nav["actor"]) == ("ring", "sgd")
    assert nav["figures"]["mechanism"]["6"]["config_kwargs"] == {"actor_optimizer": "sgd"}
    assert nav["hparam_kwargs"] == {"actor_lr": 5e-3}  # SGD_ACTOR_STEP: 1e-4 per sample × M
    nav = _nav_settings("--figure", "5", "--graph", "er_sparse", "--nuisance", "0.5",
                        "--reward-split", "owner", "--track-central")
    kw = nav["figures"]["5"]["6"]["config_kwargs"]
    assert kw["nuisance_scale"] == pytest.approx(0.5 * rl.team_reward_std(6))
    assert kw["reward_split"] == "owner" and kw["track_central"]
    assert nav["figures"]["5"]["6"]["graph_kind"] == "erdos_renyi"
