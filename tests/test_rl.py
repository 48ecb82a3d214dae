"""Tests of the multi-agent actor-critic algorithms (slamjax.rl, slamjax.baselines).

* every algorithm (SLAM-AC, DAC, MDAC, SLAM-PPO, Dec-PPO) improves the return on a tiny
  configuration (n = 2 agents, 8 environments, 400 update rounds, 2 seeds) well beyond the
  random policy, whose return is measured here on 512 episodes;
* SLAM-AC's and SLAM-PPO's critics reach consensus from independent initialisations (the
  consensus error shrinks by > 1000×), and the duals stay in the range of Aᵀ (they sum to
  zero over the agents); DAC/MDAC/Dec-PPO critics are averaged exactly on the single edge;
* training is deterministic (same seeds, same numbers);
* eq. (212) for one sample equals a hand computation of ∇ log softmax through the MLP;
* bad input gives ValueError with a clear message.

To keep the file fast the training runs use a larger actor step (Adam 3e-3) than the paper's
1e-4 and are compiled without LLVM optimisation (``FAST_COMPILE``). Fixed seeds throughout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax.rl as rl
from slamjax.graphs import mixing_matrix, ring, spectral_gap
from slamjax.rl.train import FAST_COMPILE

N = 2
ROUNDS = 400
SEEDS = (0, 1)
TINY = dict(n=N, num_envs=8, iters_per_round=4)  # minibatch M = 8*25/4 = 50


@functools.lru_cache(maxsize=None)
def _graph():
    return rl.navigation_graph(N)


@functools.lru_cache(maxsize=None)
def _random_return() -> float:
    return rl.random_policy_return(N, jax.random.key(2024), num_envs=512)


@functools.lru_cache(maxsize=None)
def _train(algorithm: str):
    """(final states, metrics) of a tiny run for each seed (vmapped), cached per algorithm."""
    config = rl.ACConfig(algorithm, **TINY)
    graph = _graph()
    hp = rl.make_hparams(graph, actor_lr=3e-3)
    keys = jnp.stack([jax.random.key(s) for s in SEEDS])
    fn = jax.jit(jax.vmap(rl.make_train(config, ROUNDS), in_axes=(None, None, 0)))
    compiled = fn.lower(graph, hp, keys).compile(compiler_options=FAST_COMPILE)
    state, metrics = compiled(graph, hp, keys)
    return config, hp, keys, compiled, state, jax.device_get(metrics)


def _check_slam_consensus(state, m):
    """Critics start apart (independent initialisations) and reach consensus; the duals
    u = Aᵀω stay in the range of Aᵀ, so they sum to zero over the agents."""
    err = np.asarray(m["consensus"])  # after every round
    err0 = err[:, 0]  # after the first round (4 iterations): still of the initial size
    assert np.all(err0 > 1.0)
    assert np.all(err[:, -1] < 1e-3 * err0), (err0, err[:, -1])
    assert np.all(err[:, 50:].max(axis=1) < 1e-2 * err0)  # and it stays there
    for leaf in jax.tree.leaves(state.critic_consensus.dual):
        s = np.asarray(leaf).sum(axis=1)  # axis 0: seeds, axis 1: agents
        assert np.max(np.abs(s)) < 1e-4 * (1.0 + np.max(np.abs(np.asarray(leaf))))


# One test per algorithm (each trains once; xdist spreads them over the workers).
@pytest.mark.parametrize("algorithm", ["slam_ac", "dac", "mdac", "slam_ppo", "dec_ppo"])
def test_training_run(algorithm):
    config, hp, keys, compiled, state, m = _train(algorithm)
    ret = np.asarray(m["return"])  # (seeds, rounds)
    assert np.all(np.isfinite(ret))

    # 1. improves well beyond the random policy (measured here on 512 episodes).
    # n = 2: the random policy scores -20.7, the untrained networks about -22.2; after 400
    # rounds every algorithm and seed is at -15.5 to -16.4 (measured). Require >= 3 above random
    # for every seed and >= 5 above the start on average.
    rand = _random_return()
    first = ret[:, :20].mean()
    final = ret[:, -50:].mean(axis=1)  # per seed
    assert np.all(final > rand + 3.0), (algorithm, final, rand)
    assert final.mean() > first + 5.0, (algorithm, final, first)

    # 2. the critics' consensus
    if config.critic_rule == "slam":
        _check_slam_consensus(state, m)
    else:  # one Metropolis step on a single edge averages exactly
        assert np.all(np.asarray(m["consensus"]) < 1e-8)

    # 3. same seeds -> the same numbers
    if algorithm == "slam_ac":
        state2, m2 = compiled(_graph(), hp, keys)
        np.testing.assert_array_equal(np.asarray(m2["return"]), ret)
        for a, b in zip(jax.tree.leaves(state.actor), jax.tree.leaves(state2.actor)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------
# eq. (212) against a hand computation
# ---------------------------------------------------------------------------------------
def _hand_212(p, s, a, rhat, v, v_next, disc):
    """(1−γ)^{-1} (r̂ + γV' − V) ∇_θ log softmax(W2 relu(W1 s + b1) + b2)[a], by hand."""
    W1, b1 = p["params"]["hidden"]["kernel"], p["params"]["hidden"]["bias"]
    W2, b2 = p["params"]["logits"]["kernel"], p["params"]["logits"]["bias"]
    pre = s @ W1 + b1
    h = np.maximum(pre, 0.0)
    z = h @ W2 + b2
    prob = np.exp(z - z.max())
    prob /= prob.sum()
    e = np.zeros_like(z)
    e[a] = 1.0
    dz = e - prob  # ∂ log π(a) / ∂ z
    dh = (W2 @ dz) * (pre > 0)
    scale = (rhat + disc * v_next - v) / (1.0 - disc)
    return {"hidden": {"kernel": scale * np.outer(s, dh), "bias": scale * dh},
            "logits": {"kernel": scale * np.outer(h, dz), "bias": scale * dz}}


def test_actor_gradient_212_matches_hand_computation():
    n, disc = 2, 0.95
    params = _params(n, 3)
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, size=(1, 4 * n)).astype(np.float32)
    a = np.array([[3, 1]], np.int32)
    rhat = np.array([[-0.7, -0.4]], np.float32)
    v = np.array([[-5.0, -4.5]], np.float32)
    v_next = np.array([[-4.2, -4.9]], np.float32)
    g = rl.actor_gradient_212(params, s, a, rhat, v, v_next, disc)
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    for i in range(n):
        p_i = jax.tree.map(lambda x: x[i], p64)
        want = _hand_212(p_i, s[0].astype(np.float64), a[0, i], rhat[0, i], v[0, i],
                         v_next[0, i], disc)
        for layer in ("hidden", "logits"):
            for name in ("kernel", "bias"):
                got = np.asarray(g["params"][layer][name][i])
                np.testing.assert_allclose(got, want[layer][name], rtol=2e-5, atol=2e-6)
    # and it is not trivially zero
    assert np.abs(np.asarray(g["params"]["logits"]["bias"])).max() > 1e-3


def test_actor_gradient_212_batch_is_mean_of_samples():
    n, disc = 3, 0.9
    params = _params(n, 1)
    rng = np.random.default_rng(1)
    B = 4
    s = rng.normal(size=(B, 4 * n)).astype(np.float32)
    a = rng.integers(0, 5, size=(B, n)).astype(np.int32)
    r, v, vn = (rng.normal(size=(B, n)).astype(np.float32) for _ in range(3))
    g = rl.actor_gradient_212(params, s, a, r, v, vn, disc)
    per = [rl.actor_gradient_212(params, s[b:b + 1], a[b:b + 1], r[b:b + 1], v[b:b + 1],
                                 vn[b:b + 1], disc) for b in range(B)]
    mean = jax.tree.map(lambda *x: sum(x) / B, *per)
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(mean)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# small pieces
# ---------------------------------------------------------------------------------------
def test_metropolis_mixing_is_doubly_stochastic_and_contracts():
    g = ring(6)
    W = mixing_matrix(g)
    np.testing.assert_allclose(W.sum(axis=0), 1.0)
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    np.testing.assert_allclose(W, W.T)
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(g.mix(jnp.asarray(x), 2)), W @ W @ x, rtol=1e-5,
                               atol=1e-6)
    assert 0.0 < spectral_gap(g) < 1.0


def test_gae_matches_numpy():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(2, 6, 3)).astype(np.float32)  # (n, T, E)
    disc, lam = 0.9, 0.8
    want = np.zeros_like(d)
    acc = np.zeros((2, 3), np.float32)
    for t in reversed(range(6)):
        acc = d[:, t] + disc * lam * acc
        want[:, t] = acc
    np.testing.assert_allclose(np.asarray(rl.gae(jnp.asarray(d), disc, lam)), want, rtol=1e-5)


def test_auto_gamma_is_critical_damping_and_stable():
    from slamjax.slam import stability_bound

    lam, lr, rho = 3.0, 0.05, 0.1
    g = rl.auto_gamma(lam, lr, rho)
    s = rho * lam * lr
    assert abs(s * (1 + g) ** 2 - 4.0) < 1e-6  # repeated root of z² − (2 − s(1+γ))z + 1 − sγ
    assert rho < stability_bound(lam, 1.0 / lr, g)
    assert rl.auto_gamma(0.0, lr, rho) == 1.0  # a single agent: no consensus


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_number_of_agents(n):
    with pytest.raises(ValueError, match="n"):
        rl.ACConfig("slam_ac", n=n)
    with pytest.raises(ValueError, match="n"):
        rl.navigation_graph(n)


@pytest.mark.parametrize("name", ["slam", "ppo", "maddpg", "", "SLAM_AC2"])
def test_unknown_algorithm(name):
    with pytest.raises(ValueError, match="unknown algorithm"):
        rl.ACConfig(name)
    with pytest.raises(ValueError, match="unknown algorithm"):
        rl.run(name, num_updates=1)


def test_algorithm_names_are_normalised():
    assert rl.ACConfig("SLAM-AC").algorithm == "slam_ac"
    assert rl.ACConfig("Dec-PPO").algorithm == "dec_ppo"
    assert rl.canonical_algorithm(" MDAC ") == "mdac"


@functools.lru_cache(maxsize=None)
def _params(n, seed=0):
    """Stacked actor parameters with the structure of ``rl.init_agents(rl.Actor(), ...)``,
    drawn with NumPy (no flax initialiser to compile)."""
    rng = np.random.default_rng(seed)
    d, h, a = 4 * n, rl.nets.HIDDEN, 5
    f = lambda *shape: jnp.asarray(rng.normal(scale=0.5, size=(n,) + shape), jnp.float32)  # noqa: E731
    return {"params": {"hidden": {"kernel": f(d, h), "bias": f(h)},
                       "logits": {"kernel": f(h, a), "bias": f(a)}}}


def test_numpy_params_match_the_flax_structure():
    ref = jax.eval_shape(lambda k: rl.init_agents(rl.Actor(), k, 2, jnp.zeros(8)),
                         jax.random.key(0))
    assert jax.tree.structure(ref) == jax.tree.structure(_params(2))
    assert [x.shape for x in jax.tree.leaves(ref)] == [x.shape for x in
                                                      jax.tree.leaves(_params(2))]


@pytest.mark.parametrize("actions", [
    np.zeros((1, 3), np.int32),      # n + 1 agents
    np.zeros((1,), np.int32),        # missing agent axis
    np.zeros((2, 2), np.int32),      # batch mismatch with obs (1 sample)
])
def test_mismatched_action_shapes(actions):
    n = 2
    z = np.zeros((1, n), np.float32)
    with pytest.raises(ValueError, match="actions must have shape"):
        rl.actor_gradient_212(_params(n), np.zeros((1, 4 * n), np.float32), actions, z, z, z,
                              0.9)


@pytest.mark.parametrize("bad", [5, -1, 7])
def test_invalid_action_indices(bad):
    n = 2
    z = np.zeros((1, n), np.float32)
    with pytest.raises(ValueError, match="invalid action index"):
        rl.actor_gradient_212(_params(n), np.zeros((1, 4 * n), np.float32),
                              np.array([[0, bad]], np.int32), z, z, z, 0.9)
    with pytest.raises(ValueError, match="invalid action index"):
        rl.check_actions(np.array([[bad, 0]]), n)


def test_float_actions_and_bad_value_shapes():
    n = 2
    z = np.zeros((1, n), np.float32)
    s = np.zeros((1, 4 * n), np.float32)
    with pytest.raises(ValueError, match="integer"):
        rl.actor_gradient_212(_params(n), s, np.zeros((1, n), np.float32), z, z, z, 0.9)
    with pytest.raises(ValueError, match="value_next must have shape"):
        rl.actor_gradient_212(_params(n), s, np.zeros((1, n), np.int32), z, z,
                              np.zeros((1, n + 1)), 0.9)
    with pytest.raises(ValueError, match="discount"):
        rl.actor_gradient_212(_params(n), s, np.zeros((1, n), np.int32), z, z, z, 1.0)


def test_bad_hyperparameters_and_graph():
    g = rl.navigation_graph(3)
    with pytest.raises(ValueError, match="actor_lr"):
        rl.make_hparams(g, actor_lr=-1e-4)
    with pytest.raises(ValueError, match="critic_lr"):
        rl.make_hparams(g, critic_lr=float("nan"))
    with pytest.raises(ValueError, match="discount"):
        rl.make_hparams(g, discount=1.0)
    with pytest.raises(ValueError, match="gamma"):
        rl.make_hparams(g, gamma="fast")
    with pytest.raises(ValueError, match="graph has n=3"):
        rl.run("slam_ac", g, n=4, num_updates=1)
    with pytest.raises(ValueError, match="actor_optimizer"):
        rl.ACConfig("dac", actor_optimizer="rmsprop")
    with pytest.raises(ValueError, match="num_updates"):
        rl.make_train(rl.ACConfig("dac"), 0)
