"""Issue 14 part 2: SLAM-AC / CAC / MDAC with partial parameter sharing on pursuit-evasion.

The actor's consensus rules against dense linear algebra, the per-leaf masks, the inputs, and
tiny training runs: masked actor leaves reach consensus and unmasked ones do not, and a short
run beats the random policy's capture rate."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slamjax.consensus import PrimalDualState
from slamjax.envs import PursuitEnv
from slamjax.graphs import laplacian_dense, mixing_matrix, ring
from slamjax.rl import pursuit_ac as P
from slamjax.slam import StabilityWarning

#: a tiny but complete setting: 4 pursuers on a ring, 25-step episodes, 4 environments
TINY = dict(n_pursuers=4, n_evaders=4, max_cycles=25, num_envs=4, iters_per_round=2)


def _tree(rng, n=4):
    """A small two-layer parameter tree with the actor's layer names."""
    return {"params": {"conv1": {"kernel": rng.normal(size=(n, 3, 2)), "bias": rng.normal(size=(n, 2))},
                       "out": {"kernel": rng.normal(size=(n, 5)), "bias": rng.normal(size=(n,))}}}


def _hp(**kw):
    base = dict(actor_lr=0.1, critic_lr=0.05, rho=5.0, gamma=0.75, gamma_actor=0.4, discount=0.95)
    base.update(kw)
    return P.PursuitHyperParams(*(jnp.float32(base[k]) for k in P.PursuitHyperParams._fields))


@pytest.mark.parametrize("rule", ["slam", "dgd", "central", "local"])
def test_actor_update_rules_match_dense_linear_algebra(rule):
    rng = np.random.default_rng(0)
    g = ring(4)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _tree(rng))
    grads = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    dual = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    cfg = P.PursuitACConfig("slam_ac", shared_actor_layers=("conv1",), **TINY)
    mask = P.actor_mask(cfg, params)
    hp = _hp()
    # SLAM's transform holds the duals in its state; the other rules are stateless (their
    # state, here the duals, comes back untouched)
    state = PrimalDualState(dual) if rule == "slam" else dual
    new, new_state = P.actor_update(P.actor_consensus(rule, mask), params, grads, state, g, hp)
    new_dual = new_state.dual if rule == "slam" else new_state
    L, W = laplacian_dense(g), mixing_matrix(g)
    lr, rho, gam = 0.1, 5.0, 0.4
    for (path, v), gr, u, on, nv, nu in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(grads),
            jax.tree.leaves(dual), mask, jax.tree.leaves(new), jax.tree.leaves(new_dual)):
        v, gr, u = (np.asarray(a, float).reshape(4, -1) for a in (v, gr, u))
        assert on == ("conv1" in str(path))
        step = v + lr * gr  # ascent on J = descent on h = −∇J
        if on and rule == "slam":  # (5b) and (4d) with the Laplacian
            want = v - lr * (-gr + gam * u + rho * gam * L @ v)
            want_u = u + (rho / gam) * L @ want
        elif on and rule == "dgd":
            want, want_u = W @ step, u
        elif on and rule == "central":
            want, want_u = np.broadcast_to(step.mean(0), step.shape), u
        else:
            want, want_u = step, u
        np.testing.assert_allclose(np.asarray(nv).reshape(4, -1), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(nu).reshape(4, -1), want_u, rtol=1e-5, atol=1e-5)


def test_actor_mask_selects_exactly_the_named_layers():
    cfg = P.PursuitACConfig("cac", shared_actor_layers=("conv1", "out"), **TINY)
    params = jax.eval_shape(lambda k: P.init_state(cfg, k), jax.random.key(0)).actor
    paths = [str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    mask = P.actor_mask(cfg, params)
    assert len(mask) == len(paths) == 6  # conv1, conv2, out: kernel and bias each
    assert [("conv1" in p or "'out'" in p) for p in paths] == list(mask)
    none = P.actor_mask(dataclasses.replace(cfg, shared_actor_layers=()), params)
    assert not any(none)
    with pytest.raises(ValueError, match="unknown actor layer"):
        P.PursuitACConfig("cac", shared_actor_layers=("dense",))


def test_actor_inputs_and_afterstate():
    env = PursuitEnv(n_pursuers=4, n_evaders=4, max_cycles=25)
    state = env.reset(jax.random.key(3))
    local = P.actor_inputs(P.PursuitACConfig(actor_input="local", **TINY), state)
    np.testing.assert_array_equal(local, env.observations(state))
    gs = env.global_state(state)
    glob = P.actor_inputs(P.PursuitACConfig(actor_input="global", **TINY), state)
    assert glob.shape == (4, 3, 15, 15) and np.all(np.asarray(glob) == np.asarray(gs))
    own = np.asarray(P.actor_inputs(P.PursuitACConfig(actor_input="global_self", **TINY), state))
    assert own.shape == (4, 4, 15, 15)
    np.testing.assert_array_equal(own[:, :3], glob)
    for i, (x, y) in enumerate(np.asarray(state.pursuer_pos)):
        assert own[i, 3, x, y] == 1 and own[i, 3].sum() == 1
    nxt, _, _ = env.step(jax.random.key(4), state, jnp.array([0, 1, 2, 3]))
    a = np.asarray(P.afterstate(gs, env.global_state(nxt)))
    np.testing.assert_array_equal(a[0], gs[0])
    np.testing.assert_array_equal(a[1], env.global_state(nxt)[0])  # pursuers after the move
    np.testing.assert_array_equal(a[2:], gs[1:])  # evaders before they move, obstacles
    with pytest.raises(ValueError, match="actor_input"):
        P.PursuitACConfig(actor_input="pixels")


def test_config_and_hparams_validation():
    with pytest.raises(ValueError, match="unknown pursuit algorithm"):
        P.PursuitACConfig("dac")
    with pytest.raises(ValueError, match="mdac needs"):
        P.PursuitACConfig("mdac", n_pursuers=4, n_evaders=4, max_cycles=10, num_envs=2,
                          iters_per_round=2)
    g = ring(4)
    cfg = P.PursuitACConfig(**TINY)
    hp = P.make_pursuit_hparams(g, cfg)
    M = cfg.minibatch_size
    assert M == 50 and float(hp.actor_lr) == pytest.approx(1e-4 * M)
    assert float(hp.critic_lr) == pytest.approx(1e-3 * M) and float(hp.rho) == 5.0
    with pytest.warns(StabilityWarning, match="gamma_actor"):  # no γ_x keeps ρ = 5 stable
        P.make_pursuit_hparams(g, cfg, actor_step=0.05)
    with pytest.raises(ValueError, match="discount"):
        P.make_pursuit_hparams(g, cfg, discount=1.0)
    with pytest.raises(ValueError, match="n=5 agents"):
        P.run(cfg, ring(5), num_rounds=1, seeds=1, progress=False)


@pytest.fixture(scope="module")
def tiny_runs():
    """Three tiny runs (2 seeds, 6 rounds): SLAM-AC and CAC sharing conv1, SLAM-AC sharing
    nothing (Fig 4), and the no-communication control."""
    out = {}
    g = ring(4)
    for name, alg, shared in (("slam", "slam_ac", ("conv1",)), ("cac", "cac", ("conv1",)),
                              ("slam_fig4", "slam_ac", ()), ("nocomm", "nocomm", ())):
        cfg = P.PursuitACConfig(alg, shared_actor_layers=shared, **TINY)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StabilityWarning)
            hp = P.make_pursuit_hparams(g, cfg, actor_step=1e-3)
        out[name] = P.run(cfg, g, hparams=hp, seeds=2, num_rounds=6, chunk=6, progress=False,
                          fast_compile=True)
    return out


def test_masked_actor_leaves_reach_consensus_and_unmasked_do_not(tiny_runs):
    for name in ("slam", "cac"):
        r = tiny_runs[name]
        init = r.meta["initial_disagreement"]
        shared = np.asarray(r.metrics["consensus_actor_shared"])[0, :, -1]
        private = np.asarray(r.metrics["consensus_actor_private"])[0, :, -1]
        assert init["actor_shared"] > 1.0  # independent initial networks
        assert np.all(shared < 1e-2 * init["actor_shared"]), (name, shared)
        assert np.all(private > 0.5 * init["actor_private"]), (name, private)
        critic = np.asarray(r.metrics["consensus_critic"])[0, :, -1]
        assert np.all(critic < 1e-2 * init["critic"]), (name, critic)
    fig4 = tiny_runs["slam_fig4"]
    init4 = fig4.meta["initial_disagreement"]
    assert np.all(np.asarray(fig4.metrics["consensus_actor_shared"]) == 0)  # nothing shared
    assert np.all(np.asarray(fig4.metrics["consensus_actor_private"])[0, :, -1]
                  > 0.5 * init4["actor_private"])
    nocomm = np.asarray(tiny_runs["nocomm"].metrics["consensus_critic"])[0, :, -1]
    init_nc = tiny_runs["nocomm"].meta["initial_disagreement"]
    assert np.all(nocomm > 0.1 * init_nc["critic"])  # never talks


def test_same_seed_same_numbers_and_paired_streams(tiny_runs):
    g = ring(4)
    cfg = tiny_runs["slam"].meta["config"]
    again = P.run(cfg, g, hparams=tiny_runs["slam"].meta["hparams"], seeds=2, num_rounds=6,
                  chunk=3, progress=False, fast_compile=True)
    for k in P.METRICS:
        np.testing.assert_allclose(again.metrics[k], tiny_runs["slam"].metrics[k], rtol=1e-5,
                                   atol=1e-6)
    # round 1 collects with the initial actors: identical across algorithms (paired seeds)
    np.testing.assert_array_equal(np.asarray(tiny_runs["slam"].metrics["return"])[..., 0],
                                  np.asarray(tiny_runs["nocomm"].metrics["return"])[..., 0])


def test_tiny_training_run_beats_the_random_policys_capture_rate():
    """SLAM-AC (consensus on actor conv1 and the critic) on a small, easy variant — 4 pursuers,
    10 evaders, one pursuer per capture, 25-step episodes — for 100 rounds (20,000 env steps
    per seed) catches clearly more evaders than the uniformly random team (0.27 of them)."""
    cfg = P.PursuitACConfig("slam_ac", n_pursuers=4, n_evaders=10, n_catch=1, max_cycles=25,
                            num_envs=8, iters_per_round=4)
    g = ring(4)
    rand = P.random_capture_rate(cfg, episodes=512)
    res = P.run(cfg, g, hparams=P.make_pursuit_hparams(g, cfg, actor_step=3e-4), seeds=2,
                num_rounds=100, chunk=100, progress=False)
    cap = np.asarray(res.metrics["capture_rate"])[0]  # (seeds, rounds), 8 episodes per round
    first, last = cap[:, :10].mean(), cap[:, -20:].mean(-1)
    assert abs(first - rand["capture_rate"]) < 0.06  # starts as a near-random team
    assert np.all(last > rand["capture_rate"] + 0.05), (last, rand)
