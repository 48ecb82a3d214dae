"""Pure-JAX pursuit-evasion environment with the rules of PettingZoo SISL ``pursuit_v5``.

This module re-implements, as pure and vectorisable JAX functions, the rules of the SISL pursuit
environment of PettingZoo 1.27 (``pettingzoo.sisl.pursuit_v5``; files
``pettingzoo/sisl/pursuit/pursuit.py`` (AEC ``raw_env``), ``pettingzoo/sisl/pursuit/pursuit_base.py``
(``Pursuit``), ``pettingzoo/sisl/pursuit/utils/{agent_utils,agent_layer,discrete_agent,
two_d_maps,controllers}.py`` and the AEC -> parallel conversion
``pettingzoo/utils/conversions.py`` (``aec_to_parallel_wrapper``)).  No code was copied: the
rules below were read from those files and written anew.  The defaults are the paper's pursuit
settings (Lu et al., NeurIPS 2022, supplement C.3), which differ from PettingZoo's defaults
(16 x 16, ``shared_reward=True``, ``surround=True``, ``tag_reward=0.01``, 500 cycles).

The rules (grid and map, reset, the pursuers' sub-steps and tag rewards, captures, the
evaders' moves, episode end), the choices the paper leaves open (``urgency_reward = 0``,
``max_cycles = 100``, 8 pursuers and 30 evaders), the observations and the documented
differences from the reference are written out in ``docs/environments.md``. Pursuers are on the
leading axis; the step is gathers and comparisons with no Python loop, so it jit-s and vmap-s
over thousands of environments.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.envs._checks import check_int as _check_int, is_tracer as _is_tracer

__all__ = [
    "NUM_ACTIONS",
    "ACTION_NAMES",
    "MOVES",
    "PursuitState",
    "PursuitStep",
    "PursuitEnv",
    "rectangle_map",
]

NUM_ACTIONS = 5
"""Size of the discrete action space (``Discrete(5)``)."""
ACTION_NAMES = ("x-1", "x+1", "y+1", "y-1", "stay")
"""Meaning of each action index (the reference's ``motion_range``)."""
MOVES = np.array([[-1, 0], [1, 0], [0, 1], [0, -1], [0, 0]], dtype=np.int32)
"""Displacement ``(dx, dy)`` of each action; the first four rows are also the neighbour order of
the tag reward and of the surround test."""
MOVES.setflags(write=False)
_DTYPES = ("float32", "float64")


def rectangle_map(x_size: int, y_size: int, x_buffer: float = 0.3, y_buffer: float = 0.2) -> np.ndarray:
    """Obstacle mask ``(x_size, y_size)`` (bool) of the reference's centred rectangle.

    Cell ``(i, j)`` is an obstacle iff ``x_buffer < i / x_size < 1 - x_buffer`` and
    ``y_buffer < j / y_size < 1 - y_buffer`` (strict inequalities, float64)."""
    fx = np.arange(x_size, dtype=np.float64) / x_size
    fy = np.arange(y_size, dtype=np.float64) / y_size
    in_x = (fx > x_buffer) & (fx < 1.0 - x_buffer)
    in_y = (fy > y_buffer) & (fy < 1.0 - y_buffer)
    return in_x[:, None] & in_y[None, :]


class _Tables(NamedTuple):
    obstacle: np.ndarray  # (X, Y) bool
    next_cell: np.ndarray  # (X*Y, 5) int32: flat cell after each action (stay if blocked)
    tag_nbr: np.ndarray  # (X*Y, 4) int32: flat clipped neighbours (tag reward)
    sur_nbr: np.ndarray  # (X*Y, 4) int32: flat unclipped neighbours, -1 off-grid (surround)
    need: np.ndarray  # (X*Y,) int32: reference's need_to_surround
    block: np.ndarray  # (X*Y, 5) int32: cell and its in-grid neighbours (spawn exclusion)


@functools.lru_cache(maxsize=16)
def _tables(x_size: int, y_size: int) -> _Tables:
    """Static lookup tables of one grid (NumPy, read-only, cached)."""
    obstacle = rectangle_map(x_size, y_size)
    xs, ys = np.meshgrid(np.arange(x_size), np.arange(y_size), indexing="ij")
    x, y = xs.reshape(-1), ys.reshape(-1)  # flat cell c = x * y_size + y
    own = x * y_size + y
    nx, ny = x[:, None] + MOVES[None, :, 0], y[:, None] + MOVES[None, :, 1]  # (XY, 5)
    inside = (nx >= 0) & (nx < x_size) & (ny >= 0) & (ny < y_size)
    cx, cy = np.clip(nx, 0, x_size - 1), np.clip(ny, 0, y_size - 1)
    ok = inside & ~obstacle[cx, cy]
    next_cell = np.where(ok, cx * y_size + cy, own[:, None])
    tag_nbr = (cx * y_size + cy)[:, :4]
    sur_nbr = np.where(inside, cx * y_size + cy, -1)[:, :4]
    # need_to_surround: 4 - border x - border y - obstacle neighbours strictly inside (0 < .)
    need = 4 - ((x == 0) | (x == x_size - 1)) - ((y == 0) | (y == y_size - 1))
    strict = (nx > 0) & (nx < x_size) & (ny > 0) & (ny < y_size)
    need = need - np.sum((strict & obstacle[cx, cy])[:, :4], axis=1)
    block = np.where(inside, cx * y_size + cy, own[:, None])
    out = _Tables(obstacle, next_cell.astype(np.int32), tag_nbr.astype(np.int32),
                  sur_nbr.astype(np.int32), need.astype(np.int32), block.astype(np.int32))
    for a in out:
        a.setflags(write=False)
    return out


class PursuitState(NamedTuple):
    """State of one environment (a pytree; add leading axes to batch it).

    Attributes:
      pursuer_pos: ``(n_pursuers, 2)`` int32 cells ``(x, y)``.
      evader_pos: ``(n_evaders, 2)`` int32 cells (a captured evader keeps its last cell).
      evader_alive: ``(n_evaders,)`` bool, False once captured.
      t: ``()`` int32 number of steps taken in the episode.
    """

    pursuer_pos: jax.Array
    evader_pos: jax.Array
    evader_alive: jax.Array
    t: jax.Array


class PursuitStep(NamedTuple):
    """Everything one step produces (:meth:`PursuitEnv.step_full`)."""

    state: PursuitState  # next state (a fresh reset state if auto_reset and done)
    rewards: jax.Array  # (n_pursuers,)
    terminated: jax.Array  # () bool: no evader left (and not truncated)
    truncated: jax.Array  # () bool: t reached max_cycles
    captured: jax.Array  # (n_evaders,) bool: evaders captured in this step
    capturer: jax.Array  # (n_pursuers,) bool: pursuers that earned the capture reward


def _uniform_actions(key: jax.Array, n: int) -> jax.Array:
    """``n`` uniform actions in ``{0, ..., 4}`` from one 32-bit word each: the top 24 bits
    ``h`` give ``floor(5 h / 2^24)`` (probabilities within ``1 / 2^24`` of 1/5).  Half the
    random words of ``jax.random.randint``, which draws two per value; the random bits are
    most of the cost of a step."""
    bits = jax.random.bits(key, (n,), jnp.uint32)
    return (((bits >> 8) * jnp.uint32(NUM_ACTIONS)) >> 24).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class PursuitEnv:
    """Static (hashable) configuration with pure ``reset`` / ``step`` methods.

    Args:
      n_pursuers, n_evaders: numbers of agents (pursuers learn, evaders move at random).
      x_size, y_size: grid size (default 15 x 15, the paper's).
      max_cycles: episode length (truncation), default 100 (module docstring).
      shared_reward: False (default, the paper's decentralized setting): per-pursuer rewards;
        True: every pursuer gets the mean (PettingZoo's default).
      n_catch: pursuers needed on an evader's cell to capture it (``surround=False``).
      surround: capture by occupying every open neighbour instead (PettingZoo's default).
      tag_reward, catch_reward, urgency_reward: reward constants (0.1, 5, 0).
      obs_range: side of the local view of :meth:`observations` (odd, default 7).
      freeze_evaders: evaders never move.
      auto_reset: ``step`` returns a fresh state when the episode ends.
      dtype: reward / observation dtype, ``"float32"`` (default) or ``"float64"``.

    Example::

        env = PursuitEnv(n_pursuers=4, n_evaders=4)
        state = env.reset(key)
        state, rewards, done = jax.jit(env.step)(key, state, actions)
        # batched: jax.vmap(env.step)(keys, states, actions_batch)
    """

    n_pursuers: int = 8
    n_evaders: int = 30
    x_size: int = 15
    y_size: int = 15
    max_cycles: int = 100
    shared_reward: bool = False
    n_catch: int = 2
    surround: bool = False
    tag_reward: float = 0.1
    catch_reward: float = 5.0
    urgency_reward: float = 0.0
    obs_range: int = 7
    freeze_evaders: bool = False
    auto_reset: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        for name, lo in (("n_pursuers", 1), ("n_evaders", 1), ("x_size", 2), ("y_size", 2),
                         ("max_cycles", 1), ("n_catch", 1), ("obs_range", 1)):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), lo))
        if self.obs_range % 2 != 1:
            raise ValueError(f"obs_range must be odd (a view centred on the pursuer), got {self.obs_range}")
        for name in ("shared_reward", "surround", "freeze_evaders", "auto_reset"):
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {v!r}")
            object.__setattr__(self, name, bool(v))
        if not self.surround and self.n_catch > self.n_pursuers:
            raise ValueError(
                f"n_catch={self.n_catch} > n_pursuers={self.n_pursuers}: no evader could ever be "
                "captured (a capture needs n_catch pursuers on the evader's cell)")
        for name in ("tag_reward", "catch_reward", "urgency_reward"):
            try:
                v = float(getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a float, got {getattr(self, name)!r}") from None
            if not np.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
            object.__setattr__(self, name, v)
        dtype = np.dtype(self.dtype).name if not isinstance(self.dtype, str) else self.dtype
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        free = self.num_free_cells
        for kind in ("n_pursuers", "n_evaders"):
            n = getattr(self, kind)
            if free < 5 * (n - 1) + 1:
                raise ValueError(
                    f"grid too small to spawn {kind}={n}: {self.x_size} x {self.y_size} has "
                    f"{free} free cells, and each placed agent can exclude 5 of them (its cell "
                    f"and 4 neighbours), so spawning is only guaranteed with >= 5 (n - 1) + 1 = "
                    f"{5 * (n - 1) + 1} free cells")

    # ------------------------------------------------------------------ helpers
    @property
    def n(self) -> int:
        """Number of learning agents (= ``n_pursuers``)."""
        return self.n_pursuers

    @property
    def num_actions(self) -> int:
        """Size of each pursuer's discrete action space (:data:`NUM_ACTIONS`)."""
        return NUM_ACTIONS

    @property
    def obstacles(self) -> np.ndarray:
        """Obstacle mask ``(x_size, y_size)`` bool (read-only NumPy)."""
        return _tables(self.x_size, self.y_size).obstacle

    @property
    def num_free_cells(self) -> int:
        """Number of grid cells without an obstacle."""
        return int(self.x_size * self.y_size - self.obstacles.sum())

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """Shape of :meth:`global_state`: ``(3, x_size, y_size)``."""
        return (3, self.x_size, self.y_size)

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        """Shape of one pursuer's local view: ``(3, obs_range, obs_range)``."""
        return (3, self.obs_range, self.obs_range)

    def _jdtype(self):
        if self.dtype == "float64" and not jax.config.read("jax_enable_x64"):
            raise ValueError("dtype='float64' needs 64-bit JAX: call "
                             "jax.config.update('jax_enable_x64', True)")
        return jnp.dtype(self.dtype)

    def _flat(self, pos):
        return pos[..., 0] * self.y_size + pos[..., 1]

    def _unflat(self, flat):
        return jnp.stack([flat // self.y_size, flat % self.y_size], axis=-1).astype(jnp.int32)

    def _check_actions(self, actions, n, what) -> jax.Array:
        if not _is_tracer(actions):
            arr = np.asarray(actions)
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{what} must be integer action indices in {{0,...,4}} "
                                 f"({', '.join(ACTION_NAMES)}), got dtype {arr.dtype}")
            if arr.shape != (n,):
                raise ValueError(f"{what} must have shape ({n},) (vmap the env for batches), "
                                 f"got shape {arr.shape}")
            bad = (arr < 0) | (arr >= NUM_ACTIONS)
            if bad.any():
                raise ValueError(f"invalid action index {arr[bad].flat[0]} in {what}: actions "
                                 f"must lie in [0, 4] ({', '.join(ACTION_NAMES)})")
        else:
            if jnp.shape(actions) != (n,):
                raise ValueError(f"{what} must have shape ({n},), got {jnp.shape(actions)}")
            if not jnp.issubdtype(actions.dtype, jnp.integer):
                raise ValueError(f"{what} must be integer action indices, got {actions.dtype}")
        return jnp.clip(jnp.asarray(actions).astype(jnp.int32), 0, NUM_ACTIONS - 1)

    def _check_state(self, state: PursuitState) -> None:
        for name, want in (("pursuer_pos", (self.n_pursuers, 2)), ("evader_pos", (self.n_evaders, 2)),
                           ("evader_alive", (self.n_evaders,)), ("t", ())):
            shape = tuple(jnp.shape(getattr(state, name)))
            if shape != want:
                raise ValueError(f"state.{name} must have shape {want} for this env (vmap the "
                                 f"env for batches), got {shape}")

    def make_state(self, pursuer_pos, evader_pos, evader_alive=None, t=0) -> PursuitState:
        """Build a state from given cells (e.g. read out of the reference); checks them."""
        pp = np.asarray(pursuer_pos)
        ep = np.asarray(evader_pos)
        alive = np.ones(self.n_evaders, bool) if evader_alive is None else np.asarray(evader_alive, bool)
        for name, p in (("pursuer_pos", pp), ("evader_pos", ep)):
            if p.dtype.kind not in "iu":
                raise ValueError(f"{name} must hold integer cells, got dtype {p.dtype}")
            if p.ndim != 2 or p.shape[1] != 2:
                raise ValueError(f"{name} must have shape (n, 2), got {p.shape}")
            if ((p < 0) | (p >= np.array([self.x_size, self.y_size]))).any():
                raise ValueError(f"{name} has a cell outside the {self.x_size} x {self.y_size} grid")
            if self.obstacles[p[:, 0], p[:, 1]].any():
                raise ValueError(f"{name} has an agent on an obstacle cell")
        state = PursuitState(jnp.asarray(pp, jnp.int32), jnp.asarray(ep, jnp.int32),
                             jnp.asarray(alive), jnp.asarray(t, jnp.int32))
        self._check_state(state)
        return state

    # ------------------------------------------------------------------ reset
    def _spawn(self, key, n):
        """Sequential uniform placement among free cells not equal / 4-adjacent to earlier ones."""
        tb = _tables(self.x_size, self.y_size)
        free = jnp.asarray(~tb.obstacle.reshape(-1))
        block = jnp.asarray(tb.block)

        def place(blocked, k):
            ok = free & ~blocked
            rank = jax.random.randint(k, (), 0, jnp.sum(ok))  # uniform among admissible cells
            cell = jnp.argmax(jnp.cumsum(ok) > rank)
            return blocked.at[block[cell]].set(True), cell

        _, cells = jax.lax.scan(place, jnp.zeros_like(free), jax.random.split(key, n))
        return self._unflat(cells)

    def reset(self, key: jax.Array) -> PursuitState:
        """Initial state: pursuers then evaders placed by the reference's spawn rule."""
        kp, ke = jax.random.split(key)
        return PursuitState(self._spawn(kp, self.n_pursuers), self._spawn(ke, self.n_evaders),
                            jnp.ones((self.n_evaders,), bool), jnp.zeros((), jnp.int32))

    # ------------------------------------------------------------------ step
    def _tag_counts(self, p_flat, e_flat, alive):
        """Alive evaders on the 4 clipped neighbour cells of each pursuer cell, ``(n_p,)``."""
        nbr = jnp.asarray(_tables(self.x_size, self.y_size).tag_nbr)[p_flat]  # (n_p, 4)
        hit = (nbr[:, :, None] == e_flat[None, None, :]) & alive[None, None, :]
        return jnp.sum(hit, axis=(1, 2), dtype=jnp.int32)

    def _captures(self, p_flat, e_flat, alive):
        """(captured evaders (n_e,), pursuers earning the capture reward (n_p,))."""
        if not self.surround:
            same = e_flat[:, None] == p_flat[None, :]  # (n_e, n_p)
            captured = alive & (jnp.sum(same, axis=1) >= self.n_catch)
            capturer = jnp.any(same & captured[:, None], axis=0)
            return captured, capturer
        tb = _tables(self.x_size, self.y_size)
        nbr = jnp.asarray(tb.sur_nbr)[e_flat]  # (n_e, 4), -1 off-grid
        on = nbr[:, :, None] == p_flat[None, None, :]  # (n_e, 4, n_p)
        occupied = jnp.sum(jnp.any(on, axis=2), axis=1)
        captured = alive & (occupied == jnp.asarray(tb.need)[e_flat])
        capturer = jnp.any(on & captured[:, None, None], axis=(0, 1))
        return captured, capturer

    def step_full(self, key: jax.Array, state: PursuitState, actions,
                  evader_actions=None) -> PursuitStep:
        """One parallel step (all pursuer sub-steps, captures, evader moves); see the module
        docstring.  ``evader_actions``: ``(n_evaders,)`` ints, or None to draw them from
        ``key``."""
        dt = self._jdtype()
        self._check_state(state)
        act = self._check_actions(actions, self.n_pursuers, "actions")
        if evader_actions is not None and not self.freeze_evaders:
            evader_actions = self._check_actions(evader_actions, self.n_evaders, "evader_actions")
        tb = _tables(self.x_size, self.y_size)
        next_cell = jnp.asarray(tb.next_cell)
        n_p = self.n_pursuers

        alive = state.evader_alive.astype(bool)
        e_flat = self._flat(state.evader_pos.astype(jnp.int32))
        p_old = self._flat(state.pursuer_pos.astype(jnp.int32))
        p_new = next_cell[p_old, act]

        # tag rewards summed over the n_p sub-steps: pursuer j sits j sub-steps at its old cell
        j = jnp.arange(n_p, dtype=jnp.int32)
        tag_sum = j * self._tag_counts(p_old, e_flat, alive) + (n_p - j) * self._tag_counts(p_new, e_flat, alive)
        captured, capturer = self._captures(p_new, e_flat, alive)
        alive_new = alive & ~captured

        if self.auto_reset:
            key, k_reset = jax.random.split(key)
        if self.freeze_evaders:
            ev_act = jnp.full((self.n_evaders,), NUM_ACTIONS - 1, jnp.int32)
        elif evader_actions is None:
            ev_act = _uniform_actions(key, self.n_evaders)
        else:
            ev_act = evader_actions
        e_new = jnp.where(alive_new, next_cell[e_flat, ev_act], e_flat)

        rewards = (jnp.asarray(self.tag_reward / n_p, dt) * tag_sum.astype(dt)
                   + jnp.asarray(self.catch_reward, dt) * capturer.astype(dt)
                   + jnp.asarray(self.urgency_reward, dt))
        if self.shared_reward:
            rewards = jnp.broadcast_to(jnp.mean(rewards), rewards.shape)

        t = state.t.astype(jnp.int32) + 1
        truncated = t >= self.max_cycles
        terminated = ~jnp.any(alive_new) & ~truncated
        next_state = PursuitState(self._unflat(p_new), self._unflat(e_new), alive_new, t)
        if self.auto_reset:
            fresh = self.reset(k_reset)
            done = terminated | truncated
            next_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, next_state)
        return PursuitStep(next_state, rewards, terminated, truncated, captured, capturer)

    def step(self, key: jax.Array, state: PursuitState, actions,
             evader_actions=None) -> tuple[PursuitState, jax.Array, jax.Array]:
        """``(next_state, rewards (n_pursuers,), done ())`` with ``done = terminated |
        truncated`` (the navigation env's interface); :meth:`step_full` has the rest."""
        out = self.step_full(key, state, actions, evader_actions)
        return out.state, out.rewards, out.terminated | out.truncated

    # ------------------------------------------------------------------ observations
    def _count_grid(self, pos, weight):
        dt = self._jdtype()
        ox = (pos[:, 0:1] == jnp.arange(self.x_size)[None, :]).astype(dt)  # (n, X)
        oy = (pos[:, 1:2] == jnp.arange(self.y_size)[None, :]).astype(dt)  # (n, Y)
        return jnp.einsum("nx,ny->xy", ox * weight.astype(dt)[:, None], oy)

    def global_state(self, state: PursuitState) -> jax.Array:
        """``(3, x_size, y_size)``: counts of pursuers, counts of alive evaders, obstacles."""
        dt = self._jdtype()
        pur = self._count_grid(state.pursuer_pos, jnp.ones((self.n_pursuers,), bool))
        eva = self._count_grid(state.evader_pos, state.evader_alive)
        return jnp.stack([pur, eva, jnp.asarray(self.obstacles, dt)])

    #: alias with the navigation env's method name (the shape differs: an image here).
    global_obs = global_state

    def observations(self, state: PursuitState, global_state=None) -> jax.Array:
        """Local views ``(n_pursuers, 3, obs_range, obs_range)`` (module docstring).
        ``global_state``: :meth:`global_state` of ``state`` if the caller has it already."""
        r = self.obs_range // 2
        g = self.global_state(state) if global_state is None else global_state
        pad_value = jnp.asarray([0, 0, 1], g.dtype)[:, None, None]  # outside = obstacle
        big = jnp.pad(g - pad_value, ((0, 0), (r, r), (r, r))) + pad_value

        def view(p):
            # start indices of one dtype (a Python 0 becomes int64 under jax_enable_x64)
            return jax.lax.dynamic_slice(big, (jnp.zeros((), p.dtype), p[0], p[1]),
                                         (3, self.obs_range, self.obs_range))

        return jax.vmap(view)(state.pursuer_pos.astype(jnp.int32))

    def terminated(self, state: PursuitState) -> jax.Array:
        """Whether a (non-reset) state is terminal: no evader alive and not truncated."""
        return ~jnp.any(state.evader_alive) & (state.t < self.max_cycles)

    def truncated(self, state: PursuitState) -> jax.Array:
        """Whether the episode of ``state`` hit ``max_cycles`` (truncation; it takes precedence
        over termination)."""
        return state.t >= self.max_cycles
