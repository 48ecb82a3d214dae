"""Tests of the pure-JAX pursuit env (PettingZoo SISL pursuit_v5 rules).

The parity tests drive the installed PettingZoo reference (``pursuit_v5.parallel_env``, 1.27)
and :class:`slamjax.envs.PursuitEnv` from the same initial cells (read out of the reference, or
written into it from a JAX reset) with the same pursuer actions and the same evader actions
(the reference's random evader policy is replaced by one that replays ours), and compare cells,
alive evaders, captures, per-agent rewards, terminations/truncations, the global state and the
local observations at every step of whole episodes.  They are skipped when PettingZoo is absent.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slamjax.envs import PursuitEnv, PursuitState, rectangle_map
from slamjax.envs.pursuit import MOVES, NUM_ACTIONS


@functools.lru_cache(maxsize=None)
def _jit(env):
    return jax.jit(env.step_full), jax.jit(env.global_state), jax.jit(env.observations)


@functools.lru_cache(maxsize=None)
def _jit_parity(env):
    """Step, global state and local views of the next state in one compilation."""
    def f(key, state, actions, evader_actions):
        out = env.step_full(key, state, actions, evader_actions)
        return out, env.global_state(out.state), env.observations(out.state)

    return jax.jit(f)


# ----------------------------------------------------------------------------- reference
class _ReplayEvaders:
    """Stands in for the reference's RandomPolicy: returns our evader actions, in the order
    in which the reference moves its remaining evaders (original index order)."""

    def __init__(self, raw):
        self.raw, self.actions, self.k = raw, None, 0

    def set(self, actions):
        self.actions, self.k = np.asarray(actions), 0

    def act(self, state):
        alive = np.flatnonzero(~self.raw.evaders_gone)  # captures are removed before moves
        a = int(self.actions[alive[self.k]])
        self.k += 1
        return a


def _make_ref(env: PursuitEnv):
    pursuit_v5 = pytest.importorskip(
        "pettingzoo.sisl.pursuit_v5",
        reason="PettingZoo is needed for the parity tests: pip install 'pettingzoo[sisl]==1.27.*'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pursuit_v5.parallel_env(
            n_pursuers=env.n_pursuers, n_evaders=env.n_evaders, x_size=env.x_size,
            y_size=env.y_size, max_cycles=env.max_cycles, shared_reward=env.shared_reward,
            n_catch=env.n_catch, surround=env.surround, tag_reward=env.tag_reward,
            catch_reward=env.catch_reward, urgency_reward=env.urgency_reward,
            obs_range=env.obs_range, freeze_evaders=env.freeze_evaders)


def _ref_cells(raw, n_evaders, prev_evaders=None):
    """(pursuer cells (n_p, 2), evader cells (n_e, 2) by original index, alive (n_e,))."""
    pur = np.array([a.current_position() for a in raw.pursuer_layer.allies], np.int64)
    alive = ~raw.evaders_gone.copy()
    ev = np.zeros((n_evaders, 2), np.int64) if prev_evaders is None else prev_evaders.copy()
    if alive.any():
        ev[alive] = [a.current_position() for a in raw.evader_layer.allies]
    return pur, ev, alive


def _ref_write_cells(raw, pur, ev):
    for a, p in zip(raw.pursuer_layer.allies, pur):
        a.set_position(int(p[0]), int(p[1]))
    for a, p in zip(raw.evader_layer.allies, ev):
        a.set_position(int(p[0]), int(p[1]))
    raw.model_state[1] = raw.pursuer_layer.get_state_matrix()
    raw.model_state[2] = raw.evader_layer.get_state_matrix()


def _chase_actions(rng, env, pur, ev, alive, eps=0.25):
    """Pursuers head for the nearest alive evader (surround: all for neighbour j % 4 of the
    first alive evader), with probability eps a random action: plenty of captures, and any
    action sequence is as valid as another for parity."""
    acts = rng.integers(0, NUM_ACTIONS, env.n_pursuers)
    if not alive.any():
        return acts
    targets = ev[alive]
    for j, p in enumerate(pur):
        if rng.random() < eps:
            continue
        d = np.abs(targets - p).sum(1)
        goal = targets[0] + MOVES[j % 4] if env.surround else targets[np.argmin(d)]
        dx, dy = goal - p
        if dx == 0 and dy == 0:
            acts[j] = 4
        elif abs(dx) >= abs(dy):
            acts[j] = 1 if dx > 0 else 0
        else:
            acts[j] = 2 if dy > 0 else 3
    return acts


def _run_parity(env: PursuitEnv, seed: int, init: str = "ref"):
    """One whole episode in both envs; returns (steps, captures, terminated, truncated)."""
    penv = _make_ref(env)
    penv.reset(seed=seed)
    raw = penv.unwrapped.env
    ctrl = _ReplayEvaders(raw)
    if not env.freeze_evaders:  # frozen: keep the reference's own stay-policy
        raw.evader_controller = ctrl
    names = penv.possible_agents
    gstate = _jit(env)[1]
    parity_step = _jit_parity(env)

    if init == "ref":  # read the reference's spawn out
        pur, ev, alive = _ref_cells(raw, env.n_evaders)
        state = env.make_state(pur, ev)
    else:  # spawn with ours and write it into the reference
        state = jax.jit(env.reset)(jax.random.key(1000 + seed))
        _ref_write_cells(raw, np.asarray(state.pursuer_pos), np.asarray(state.evader_pos))
    ref_state = lambda: np.asarray(raw.state())  # noqa: E731
    ours_to_ref = lambda g: np.asarray(g)[[2, 0, 1]].transpose(2, 1, 0)  # noqa: E731
    np.testing.assert_array_equal(ours_to_ref(gstate(state)), ref_state())

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    ev_prev = np.asarray(state.evader_pos)
    captures, t = 0, 0
    while penv.agents:
        pur = np.asarray(state.pursuer_pos)
        alive = np.asarray(state.evader_alive)
        acts = _chase_actions(rng, env, pur, np.asarray(state.evader_pos), alive)
        ev_acts = rng.integers(0, NUM_ACTIONS, env.n_evaders)
        ctrl.set(ev_acts)
        gone_before = raw.evaders_gone.copy()
        obs, rew, term, trunc, _ = penv.step({a: int(acts[i]) for i, a in enumerate(names)})
        key, k = jax.random.split(key)
        out, g, views = parity_step(k, state, jnp.asarray(acts, jnp.int32), jnp.asarray(ev_acts, jnp.int32))
        state = out.state
        t += 1
        msg = f"seed {seed}, step {t}"

        r_pur, r_ev, r_alive = _ref_cells(raw, env.n_evaders, ev_prev)
        ev_prev = r_ev
        np.testing.assert_array_equal(state.pursuer_pos, r_pur, err_msg=msg)
        np.testing.assert_array_equal(state.evader_alive, r_alive, err_msg=msg)
        np.testing.assert_array_equal(np.asarray(state.evader_pos)[r_alive], r_ev[r_alive], err_msg=msg)
        np.testing.assert_array_equal(out.captured, raw.evaders_gone & ~gone_before, err_msg=msg)
        np.testing.assert_allclose(out.rewards, [rew[a] for a in names], rtol=0, atol=1e-5, err_msg=msg)
        assert bool(out.terminated) == all(term[a] for a in names), msg
        assert bool(out.truncated) == all(trunc[a] for a in names), msg
        assert not any(term[a] and trunc[a] for a in names)
        np.testing.assert_array_equal(ours_to_ref(g), ref_state(), err_msg=msg)
        ours_obs = np.asarray(views)[:, [2, 0, 1]].transpose(0, 3, 2, 1)
        np.testing.assert_array_equal(ours_obs, np.stack([obs[a] for a in names]), err_msg=msg)
        captures += int(out.captured.sum())
        assert t <= env.max_cycles
    assert bool(out.terminated) or bool(out.truncated)
    return t, captures, bool(out.terminated), bool(out.truncated)


# ----------------------------------------------------------------------------- parity
PAPER_4x4 = PursuitEnv(n_pursuers=4, n_evaders=4)  # paper settings, per-agent rewards
PAPER_8x30_SHARED = PursuitEnv(n_pursuers=8, n_evaders=30, shared_reward=True)
PETTINGZOO_LIKE = PursuitEnv(n_pursuers=8, n_evaders=30, x_size=16, y_size=16, surround=True,
                             shared_reward=True, tag_reward=0.01, urgency_reward=-0.1,
                             max_cycles=60)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("env", [PAPER_4x4, PAPER_8x30_SHARED, PursuitEnv(8, 30, max_cycles=60)],
                         ids=["4p4e_local", "8p30e_shared", "8p30e_local"])
def test_parity_whole_episodes(env, seed):
    # seed 1 of the paper configs spawns with ours and writes the cells into the reference
    init = "jax" if seed == 1 and env is not PAPER_8x30_SHARED else "ref"
    steps, captures, terminated, truncated = _run_parity(env, seed, init)
    assert steps == env.max_cycles or (terminated and captures == env.n_evaders)
    assert captures > 0, "the chase policy should produce captures (else the test is weak)"


@pytest.mark.parametrize("freeze", [False, True])
def test_parity_surround_pettingzoo_rules(freeze):
    """PettingZoo-like settings: 16 x 16, surround captures, shared reward, urgency -0.1 (frozen
    evaders: surround captures are frequent)."""
    env = dataclasses.replace(PETTINGZOO_LIKE, freeze_evaders=freeze)
    _, captures, _, _ = _run_parity(env, 0 if freeze else 2)
    assert captures > 0


@pytest.mark.slow
@pytest.mark.parametrize("env", [PAPER_4x4, PAPER_8x30_SHARED, PursuitEnv(8, 30)],
                         ids=["4p4e_local", "8p30e_shared", "8p30e_local"])
def test_parity_many_seeds(env):
    """20 more whole episodes per configuration (seeds 10..29, both spawn directions)."""
    total = 0
    for seed in range(10, 30):
        steps, _, _, _ = _run_parity(env, seed, "jax" if seed % 2 else "ref")
        total += steps
    assert total >= 20


def test_parity_termination_and_truncation_precedence():
    """Episodes that end by capturing every evader; then the same episode with max_cycles equal
    to that step: truncation wins in both envs."""
    ended = 0
    for seed in range(3):
        env = PursuitEnv(n_pursuers=8, n_evaders=2, n_catch=1, max_cycles=200)
        steps, captures, terminated, _ = _run_parity(env, seed)
        if terminated:
            ended += 1
            assert captures == 2 and steps < 200
            short = PursuitEnv(n_pursuers=8, n_evaders=2, n_catch=1, max_cycles=steps)
            s2, _, term2, trunc2 = _run_parity(short, seed)
            assert s2 == steps and trunc2 and not term2
    assert ended >= 2


# ----------------------------------------------------------------------------- rules
def _one(env, pur, ev, acts, ev_acts=None, alive=None, t=0):
    """One jitted step from given cells (evaders stay unless ev_acts is given)."""
    state = env.make_state(np.array(pur), np.array(ev), alive, t)
    ev_acts = np.full(env.n_evaders, 4) if ev_acts is None else ev_acts
    return _jit(env)[0](jax.random.key(0), state, jnp.asarray(acts, jnp.int32),
                        jnp.asarray(ev_acts, jnp.int32))


def test_obstacle_map_is_the_reference_rectangle():
    m = rectangle_map(15, 15)
    xs, ys = np.nonzero(m)
    assert m.sum() == 48 and (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 10, 4, 11)
    assert rectangle_map(16, 16).sum() == 7 * 9
    assert PursuitEnv().num_free_cells == 177


def test_tag_reward_clipped_neighbours_on_borders_and_corners():
    env = PursuitEnv(n_pursuers=1, n_evaders=4, n_catch=1, shared_reward=False)
    # corner (0, 0): clipped neighbours are (0,0), (1,0), (0,1), (0,0) -> own cell counts twice
    out = _one(env, [[0, 0]], [[0, 0], [1, 0], [0, 1], [1, 1]], [4], alive=[False, True, True, True])
    np.testing.assert_allclose(out.rewards, [0.1 * 2], atol=1e-7)  # (1,0) and (0,1); (1,1) no
    env2 = PursuitEnv(n_pursuers=2, n_evaders=4, n_catch=2)
    # corner with an evader on the pursuer's own cell: counted twice (no capture: one pursuer)
    out = _one(env2, [[0, 0], [14, 14]], [[0, 0], [1, 0], [0, 1], [1, 1]], [4, 4])
    assert not out.captured.any()
    np.testing.assert_allclose(out.rewards, [0.1 * 4 / 2 * 2, 0.0], atol=1e-6)
    # left border (0, 7): own cell once, plus (1, 7) and (0, 8); interior: own cell not at all
    out = _one(env2, [[0, 7], [2, 2]], [[0, 7], [1, 7], [0, 8], [2, 2]], [4, 4])
    np.testing.assert_allclose(out.rewards, [0.1 * 3 / 2 * 2, 0.0], atol=1e-6)


def test_tag_reward_sums_sequential_sub_steps():
    """Pursuer j is scored j times at its old cell and n - j times at its new one."""
    env = PursuitEnv(n_pursuers=2, n_evaders=1, n_catch=2)
    # both pursuers start next to the evader at (2, 2) and step away from it
    out = _one(env, [[1, 2], [3, 2]], [[2, 2]], [0, 1])
    # p0: 0 * 1 + 2 * 0 = 0 ; p1: 1 * 1 + 1 * 0 = 1  -> 0.1 * 1 / 2
    np.testing.assert_allclose(out.rewards, [0.0, 0.05], atol=1e-7)
    # moving next to it instead: p0: 0*0 + 2*1 ; p1: 1*0 + 1*1
    out = _one(env, [[0, 2], [4, 2]], [[2, 2]], [1, 0])
    np.testing.assert_allclose(out.rewards, [0.1, 0.05], atol=1e-7)


def test_two_pursuer_capture():
    env = PursuitEnv(n_pursuers=3, n_evaders=3, n_catch=2, shared_reward=False)
    # p0, p1 meet on (2, 1) where two evaders stand; p2 alone on the third evader's cell
    out = _one(env, [[1, 1], [3, 1], [12, 12]], [[2, 1], [2, 1], [12, 12]], [1, 0, 4])
    np.testing.assert_array_equal(out.captured, [True, True, False])
    np.testing.assert_array_equal(out.capturer, [True, True, False])
    np.testing.assert_array_equal(out.state.evader_alive, [False, False, True])
    # capture reward once per step per pursuer (two evaders, still 5); tag: p1 scored once at
    # its old cell (3, 1) next to (2, 1) with 2 evaders -> 0.1 * 2 / 3; p0 at (1, 1) is scored
    # 0 times at its old cell; p2 on the evader's own cell (interior) gets no tag reward
    np.testing.assert_allclose(out.rewards, [5.0, 5.0 + 0.1 * 2 / 3, 0.0], atol=1e-6)
    assert not bool(out.terminated)
    # the last evader: captured by two pursuers -> terminated
    out2 = _one(env, [[12, 11], [12, 13], [0, 0]], [[12, 12]] * 3, [2, 3, 4],
                alive=[False, False, True])
    assert bool(out2.terminated) and not bool(out2.truncated)
    np.testing.assert_array_equal(out2.capturer, [True, True, False])
    # shared reward: every pursuer gets the mean
    env_s = PursuitEnv(n_pursuers=3, n_evaders=3, n_catch=2, shared_reward=True)
    out3 = _one(env_s, [[1, 1], [3, 1], [12, 12]], [[2, 1], [2, 1], [12, 12]], [1, 0, 4])
    np.testing.assert_allclose(out3.rewards, np.full(3, np.mean(out.rewards)), atol=1e-6)


def test_captured_evaders_do_not_move_and_others_do():
    env = PursuitEnv(n_pursuers=2, n_evaders=2, n_catch=2)
    out = _one(env, [[1, 1], [3, 1]], [[2, 1], [0, 14]], [1, 0], ev_acts=[1, 0])
    np.testing.assert_array_equal(out.state.evader_pos, [[2, 1], [0, 14]])  # dead; x-1 off grid
    out = _one(env, [[1, 1], [3, 3]], [[2, 1], [0, 14]], [4, 4], ev_acts=[1, 3])
    np.testing.assert_array_equal(out.state.evader_pos, [[3, 1], [0, 13]])


def test_moves_off_grid_and_into_obstacles_stay_put():
    env = PursuitEnv(n_pursuers=5, n_evaders=1)
    pur = [[0, 0], [0, 0], [4, 4], [4, 3], [14, 14]]
    out = _one(env, pur, [[0, 14]], [0, 3, 1, 1, 1])
    # x-1 / y-1 off grid; (5, 4) is an obstacle; (5, 3) is free; x+1 off grid
    np.testing.assert_array_equal(out.state.pursuer_pos, [[0, 0], [0, 0], [4, 4], [5, 3], [14, 14]])
    out = _one(env, [[7, 3], [7, 12], [4, 7], [11, 7], [2, 2]], [[0, 14]], [2, 3, 1, 0, 2])
    np.testing.assert_array_equal(out.state.pursuer_pos, [[7, 3], [7, 12], [4, 7], [11, 7], [2, 3]])
    # agents never block each other: two pursuers move onto the same cell
    out = _one(env, [[1, 1], [1, 3], [0, 2], [2, 2], [2, 2]], [[0, 14]], [2, 3, 1, 0, 4])
    np.testing.assert_array_equal(out.state.pursuer_pos, [[1, 2]] * 4 + [[2, 2]])


def test_truncation_takes_precedence_over_termination():
    env = PursuitEnv(n_pursuers=2, n_evaders=1, max_cycles=5)
    out = _one(env, [[1, 1], [3, 1]], [[2, 1]], [1, 0], t=4)
    assert bool(out.captured[0]) and bool(out.truncated) and not bool(out.terminated)
    out = _one(env, [[1, 1], [3, 1]], [[2, 1]], [1, 0], t=3)
    assert bool(out.terminated) and not bool(out.truncated)
    _, _, done = jax.jit(env.step)(jax.random.key(0), env.make_state([[1, 1], [3, 1]], [[2, 1]], t=3),
                                   jnp.array([1, 0], jnp.int32), jnp.array([4], jnp.int32))
    assert bool(done)


def test_global_state_counts_and_local_view():
    env = PursuitEnv(n_pursuers=3, n_evaders=3)
    state = env.make_state([[0, 0], [0, 0], [14, 3]], [[0, 1], [0, 1], [2, 2]], [True, True, False])
    _, gfn, ofn = _jit(env)
    g = np.asarray(gfn(state))
    assert g.shape == (3, 15, 15) and g.dtype == np.float32
    assert g[0, 0, 0] == 2 and g[0, 14, 3] == 1 and g[0].sum() == 3
    assert g[1, 0, 1] == 2 and g[1].sum() == 2  # the dead evader is not shown
    np.testing.assert_array_equal(g[2], rectangle_map(15, 15))
    o = np.asarray(ofn(state))
    assert o.shape == (3, 3, 7, 7)
    # pursuer 0 at the corner: cells with x < 0 or y < 0 read as obstacles, the centre is (3, 3)
    np.testing.assert_array_equal(o[0, 2, :3, :], 1)
    np.testing.assert_array_equal(o[0, 2, :, :3], 1)
    assert o[0, 0, 3, 3] == 2 and o[0, 1, 3, 4] == 2
    # pursuer 2 at (14, 3): view x in 11..17 (15.. outside), y in 0..6
    want = np.zeros((3, 7, 7), np.float32)
    want[2] = 1.0
    want[:, :4, :] = g[:, 11:15, 0:7]
    np.testing.assert_array_equal(o[2], want)


def test_reset_spawn_rules():
    env = PursuitEnv(n_pursuers=8, n_evaders=30)
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(3), 4000))
    obst = env.obstacles
    for pos in (np.asarray(states.pursuer_pos), np.asarray(states.evader_pos)):
        assert not obst[pos[..., 0], pos[..., 1]].any()
        d = np.abs(pos[:200, :, None] - pos[:200, None, :]).sum(-1)  # Manhattan distance of pairs
        off = ~np.eye(pos.shape[1], dtype=bool)
        assert (d[:, off] >= 2).all()  # neither equal nor 4-adjacent within a kind
    assert np.asarray(states.evader_alive).all() and (np.asarray(states.t) == 0).all()
    # pursuers and evaders may share cells: it happens in some of the resets
    same = (np.asarray(states.pursuer_pos)[:200, :, None] == np.asarray(states.evader_pos)[:200, None]).all(-1)
    assert same.any()
    # every free cell is reachable by the first pursuer (uniform placement)
    first = np.asarray(states.pursuer_pos[:, 0])
    counts = np.zeros((15, 15), int)
    np.add.at(counts, (first[:, 0], first[:, 1]), 1)
    assert (counts[~obst] > 0).all() and counts[obst].sum() == 0
    assert counts[~obst].std() / counts[~obst].mean() < 0.35  # ~ Poisson(22.6): cv ~0.21


def test_evader_actions_injected_or_drawn_from_key():
    env = PursuitEnv(n_pursuers=4, n_evaders=4)
    step = _jit(env)[0]
    state = env.reset(jax.random.key(0))
    acts = jnp.full((4,), 4, jnp.int32)
    s1 = step(jax.random.key(1), state, acts).state
    s2 = step(jax.random.key(1), state, acts).state
    s3 = step(jax.random.key(2), state, acts).state
    np.testing.assert_array_equal(s1.evader_pos, s2.evader_pos)
    assert (np.asarray(s1.evader_pos) != np.asarray(s3.evader_pos)).any()
    s4 = step(jax.random.key(1), state, acts, jnp.full((4,), 4, jnp.int32)).state
    np.testing.assert_array_equal(s4.evader_pos, state.evader_pos)
    # drawn actions are uniform over the 5 moves (evaders on open interior cells)
    open_state = env.make_state([[0, 0]] * 4, [[2, 2], [2, 12], [12, 2], [12, 12]])
    keys = jax.random.split(jax.random.key(3), 2500)
    moved = jax.vmap(lambda k: step(k, open_state, acts).state.evader_pos)(keys)
    delta = (np.asarray(moved) - np.asarray(open_state.evader_pos)).reshape(-1, 2)
    freq = [np.mean((delta == m).all(1)) for m in MOVES]
    np.testing.assert_allclose(freq, 0.2, atol=0.02)  # 10000 draws: sd 0.004
    frozen = PursuitEnv(n_pursuers=4, n_evaders=4, freeze_evaders=True)
    s5 = _jit(frozen)[0](jax.random.key(1), state, acts).state
    np.testing.assert_array_equal(s5.evader_pos, state.evader_pos)


def _rollout(env, key, steps):
    state = env.reset(key)

    def body(s, k):
        ka, ks = jax.random.split(k)
        a = jax.random.randint(ka, (env.n_pursuers,), 0, NUM_ACTIONS)
        s, r, d = env.step(ks, s, a)
        return s, (r, d, env.global_state(s))

    return jax.lax.scan(body, state, jax.random.split(key, steps))


def test_vmap_over_8_envs_equals_a_loop_and_jit_is_deterministic():
    env = PursuitEnv(n_pursuers=4, n_evaders=6, max_cycles=20, auto_reset=True)
    keys = jax.random.split(jax.random.key(7), 8)
    run = jax.jit(functools.partial(_rollout, env, steps=30))
    run_batched = jax.jit(jax.vmap(functools.partial(_rollout, env, steps=30)))
    batched = run_batched(keys)
    for i in range(8):
        single = run(keys[i])
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[i], b), batched, single)
    again = run_batched(keys)  # same keys -> the same numbers
    jax.tree.map(np.testing.assert_array_equal, batched, again)
    assert not np.array_equal(run(keys[0])[1][0], run(keys[1])[1][0])  # the key matters
    assert np.asarray(batched[1][1]).sum() >= 8  # every env ended an episode in 30 steps
    # the auto-reset state after step 20 is a fresh episode
    assert (np.asarray(batched[0].t) == 10).all()


def test_float64_rewards():
    env = PursuitEnv(n_pursuers=4, n_evaders=4)
    state = env.make_state([[0, 0], [2, 2], [3, 3], [14, 14]], [[0, 1], [2, 3], [3, 3], [13, 14]])
    a = jnp.array([0, 1, 2, 3], jnp.int32)
    e = _one(env, state.pursuer_pos, state.evader_pos, a)
    with jax.enable_x64(True):
        env64 = PursuitEnv(n_pursuers=4, n_evaders=4, dtype="float64")
        e64 = jax.jit(env64.step_full)(jax.random.key(0), state, a, jnp.full((4,), 4, jnp.int32))
        assert e64.rewards.dtype == jnp.float64
        np.testing.assert_allclose(e64.rewards, e.rewards, atol=1e-6)
        np.testing.assert_array_equal(e64.state.evader_pos, e.state.evader_pos)
    assert np.asarray(e.rewards).sum() > 0
    with pytest.raises(ValueError, match="64-bit"):
        with jax.enable_x64(False):
            PursuitEnv(n_pursuers=4, n_evaders=4, dtype="float64").step(jax.random.key(0), state, a)


def test_bad_configuration_and_inputs_raise():
    with pytest.raises(ValueError, match="n_catch"):
        PursuitEnv(n_pursuers=2, n_catch=3)
    PursuitEnv(n_pursuers=2, n_catch=3, surround=True)  # n_catch unused with surround
    with pytest.raises(ValueError, match="too small to spawn"):
        PursuitEnv(n_pursuers=2, n_evaders=40)  # 177 free cells < 5 * 39 + 1
    with pytest.raises(ValueError, match="too small to spawn"):
        PursuitEnv(n_pursuers=3, n_evaders=1, x_size=2, y_size=2)
    with pytest.raises(ValueError, match="obs_range"):
        PursuitEnv(obs_range=6)
    with pytest.raises(ValueError, match="n_evaders"):
        PursuitEnv(n_evaders=0)
    with pytest.raises(ValueError, match="dtype"):
        PursuitEnv(dtype="int8")
    env = PursuitEnv(n_pursuers=2, n_evaders=1)
    state = env.make_state([[0, 0], [1, 1]], [[2, 2]])
    with pytest.raises(ValueError, match="shape"):
        env.step(jax.random.key(0), state, np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError, match="invalid action"):
        env.step(jax.random.key(0), state, np.array([0, 5], np.int32))
    with pytest.raises(ValueError, match="integer"):
        env.step(jax.random.key(0), state, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="evader_actions"):
        env.step(jax.random.key(0), state, np.array([0, 1], np.int32), np.array([7], np.int32))
    with pytest.raises(ValueError, match="obstacle"):
        env.make_state([[5, 4], [0, 0]], [[2, 2]])
    with pytest.raises(ValueError, match="outside"):
        env.make_state([[15, 0], [0, 0]], [[2, 2]])
    with pytest.raises(ValueError, match="shape"):
        env.make_state([[0, 0]], [[2, 2]])
    assert isinstance(state, PursuitState)


# ----------------------------------------------------------------------------- CNN
def test_cnn_actor_critic_shapes_and_agent_vmap():
    from slamjax.rl.cnn import CNNActor, CNNCritic

    env = PursuitEnv(n_pursuers=4, n_evaders=4)
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), 6))
    g = np.asarray(jax.jit(jax.vmap(env.global_state))(states))  # (6, 3, 15, 15)
    g2 = g.copy()
    g2[:, 0, 0, 0] += 1.0  # one more pursuer on cell (0, 0)
    rng = np.random.default_rng(0)

    def check(module, params, g, g2):  # one compilation per module (compiles are slow here)
        out = jax.vmap(module.apply, in_axes=(0, None))(params, g)
        p_0 = jax.tree.map(lambda a: a[0], params)
        loop = jnp.stack([module.apply(jax.tree.map(lambda a: a[i], params), g) for i in range(4)])
        grads = jax.grad(lambda p: jnp.sum(module.apply(p, g) ** 2))(p_0)
        return out, loop, module.apply(p_0, g[0]), module.apply(p_0, g2), grads

    for module, out_shape, n_params in ((CNNActor(), (6, 5), 2373), (CNNCritic(), (6,), 801)):
        # parameter shapes from tracing init (flax's own initialisers are not under test and
        # compile slowly on a loaded CPU); 4 agents with different random parameters
        shapes = jax.eval_shape(module.init, jax.random.key(0), g[0])
        assert set(shapes["params"]) == {"conv1", "conv2", "out"}
        assert shapes["params"]["conv1"]["kernel"].shape == (3, 3, 3, 4)
        assert shapes["params"]["conv2"]["kernel"].shape == (3, 3, 4, 8)
        assert sum(a.size for a in jax.tree.leaves(shapes)) == n_params
        params = jax.tree.map(lambda a: rng.normal(0, 0.2, (4,) + a.shape).astype(np.float32), shapes)
        out, loop, single, more, grads = jax.jit(functools.partial(check, module))(params, g, g2)
        assert out.shape == (4,) + out_shape and single.shape == out_shape[1:]
        np.testing.assert_allclose(out, loop, rtol=1e-5, atol=1e-5)  # vmap = each agent's own net
        np.testing.assert_allclose(single, out[0, 0], rtol=1e-5, atol=1e-5)
        assert not np.allclose(out[0], out[1])  # different agents, different outputs
        assert not np.allclose(more, out[0])  # counts reach the network
        assert all(np.isfinite(a).all() and np.abs(a).sum() > 0 for a in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(CNNCritic().init, jax.random.key(0), jnp.zeros((15, 15)))


@pytest.mark.parametrize("k", [3, 2])
def test_patch_conv_equals_lax_convolution(k):
    """PatchConv (patches @ kernel) is flax's Conv(SAME) with the same parameters, on an
    odd and an even kernel, and so are its gradients."""
    import flax.linen as nn
    from slamjax.rl.cnn import PatchConv

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 7, 6, 5)), jnp.float32)
    ours, ref = PatchConv(4, k), nn.Conv(4, (k, k), padding="SAME")
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                          ref.init(jax.random.key(0), x))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, jax.eval_shape(ours.init, jax.random.key(0), x))
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-4, atol=1e-4)
    g1 = jax.grad(lambda p: jnp.sum(jnp.sin(ours.apply(p, x))))(params)
    g2 = jax.grad(lambda p: jnp.sum(jnp.sin(ref.apply(p, x))))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(15, 15), (16, 16), (7, 5), (4, 9)])
def test_tables_match_reference_exhaustively(size):
    """Every cell x action move, every cell's surround need and the obstacle map, against the
    reference's own functions (no JAX involved)."""
    from slamjax.envs.pursuit import _tables

    x_size, y_size = size
    env = PursuitEnv(n_pursuers=1, n_evaders=1, x_size=x_size, y_size=y_size, n_catch=1)
    penv = _make_ref(env)
    penv.reset(seed=0)
    raw = penv.unwrapped.env
    tb = _tables(x_size, y_size)
    np.testing.assert_array_equal(tb.obstacle, raw.map_matrix == -1)
    agent = raw.pursuer_layer.allies[0]
    for x in range(x_size):
        for y in range(y_size):
            if tb.obstacle[x, y]:
                continue
            c = x * y_size + y
            assert tb.need[c] == raw.need_to_surround(x, y), (x, y)
            for a in range(NUM_ACTIONS):
                agent.set_position(x, y)
                nx, ny = agent.step(a)
                assert tb.next_cell[c, a] == nx * y_size + ny, (x, y, a)
