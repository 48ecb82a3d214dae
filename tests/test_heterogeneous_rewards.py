"""Heterogeneous-reward settings of the navigation env (issue 13, item 1).

* zero-sum nuisance r_i = r_i^mpe + c·ξ_i(s): Σ_i ξ_i = 0, the team average equals the team
  reward (float64, to round-off), c = 0 is mpe2's reward bit for bit, ξ is a fixed function of
  the positions (same seed -> same numbers, other seed -> other numbers), not identically zero;
* owner split: agent i's global share is n·cov_i, Σ_l cov_l is mpe2's global term, and the
  team average is unchanged;
* both settings run under jit and vmap and agree with the eager call;
* bad settings are a ValueError.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slamjax.envs import NavigationEnv


def _states(env, k=64, seed=0):
    return jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(seed), k))


@functools.lru_cache(maxsize=None)
def _terms(env):
    """One jitted, vmapped call: (rewards, team reward, ξ, coverage) of a batch of states."""
    return jax.jit(jax.vmap(lambda s: (env.rewards(s), env.team_reward(s), env.nuisance(s),
                                       env.coverage(s))))


def _old_mpe_rewards(env, state):
    """mpe2's reward as the env computed it before the heterogeneous settings existed."""
    x, y = state.agent_pos[:, 0], state.agent_pos[:, 1]
    lx, ly = state.landmark_pos[:, 0], state.landmark_pos[:, 1]
    d_al = jnp.sqrt(jnp.square(x[:, None] - lx[None, :]) + jnp.square(y[:, None] - ly[None, :]))
    global_rew = -jnp.sum(jnp.min(d_al, axis=0))
    off = ~jnp.eye(env.n, dtype=bool)
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    dist = jnp.sqrt(jnp.where(off, dx * dx + dy * dy, 1.0))
    coll = jnp.sum((dist < 2.0 * env.agent_size) & off, axis=1).astype(x.dtype)
    return global_rew * (1.0 - env.local_ratio) + (-env.collision_penalty * coll) * env.local_ratio


@pytest.mark.parametrize("split,n", [("shared", 5), ("owner", 4)])
def test_team_average_is_the_team_reward_float64(x64, split, n):
    env = NavigationEnv(n, reward_split=split, nuisance_scale=0.8, dtype="float64")
    base = NavigationEnv(n, dtype="float64")
    states = _states(env)
    # clustered agents too, so that collisions (local terms) occur
    states = states._replace(agent_pos=states.agent_pos * jnp.where(
        jnp.arange(64)[:, None, None] % 2 == 0, 1.0, 0.1))
    r, team, xi, _ = _terms(env)(states)
    assert r.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(xi.sum(axis=1)), 0.0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(r.mean(axis=1)), np.asarray(team), rtol=0, atol=1e-13)
    # the team reward is mpe2's team average
    r0 = _terms(base)(states)[0]
    np.testing.assert_allclose(np.asarray(team), np.asarray(r0).mean(1), rtol=0, atol=1e-13)
    assert np.any(np.asarray(r0) != np.asarray(r0)[:, :1])  # collisions: mpe2's r_i differ
    # the rewards really differ across agents (beyond mpe2's collision terms)
    assert float(jnp.std(r - team[:, None])) > 0.1


def test_nuisance_off_is_mpe_bit_for_bit():
    states = _states(NavigationEnv(4), 128)
    states = states._replace(agent_pos=states.agent_pos * 0.2)  # collisions
    old = jax.jit(jax.vmap(_old_mpe_rewards, (None, 0)), static_argnums=0)
    want = np.asarray(old(NavigationEnv(4), states))
    env = NavigationEnv(4, nuisance_scale=0.0, nuisance_seed=7)
    assert env == NavigationEnv(4, nuisance_seed=7)
    got = jax.jit(jax.vmap(env.rewards))(states)
    np.testing.assert_array_equal(np.asarray(got), want)
    # the collision terms are exercised (some agent pays for a collision)
    assert np.any(want != want[:, :1])


def test_nuisance_is_the_scaled_fixed_function():
    env = NavigationEnv(5, nuisance_scale=0.5, nuisance_seed=3)
    states = _states(env, 2000, seed=1)
    r, _, xi, _ = _terms(env)(states)
    r0 = _terms(NavigationEnv(5))(states)[0]
    np.testing.assert_allclose(np.asarray(r - r0), 0.5 * np.asarray(xi), atol=1e-5)
    # a function of the positions only: velocities and t do not matter
    moved = states._replace(agent_vel=states.agent_vel + 3.0, t=states.t + 4)
    np.testing.assert_array_equal(np.asarray(_terms(env)(moved)[2]), np.asarray(xi))
    # the same seed gives the same function, another seed another one
    fn = jax.jit(lambda s, seed: jax.vmap(NavigationEnv(5, nuisance_seed=seed).nuisance)(s),
                 static_argnums=1)
    np.testing.assert_allclose(np.asarray(fn(states, 3)), np.asarray(xi), rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(fn(states, 4) - xi).max()) > 0.1
    # roughly unit scale per agent, and a different mean for different agents
    big = xi
    assert 0.3 < float(big.std()) < 3.0
    assert float(jnp.ptp(big.mean(axis=0))) > 0.1


def test_owner_split_terms():
    n = 4
    env = NavigationEnv(n, reward_split="owner")
    base = NavigationEnv(n)
    states = _states(env, 32)
    r, _, _, cov = _terms(env)(states)
    glob = -jnp.sum(jnp.min(jnp.linalg.norm(
        states.agent_pos[:, :, None, :] - states.landmark_pos[:, None, :, :], axis=-1), axis=1), 1)
    np.testing.assert_allclose(np.asarray(cov.sum(axis=1)), np.asarray(glob), rtol=1e-6)
    r0 = jax.jit(jax.vmap(base.rewards))(states)
    # agent i: 0.5 * n * cov_i + 0.5 * local_i, and mpe2's: 0.5 * global + 0.5 * local_i
    np.testing.assert_allclose(np.asarray(r - r0),
                               np.asarray(0.5 * (n * cov - glob[:, None])), atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.mean(1)), np.asarray(r0.mean(1)), atol=1e-5)


def test_heterogeneous_settings_jit_vmap_match_eager():
    env = NavigationEnv(3, reward_split="owner", nuisance_scale=0.7)
    states = _states(env, 8)
    acts = jnp.tile(jnp.arange(3, dtype=jnp.int32), (8, 1))
    keys = jax.random.split(jax.random.key(2), 8)
    nxt, r, d = jax.jit(jax.vmap(env.step))(keys, states, acts)
    s1, r1, _ = jax.jit(env.step)(keys[1], jax.tree.map(lambda x: x[1], states),
                                  jnp.arange(3, dtype=jnp.int32))
    np.testing.assert_allclose(np.asarray(r[1]), np.asarray(r1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(env.team_reward))(nxt)),
                               np.asarray(r.mean(1)), atol=1e-5)
    assert r.dtype == jnp.float32
    hash(env)  # still a static, hashable configuration


@pytest.mark.parametrize("kwargs,match", [
    (dict(reward_split="mine"), "reward_split"),
    (dict(nuisance_scale=-1.0), "nuisance_scale"),
    (dict(nuisance_scale=float("nan")), "nuisance_scale"),
    (dict(nuisance_features=0), "nuisance_features"),
    (dict(nuisance_seed=-1), "nuisance_seed"),
    (dict(nuisance_lengthscale=0.0), "nuisance_lengthscale"),
])
def test_bad_heterogeneity_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NavigationEnv(3, **kwargs)


def test_single_agent_has_no_nuisance():
    env = NavigationEnv(1, nuisance_scale=1.0)
    s = _states(env, 4)
    np.testing.assert_array_equal(np.asarray(_terms(env)(s)[2]), 0.0)
