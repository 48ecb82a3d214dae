"""Tests of the pure-JAX cooperative navigation env (MPE simple_spread rules).

The parity tests drive the installed ``mpe2`` reference (simple_spread_v3
parallel env) and :class:`slamjax.envs.NavigationEnv` with the same initial
state and the same discrete actions, and compare positions, velocities,
rewards, observations and episode ends.  They run in float64 (``x64``
fixture); everything else passes with ``jax_enable_x64`` on or off.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slamjax.envs import (
    NUM_ACTIONS,
    NavigationEnv,
    NavState,
    agent_observations,
    global_obs,
    reset,
    step,
    validate_actions,
)


@functools.lru_cache(maxsize=None)
def _jit_step(env):
    """One jitted step per (hashable) env config, shared by the tests."""
    return jax.jit(env.step)


_jit_obs = jax.jit(agent_observations)


@pytest.fixture
def x64():
    """Enable 64-bit JAX for one test only (restored afterwards)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def no_x64():
    with jax.enable_x64(False):
        yield


# ----------------------------------------------------------------------------- mpe2 helpers
def _make_mpe(n, max_cycles, local_ratio=0.5):
    mpe = pytest.importorskip(
        "mpe2.simple_spread_v3",
        reason="mpe2 (PettingZoo MPE) is needed for the parity tests: pip install mpe2",
    )
    return mpe.parallel_env(
        N=n, local_ratio=local_ratio, max_cycles=max_cycles, continuous_actions=False
    )


def _mpe_arrays(penv):
    world = penv.unwrapped.world
    pos = np.array([a.state.p_pos for a in world.agents], dtype=np.float64)
    vel = np.array([a.state.p_vel for a in world.agents], dtype=np.float64)
    lm = np.array([l.state.p_pos for l in world.landmarks], dtype=np.float64)
    return pos, vel, lm


def _mpe_set(penv, pos, vel):
    for a, p, v in zip(penv.unwrapped.world.agents, pos, vel):
        a.state.p_pos = np.array(p, dtype=np.float64)
        a.state.p_vel = np.array(v, dtype=np.float64)


def _mpe_obs(penv):
    raw = penv.unwrapped
    return np.stack([raw.observe(name) for name in raw.possible_agents])


def _run_parity(n, seed, *, max_cycles=25, local_ratio=0.5, cluster=False,
                dtype="float64", atol=1e-5):
    """Run one full episode in both envs; return the number of collision steps."""
    penv = _make_mpe(n, max_cycles, local_ratio)
    penv.reset(seed=seed)
    rng = np.random.default_rng(1000 + seed)
    if cluster:  # start agents packed together and moving, to exercise contacts
        _mpe_set(penv, rng.uniform(-0.25, 0.25, (n, 2)), rng.uniform(-1.0, 1.0, (n, 2)))
    pos, vel, lm = _mpe_arrays(penv)

    env = NavigationEnv(n, max_steps=max_cycles, local_ratio=local_ratio, dtype=dtype)
    state = env.make_state(pos, lm, vel)
    jstep = _jit_step(env)
    np.testing.assert_allclose(_jit_obs(state), _mpe_obs(penv), atol=atol)

    actions = rng.integers(0, NUM_ACTIONS, size=(max_cycles, n))
    names = penv.possible_agents
    key = jax.random.key(seed)
    collision_steps = 0
    for t in range(max_cycles):
        _, rew, _, trunc, _ = penv.step({a: int(actions[t, i]) for i, a in enumerate(names)})
        state, jrew, done = jstep(key, state, jnp.asarray(actions[t], jnp.int32))
        pos, vel, lm = _mpe_arrays(penv)
        ref_rew = np.array([rew[a] for a in names])
        np.testing.assert_allclose(state.agent_pos, pos, atol=atol, err_msg=f"pos t={t}")
        np.testing.assert_allclose(state.agent_vel, vel, atol=atol, err_msg=f"vel t={t}")
        np.testing.assert_allclose(state.landmark_pos, lm, atol=atol)
        np.testing.assert_allclose(jrew, ref_rew, atol=atol, err_msg=f"reward t={t}")
        np.testing.assert_allclose(_jit_obs(state), _mpe_obs(penv), atol=atol)
        assert bool(done) == all(trunc[a] for a in names), f"done mismatch at t={t}"
        assert int(state.t) == t + 1
        collision_steps += int(_n_collisions(pos) > 0)
    assert bool(done) and not penv.agents  # the episode ended in both envs
    return collision_steps


def _n_collisions(pos):
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    return int(((d < 0.3) & ~np.eye(len(pos), dtype=bool)).sum())


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_mpe2_random_start(x64, n, seed):
    _run_parity(n, seed)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_mpe2_contacts(x64, n, seed):
    """Packed start with random velocities: contact forces and collision penalties."""
    collision_steps = _run_parity(n, seed, cluster=True)
    assert collision_steps > 0, "the clustered episode should contain collisions"


@pytest.mark.parametrize("local_ratio,max_cycles", [(0.0, 7), (0.8, 30)])
def test_parity_with_mpe2_other_configs(x64, local_ratio, max_cycles):
    _run_parity(3, 2, max_cycles=max_cycles, local_ratio=local_ratio, cluster=True)


@pytest.mark.parametrize("n,cluster", [(1, False), (8, True)])
def test_parity_with_mpe2_edge_sizes(x64, n, cluster):
    _run_parity(n, 3, cluster=cluster)


def test_parity_float32_default_dtype():
    """The default float32 env tracks mpe2 (float64) closely on a contact-free episode."""
    _run_parity(3, 0, dtype="float32", atol=1e-4)


def test_initial_state_distribution_matches_mpe2_ranges():
    env = NavigationEnv(4)
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(3), 512))
    for arr in (states.agent_pos, states.landmark_pos):
        assert arr.dtype == jnp.float32
        assert float(arr.min()) >= -1.0 and float(arr.max()) <= 1.0
        assert abs(float(arr.mean())) < 0.05  # U(-1, 1)
    assert not np.any(np.asarray(states.agent_vel)) and not np.any(np.asarray(states.t))


# ----------------------------------------------------------------------------- invariants
def _numpy_rewards(pos, lm, local_ratio, size=0.15):
    n = len(pos)
    glob = 0.0
    for l in range(n):
        glob -= min(np.sqrt(np.sum((pos[a] - lm[l]) ** 2)) for a in range(n))
    out = np.zeros(n)
    for i in range(n):
        local = 0.0
        for j in range(n):
            if j != i and np.sqrt(np.sum((pos[i] - pos[j]) ** 2)) < 2 * size:
                local -= 1.0
        out[i] = glob * (1 - local_ratio) + local * local_ratio
    return out


@pytest.mark.parametrize("n,local_ratio", [(1, 0.5), (2, 0.0), (4, 0.8), (7, 0.5), (7, 1.0)])
def test_rewards_match_numpy(n, local_ratio):
    env = NavigationEnv(n, local_ratio=local_ratio)
    rng = np.random.default_rng(n)
    rewards = jax.jit(env.rewards)
    for spread in (1.0, 0.3):  # the packed states have collisions
        for _ in range(5):
            pos = rng.uniform(-spread, spread, (n, 2)).astype(np.float32)
            lm = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
            st = env.make_state(pos, lm)
            expected = _numpy_rewards(pos.astype(np.float64), lm.astype(np.float64), local_ratio)
            got = np.asarray(rewards(st))
            assert got.dtype == np.float32 and got.shape == (n,)
            np.testing.assert_allclose(got, expected, atol=1e-5)


def _np_states(n, batch, seed, spread=1.0, dtype=np.float32):
    """A batch of random states built with NumPy (cheap: no PRNG to compile)."""
    rng = np.random.default_rng(seed)
    return NavState(
        rng.uniform(-spread, spread, (batch, n, 2)).astype(dtype),
        rng.uniform(-1.0, 1.0, (batch, n, 2)).astype(dtype),
        rng.uniform(-1.0, 1.0, (batch, n, 2)).astype(dtype),
        np.zeros(batch, np.int32),
    )


@functools.lru_cache(maxsize=None)
def _jit_rollout(env):
    """jit(scan over time of vmap over envs of step); actions are scanned inputs."""

    def run(key, states, actions):  # actions: (T, B, n)
        def body(st, act):
            st, rew, done = jax.vmap(env.step, in_axes=(None, 0, 0))(key, st, act)
            return st, (st.agent_pos, rew, done)

        return jax.lax.scan(body, states, actions)

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _jit_reset(env):
    return jax.jit(env.reset)


ROLLOUT_STEPS, ROLLOUT_ENVS = 60, 64


@pytest.mark.parametrize("n", [1, 3, 6])
def test_rollouts_finite_and_bounded(n):
    steps = ROLLOUT_STEPS
    env = NavigationEnv(n, max_steps=steps)
    states = _np_states(n, ROLLOUT_ENVS, seed=n, spread=0.5)
    actions = np.random.default_rng(n).integers(0, NUM_ACTIONS, (steps, ROLLOUT_ENVS, n))
    final, (pos, rew, done) = _jit_rollout(env)(jax.random.key(0), states, actions)
    pos, rew = np.asarray(pos), np.asarray(rew)
    assert np.isfinite(pos).all() and np.isfinite(rew).all()
    assert np.isfinite(np.asarray(final.agent_vel)).all()
    # Rigorous bound: |force| <= 5 + 100 * (0.3 + 1e-3) (n-1), |v| <= max(|v0|, |force| dt / damping).
    f_max = env.sensitivity + (n - 1) * env.contact_force * (2 * env.agent_size + 1e-3)
    v_max = max(np.sqrt(2), f_max * env.dt / env.damping)
    assert np.abs(pos).max() <= np.sqrt(2) + steps * env.dt * v_max
    assert np.abs(pos).max() < 10.0  # and in practice they stay near the arena
    assert rew.max() <= 0.0
    assert np.asarray(done)[-1].all() and not np.asarray(done)[:-1].any()
    assert pos.dtype == np.float32


def test_vmap_matches_single_steps():
    n, b = 4, 16
    env = NavigationEnv(n)
    states = _np_states(n, b, seed=0)
    # pack the first half of the batch so that contacts happen
    states = states._replace(agent_pos=states.agent_pos * np.where(np.arange(b) < b // 2, 0.2, 1.0)[:, None, None].astype(np.float32))
    keys = jax.random.split(jax.random.key(0), b)
    acts = np.random.default_rng(1).integers(0, NUM_ACTIONS, (b, n)).astype(np.int32)
    vs, vr, vd = jax.device_get(jax.jit(jax.vmap(env.step))(keys, states, acts))
    single = _jit_step(env)
    for i in range(b):
        si = jax.tree.map(lambda x: x[i], states)
        s1, r1, d1 = single(keys[i], si, acts[i])
        for a, bb in zip(jax.tree.leaves(s1), jax.tree.leaves(jax.tree.map(lambda x: x[i], vs))):
            np.testing.assert_allclose(a, bb, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(r1, vr[i], rtol=1e-6, atol=1e-6)
        assert bool(d1) == bool(vd[i])


def test_same_key_same_result():
    env = NavigationEnv(3, max_steps=2, auto_reset=True)  # the key matters at the reset
    reset_fn = _jit_reset(env)
    s1, s2, s3 = reset_fn(jax.random.key(1)), reset_fn(jax.random.key(1)), reset_fn(jax.random.key(2))
    for x, y in zip(s1, s2):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(s1.agent_pos, s3.agent_pos)
    for x, y in zip(s1, reset(jax.random.key(1), 3)):  # functional form, same draw
        np.testing.assert_array_equal(x, y)
    jstep = _jit_step(env)
    a = jnp.array([1, 2, 3], jnp.int32)
    outs = []
    for _ in range(2):
        st, traj = s1, []
        for t in range(4):  # crosses one auto-reset
            st, r, d = jstep(jax.random.key(10 + t), st, a)
            traj.append((st, r, d))
        outs.append(jax.device_get(traj))
    for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_array_equal(x, y)


def test_functional_step_matches_method():
    env = NavigationEnv(3, max_steps=5, local_ratio=0.25)
    s = env.make_state([[0.1, 0.0], [0.2, 0.1], [0.9, -0.4]], np.full((3, 2), 0.3))  # agents 0, 1 touch
    a = jnp.array([1, 2, 4], jnp.int32)
    out1 = _jit_step(env)(jax.random.key(1), s, a)
    out2 = jax.jit(step, static_argnames=("max_steps", "local_ratio"))(
        jax.random.key(1), s, a, max_steps=5, local_ratio=0.25
    )
    for x, y in zip(jax.tree.leaves(out1), jax.tree.leaves(out2)):
        np.testing.assert_array_equal(x, y)


def test_action_semantics():
    """0 no-op, 1 left (-x), 2 right (+x), 3 down (-y), 4 up (+y); dv = 5 * dt."""
    env = NavigationEnv(5)
    pos = np.array([[-2.0, 0], [-1, 0], [0, 0], [1, 0], [2, 0]], np.float32)  # no contacts
    s = env.make_state(pos, np.zeros((5, 2)))
    jstep = _jit_step(env)
    s2, _, _ = jstep(jax.random.key(0), s, jnp.arange(5, dtype=jnp.int32))
    expected = np.array([[0, 0], [-0.5, 0], [0.5, 0], [0, -0.5], [0, 0.5]])
    np.testing.assert_allclose(s2.agent_vel, expected, atol=1e-6)
    np.testing.assert_allclose(s2.agent_pos, pos)  # position uses the old velocity
    s3, _, _ = jstep(jax.random.key(0), s2, jnp.zeros(5, jnp.int32))
    np.testing.assert_allclose(s3.agent_pos, pos + 0.1 * expected, atol=1e-6)
    np.testing.assert_allclose(s3.agent_vel, 0.75 * expected, atol=1e-6)


def test_auto_reset():
    env = NavigationEnv(3, max_steps=2, auto_reset=True)
    s = _jit_reset(env)(jax.random.key(0))
    a = jnp.zeros(3, jnp.int32)
    for t in range(2):
        s, r, d = _jit_step(env)(jax.random.key(10 + t), s, a)
        assert bool(d) == (t == 1)
    fresh = _jit_reset(env)(jax.random.key(11))
    for x, y in zip(s, fresh):
        np.testing.assert_array_equal(x, y)
    assert int(s.t) == 0


def test_observations_layout():
    env = NavigationEnv(3)
    s = jax.tree.map(lambda x: x[0], _np_states(3, 1, seed=4))
    g = jax.jit(global_obs)(s)
    assert g.shape == (12,) == (env.global_obs_dim,)
    np.testing.assert_array_equal(g[:6], s.agent_pos.ravel())
    np.testing.assert_array_equal(g[6:], s.landmark_pos.ravel())
    o = _jit_obs(s)
    assert o.shape == (3, env.obs_dim)
    p = s.agent_pos
    np.testing.assert_array_equal(o[1, :4], np.concatenate([s.agent_vel[1], p[1]]))
    np.testing.assert_allclose(o[1, 4:10], (s.landmark_pos - p[1]).ravel(), atol=1e-6)
    np.testing.assert_allclose(o[1, 10:14], np.concatenate([p[0] - p[1], p[2] - p[1]]), atol=1e-6)
    np.testing.assert_array_equal(o[:, 14:], 0.0)  # silent agents: zero communication
    gb = jax.jit(jax.vmap(global_obs))(_np_states(3, 5, seed=0))
    assert gb.shape == (5, 12)


def test_float32_even_with_x64(x64):
    env = NavigationEnv(3)
    s = _jit_reset(env)(jax.random.key(0))
    assert s.agent_pos.dtype == jnp.float32 and s.t.dtype == jnp.int32
    s2, r, d = _jit_step(env)(jax.random.key(0), s, jnp.array([0, 1, 2]))
    assert s2.agent_pos.dtype == s2.agent_vel.dtype == r.dtype == jnp.float32
    assert s2.t.dtype == jnp.int32 and d.dtype == jnp.bool_
    assert global_obs(s2).dtype == jnp.float32
    s64 = NavigationEnv(3, dtype="float64").make_state(np.zeros((3, 2)), np.ones((3, 2)))
    assert s64.agent_pos.dtype == jnp.float64


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad_n", [0, -1, 2.5, True, "3", None])
def test_bad_n(bad_n):
    with pytest.raises(ValueError, match="n \\(number of agents\\)"):
        NavigationEnv(bad_n)
    with pytest.raises(ValueError, match="n \\(number of agents\\)"):
        reset(jax.random.key(0), bad_n)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"local_ratio": 1.5}, "local_ratio"),
        ({"local_ratio": -0.1}, "local_ratio"),
        ({"local_ratio": "x"}, "local_ratio"),
        ({"dtype": "int32"}, "dtype"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NavigationEnv(3, **kwargs)


def test_config_hashable_and_static():
    assert hash(NavigationEnv(3)) == hash(NavigationEnv(3))
    assert NavigationEnv(3) == NavigationEnv(3, dtype=np.float32)
    f = jax.jit(lambda e, s: e.global_obs(s) * e.n, static_argnums=0)
    s = NavigationEnv(2).make_state(np.ones((2, 2)), np.zeros((2, 2)))
    np.testing.assert_array_equal(f(NavigationEnv(2), s), [2, 2, 2, 2, 0, 0, 0, 0])


@pytest.mark.parametrize(
    "actions,match",
    [
        (np.array([0, 1, 2, 3]), "shape"),
        (np.array([0, 1]), "shape"),
        (np.array([[0, 1, 2]]), "shape"),
        (np.array([0.0, 1.0, 2.0]), "integer"),
        (np.array([0, 1, 5]), "invalid action index 5"),
        (np.array([-1, 1, 2]), "invalid action index -1"),
        ([0, 1, 7], "invalid action index 7"),
    ],
)
def test_bad_actions_eager(actions, match):
    env = NavigationEnv(3)
    s = env.make_state(np.eye(3, 2), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=match):
        env.step(jax.random.key(0), s, actions)
    if np.ndim(actions) == 1:
        with pytest.raises(ValueError, match=match):
            validate_actions(actions, 3)


def test_validate_actions():
    out = validate_actions([[0, 4, 2], [1, 1, 3]], 3)  # leading batch axes allowed
    assert out.dtype == np.int32 and out.shape == (2, 3)
    with pytest.raises(ValueError, match="shape"):
        validate_actions(np.int64(2), 3)
    with pytest.raises(ValueError, match="n \\(number of agents\\)"):
        validate_actions([0], 0)
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda a: validate_actions(a, 3))(jnp.zeros(3, jnp.int32))


def test_bad_actions_under_jit():
    env = NavigationEnv(3)
    s = env.make_state(np.eye(3, 2), np.zeros((3, 2)))
    jstep = _jit_step(env)
    with pytest.raises(ValueError, match="shape"):
        jstep(jax.random.key(0), s, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        jstep(jax.random.key(0), s, jnp.zeros(3, jnp.float32))
    # out-of-range values cannot be checked under jit: they are clipped to [0, 4]
    out_bad = jstep(jax.random.key(0), s, jnp.array([-3, 9, 2], jnp.int32))
    out_ok = jstep(jax.random.key(0), s, jnp.array([0, 4, 2], jnp.int32))
    for x, y in zip(jax.tree.leaves(out_bad), jax.tree.leaves(out_ok)):
        np.testing.assert_array_equal(x, y)


def test_bad_state_shape():
    env = NavigationEnv(3)
    with pytest.raises(ValueError, match="agent_pos"):
        env.make_state(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="landmark_pos"):
        env.make_state(np.zeros((3, 2)), np.zeros((3, 3)))
    s = NavigationEnv(2).make_state(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="agent_pos"):
        env.step(jax.random.key(0), s, np.zeros(3, np.int32))
    batched = _np_states(3, 4, seed=0)
    with pytest.raises(ValueError, match="vmap"):
        step(jax.random.key(0), batched, np.zeros(3, np.int32))


def test_float64_requires_x64(no_x64):
    with pytest.raises(ValueError, match="x64"):
        NavigationEnv(2, dtype="float64").reset(jax.random.key(0))


def test_navstate_is_pytree():
    s = NavigationEnv(2).make_state(np.zeros((2, 2)), np.zeros((2, 2)))
    assert isinstance(s, NavState) and s.num_agents == 2
    assert len(jax.tree.leaves(s)) == 4
