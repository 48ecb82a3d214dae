"""Pure-JAX cooperative navigation (MPE ``simple_spread``) environment.

This module re-implements, as pure and vectorisable JAX functions, the rules of
the ``simple_spread_v3`` scenario of the ``mpe2`` package (PettingZoo MPE,
version 1.1.1; files ``mpe2/simple_spread/simple_spread.py``,
``mpe2/_mpe_utils/core.py`` and ``mpe2/_mpe_utils/simple_env.py``).  Only the
default configuration of that scenario is reproduced: discrete actions, no
curriculum, ``terminate_on_success=False``, full observability.  No code was
copied; the facts below were read from those files.

The rules (reset, actions, physics, reward, episode end), the documented differences from mpe2,
the optional heterogeneous-reward settings (``reward_split="owner"``, ``nuisance_scale``)
and the layout are written out in ``docs/environments.md``. Agents are on the leading axis of
every per-agent array and the step has no Python loop, so it jit-s and vmap-s over thousands
of environments; float32 by default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.envs._checks import is_tracer as _is_tracer

__all__ = [
    "NUM_ACTIONS",
    "ACTION_NAMES",
    "NavState",
    "NavigationEnv",
    "reset",
    "step",
    "global_obs",
    "agent_observations",
    "validate_actions",
    "REWARD_SPLITS",
    "nuisance_params",
]

NUM_ACTIONS = 5
"""Size of the discrete action space (mpe2 ``Discrete(5)``)."""
ACTION_NAMES = ("noop", "left", "right", "down", "up")
"""Meaning of each discrete action index, as mpe2 maps them."""
_DTYPES = ("float32", "float64")
REWARD_SPLITS = ("shared", "owner")
"""``NavigationEnv.reward_split`` values: mpe2's shared global term, or owner-split coverage."""


@functools.lru_cache(maxsize=64)
def _nuisance_params_cached(n: int, seed: int, features: int, lengthscale: float):
    rng = np.random.default_rng([int(seed), 13, int(n)])
    # phases omega.z have variance 1/lengthscale^2 for z ~ U(-1, 1)^(4n) (var z_j = 1/3):
    # a smooth function that a small critic can represent, with a non-zero mean per agent
    omega = rng.normal(size=(features, 4 * n)) * math.sqrt(3.0 / (4 * n)) / lengthscale
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(features,))
    amp = rng.normal(size=(n, features)) * math.sqrt(2.0 / features)
    for a in (omega, phase, amp):
        a.setflags(write=False)
    return omega, phase, amp


def nuisance_params(n: int, seed: int = 0, features: int = 32, lengthscale: float = 1.0):
    """(omega (K, 4n), phase (K,), amplitude (n, K)) of the random-feature nuisance function
    (float64 NumPy, read-only; the same numbers for the same arguments on every machine)."""
    return _nuisance_params_cached(int(n), int(seed), int(features), float(lengthscale))


class NavState(NamedTuple):
    """State of one environment (a pytree; add leading axes to batch it).

    Attributes:
      agent_pos: ``(n, 2)`` agent positions.
      agent_vel: ``(n, 2)`` agent velocities.
      landmark_pos: ``(n, 2)`` landmark positions.
      t: ``()`` int32 number of steps taken in the episode.
    """

    agent_pos: jax.Array
    agent_vel: jax.Array
    landmark_pos: jax.Array
    t: jax.Array

    @property
    def num_agents(self) -> int:
        """Number of agents n (from the shape of ``agent_pos``)."""
        return self.agent_pos.shape[-2]


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n (number of agents) must be an int >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"n (number of agents) must be >= 1, got {n}")
    return int(n)


def validate_actions(actions, n: int) -> np.ndarray:
    """Check concrete discrete actions and return them as an int32 array.

    ``actions`` must have shape ``(..., n)`` (one action index per agent,
    optional leading batch axes), an integer dtype and values in
    ``{0, 1, 2, 3, 4}``.  Raises ``ValueError`` with an explanation otherwise.
    Use it outside ``jit`` (inside ``jit`` values are clipped instead).
    """
    n = _check_n(n)
    if _is_tracer(actions):
        raise ValueError(
            "validate_actions needs concrete actions; it cannot be used inside "
            "jit/vmap (out-of-range actions are clipped to [0, 4] there)"
        )
    arr = np.asarray(actions)
    if arr.dtype.kind not in "iu":
        raise ValueError(
            "actions must be integer action indices in {0,...,4} "
            f"(noop/left/right/down/up), got dtype {arr.dtype}"
        )
    if arr.ndim < 1 or arr.shape[-1] != n:
        raise ValueError(
            f"actions must have shape (..., {n}) (one action per agent), "
            f"got shape {arr.shape}"
        )
    bad = (arr < 0) | (arr >= NUM_ACTIONS)
    if bad.any():
        raise ValueError(
            f"invalid action index {arr[bad].flat[0]}: actions must lie in "
            f"[0, {NUM_ACTIONS - 1}] ({', '.join(ACTION_NAMES)})"
        )
    return arr.astype(np.int32)


def global_obs(state: NavState) -> jax.Array:
    """Global state observation used in the paper: 2-D positions, ``(4n,)``.

    Layout ``[x_a0, y_a0, ..., x_a(n-1), y_a(n-1), x_l0, y_l0, ...]``: agent
    positions first, then landmark positions.  Works on a single state only
    (``vmap`` it for batches).
    """
    return jnp.concatenate([state.agent_pos.reshape(-1), state.landmark_pos.reshape(-1)])


def agent_observations(state: NavState) -> jax.Array:
    """Per-agent mpe2 observations, ``(n, 6n)`` (the agent axis is leading).

    Row ``i`` is ``[v_i, p_i, q_0 - p_i, ..., q_(n-1) - p_i,
    p_j - p_i for j != i in increasing order, zeros(2 (n-1))]`` exactly as
    mpe2's ``Scenario.observation`` (the last block is the always-zero
    communication of silent agents).  mpe2 returns it as float32.
    """
    pos, vel, lm = state.agent_pos, state.agent_vel, state.landmark_pos
    n = pos.shape[0]
    lm_rel = (lm[None, :, :] - pos[:, None, :]).reshape(n, 2 * n)
    k = np.arange(n - 1)
    others = k[None, :] + (k[None, :] >= np.arange(n)[:, None])  # (n, n-1), j != i
    rel = pos[None, :, :] - pos[:, None, :]  # rel[i, j] = p_j - p_i
    other_rel = jnp.take_along_axis(rel, others[:, :, None], axis=1).reshape(n, 2 * (n - 1))
    comm = jnp.zeros((n, 2 * (n - 1)), pos.dtype)
    return jnp.concatenate([vel, pos, lm_rel, other_rel, comm], axis=1)


@dataclasses.dataclass(frozen=True)
class NavigationEnv:
    """Static (hashable) configuration with pure ``reset`` / ``step`` methods.

    Args:
      n: number of agents (= number of landmarks), ``>= 1``.
      max_steps: episode length (mpe2 ``max_cycles``), default 25.
      local_ratio: weight of the local collision reward, in ``[0, 1]``.
      auto_reset: if true, ``step`` returns a freshly reset state when the
        episode ends (see the module docstring).
      dtype: ``"float32"`` (default) or ``"float64"`` (needs x64 enabled).
      reward_split: ``"shared"`` (mpe2, default) or ``"owner"`` (agent i owns landmark i's
        coverage term; see the module docstring).
      nuisance_scale, nuisance_seed, nuisance_features, nuisance_lengthscale: zero-sum
        nuisance heterogeneity ``c * xi_i(s)`` (0 = off, the default; module docstring).
      The remaining fields are the physics constants of mpe2 (defaults equal
      mpe2's values; changing them breaks parity).

    Example::

        env = NavigationEnv(3)
        state = env.reset(key)
        state, rewards, done = jax.jit(env.step)(key, state, actions)
        # batched: jax.vmap(env.step)(keys, states, actions_batch)
    """

    n: int
    max_steps: int = 25
    local_ratio: float = 0.5
    auto_reset: bool = False
    dtype: str = "float32"
    dt: float = 0.1
    damping: float = 0.25
    sensitivity: float = 5.0
    mass: float = 1.0
    contact_force: float = 100.0
    contact_margin: float = 1e-3
    agent_size: float = 0.15
    landmark_size: float = 0.05
    collision_penalty: float = 1.0
    reward_split: str = "shared"
    nuisance_scale: float = 0.0
    nuisance_seed: int = 0
    nuisance_features: int = 32
    nuisance_lengthscale: float = 1.0

    def __post_init__(self):
        _check_n(self.n)
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, (int, np.integer)) or self.max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {self.max_steps!r}")
        try:
            lr = float(self.local_ratio)
        except (TypeError, ValueError):
            raise ValueError(f"local_ratio must be a float in [0, 1], got {self.local_ratio!r}") from None
        if not 0.0 <= lr <= 1.0:
            raise ValueError(f"local_ratio must be in [0, 1], got {self.local_ratio!r}")
        dtype = np.dtype(self.dtype).name if not isinstance(self.dtype, str) else self.dtype
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        # Normalise to plain Python values so the config stays hashable/static.
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "max_steps", int(self.max_steps))
        object.__setattr__(self, "local_ratio", lr)
        object.__setattr__(self, "auto_reset", bool(self.auto_reset))
        object.__setattr__(self, "dtype", dtype)
        for name in ("dt", "damping", "sensitivity", "mass", "contact_force",
                     "contact_margin", "agent_size", "landmark_size", "collision_penalty"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.mass <= 0 or self.contact_margin <= 0:
            raise ValueError("mass and contact_margin must be > 0")
        if self.reward_split not in REWARD_SPLITS:
            raise ValueError(f"reward_split must be one of {REWARD_SPLITS}, "
                             f"got {self.reward_split!r}")
        try:
            c = float(self.nuisance_scale)
        except (TypeError, ValueError):
            raise ValueError(f"nuisance_scale must be a float >= 0, got {self.nuisance_scale!r}") from None
        if not (math.isfinite(c) and c >= 0.0):
            raise ValueError(f"nuisance_scale must be a finite float >= 0, got {self.nuisance_scale!r}")
        object.__setattr__(self, "nuisance_scale", c)
        for name in ("nuisance_seed", "nuisance_features"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "nuisance_seed" else 1):
                raise ValueError(f"{name} must be an int >= {0 if name == 'nuisance_seed' else 1}, got {v!r}")
            object.__setattr__(self, name, int(v))
        ls = float(self.nuisance_lengthscale)
        if not (math.isfinite(ls) and ls > 0):
            raise ValueError(f"nuisance_lengthscale must be > 0, got {self.nuisance_lengthscale!r}")
        object.__setattr__(self, "nuisance_lengthscale", ls)

    # ------------------------------------------------------------------ helpers
    @property
    def num_actions(self) -> int:
        """Size of each agent's discrete action space (:data:`NUM_ACTIONS`)."""
        return NUM_ACTIONS

    @property
    def obs_dim(self) -> int:
        """Size of one agent's mpe2 observation (``6 n``)."""
        return 6 * self.n

    @property
    def global_obs_dim(self) -> int:
        """Size of :func:`global_obs` (``4 n``)."""
        return 4 * self.n

    def _jdtype(self):
        if self.dtype == "float64" and not jax.config.read("jax_enable_x64"):
            raise ValueError(
                "dtype='float64' needs 64-bit JAX: call "
                "jax.config.update('jax_enable_x64', True) or use `with jax.enable_x64(True):`"
            )
        return jnp.dtype(self.dtype)

    def make_state(self, agent_pos, landmark_pos, agent_vel=None, t=0) -> NavState:
        """Build a state from given positions (e.g. copied from mpe2)."""
        dt = self._jdtype()
        agent_pos = jnp.asarray(agent_pos, dt)
        landmark_pos = jnp.asarray(landmark_pos, dt)
        agent_vel = jnp.zeros_like(agent_pos) if agent_vel is None else jnp.asarray(agent_vel, dt)
        state = NavState(agent_pos, agent_vel, landmark_pos, jnp.asarray(t, jnp.int32))
        self._check_state(state)
        return state

    def _check_state(self, state: NavState) -> None:
        want = (self.n, 2)
        for name in ("agent_pos", "agent_vel", "landmark_pos"):
            shape = tuple(jnp.shape(getattr(state, name)))
            if shape != want:
                raise ValueError(
                    f"state.{name} must have shape {want} for n={self.n} "
                    f"(vmap the env for batches), got {shape}"
                )
        if jnp.shape(state.t) != ():
            raise ValueError(f"state.t must be a scalar, got shape {jnp.shape(state.t)}")

    def _check_actions(self, actions) -> jax.Array:
        if not _is_tracer(actions):
            validate_actions(actions, self.n)  # concrete: full check incl. values
            if np.ndim(actions) != 1:
                raise ValueError(
                    f"actions must have shape ({self.n},) (vmap the env for batches), "
                    f"got shape {np.shape(actions)}"
                )
        else:
            if jnp.shape(actions) != (self.n,):
                raise ValueError(
                    f"actions must have shape ({self.n},) (one action per agent), "
                    f"got shape {jnp.shape(actions)}"
                )
            if not jnp.issubdtype(actions.dtype, jnp.integer):
                raise ValueError(f"actions must be integer action indices, got dtype {actions.dtype}")
        # Inside jit the values are unknown: clip out-of-range indices to [0, 4].
        return jnp.clip(jnp.asarray(actions).astype(jnp.int32), 0, NUM_ACTIONS - 1)

    # ------------------------------------------------------------------ API
    def reset(self, key: jax.Array) -> NavState:
        """Sample an initial state: agents then landmarks ``U(-1,1)^2``, zero velocity."""
        dt = self._jdtype()
        # one draw for agents then landmarks (a single threefry call compiles fastest)
        u = jax.random.uniform(key, (2, self.n, 2), dt, -1.0, 1.0)
        return NavState(u[0], jnp.zeros((self.n, 2), dt), u[1], jnp.zeros((), jnp.int32))

    def rewards(self, state: NavState) -> jax.Array:
        """Per-agent reward of a (post-step) state, shape ``(n,)`` (mpe2's by default)."""
        dt = self._jdtype()
        pos = state.agent_pos.astype(dt)
        lm = state.landmark_pos.astype(dt)
        return self._rewards_xy(pos[:, 0], pos[:, 1], lm[:, 0], lm[:, 1])

    def team_reward(self, state: NavState) -> jax.Array:
        """Team reward ``R = (1 - local_ratio) * global + local_ratio * mean_a local_a`` of a
        (post-step) state, shape ``()``: the mean over agents of mpe2's rewards, and of the
        rewards of every heterogeneous setting (to round-off). The reported return."""
        dt = self._jdtype()
        pos = state.agent_pos.astype(dt)
        lm = state.landmark_pos.astype(dt)
        cov, local = self._terms_xy(pos[:, 0], pos[:, 1], lm[:, 0], lm[:, 1])
        return (jnp.sum(cov) * (1.0 - self.local_ratio)
                + jnp.mean(local) * self.local_ratio).astype(dt)

    def coverage(self, state: NavState) -> jax.Array:
        """Per-landmark coverage ``cov_l = -min_a |p_a - q_l|``, shape ``(n,)``; sums to the
        global term."""
        dt = self._jdtype()
        pos = state.agent_pos.astype(dt)
        lm = state.landmark_pos.astype(dt)
        return self._terms_xy(pos[:, 0], pos[:, 1], lm[:, 0], lm[:, 1])[0]

    def nuisance(self, state: NavState) -> jax.Array:
        """The zero-sum nuisance ``xi(s)``, shape ``(n,)`` (before the scale ``c``)."""
        dt = self._jdtype()
        pos = state.agent_pos.astype(dt)
        lm = state.landmark_pos.astype(dt)
        return self._nuisance_xy(pos[:, 0], pos[:, 1], lm[:, 0], lm[:, 1])

    def _nuisance_xy(self, x, y, lx, ly):
        dt = x.dtype
        n = self.n
        if n == 1:
            return jnp.zeros((1,), dt)
        omega, phase, amp = nuisance_params(n, self.nuisance_seed, self.nuisance_features,
                                            self.nuisance_lengthscale)
        # z in global_obs layout: agent (x, y) pairs, then landmark (x, y) pairs
        z = jnp.concatenate([jnp.stack([x, y], -1).reshape(-1), jnp.stack([lx, ly], -1).reshape(-1)])
        feats = jnp.cos(jnp.asarray(omega, dt) @ z + jnp.asarray(phase, dt))
        f = jnp.asarray(amp, dt) @ feats
        return (f - jnp.mean(f)) * jnp.asarray(math.sqrt(n / (n - 1.0)), dt)

    # The physics and rewards below work on separate x / y component arrays:
    # under vmap this keeps the tiny trailing axis of size 2 out of the
    # pairwise (n, n) computations, which is ~2x faster on CPU than (n, n, 2).
    def _offdiag(self):
        return ~jnp.eye(self.n, dtype=bool)

    def _pair_dist(self, x, y):
        """Pairwise ``dx[a, b] = x_a - x_b``, ``dy``, distances (1 on the diagonal)."""
        dx = x[:, None] - x[None, :]
        dy = y[:, None] - y[None, :]
        sq = dx * dx + dy * dy
        # sqrt of a safe value on the diagonal (keeps gradients finite too)
        dist = jnp.sqrt(jnp.where(self._offdiag(), sq, 1.0))
        return dx, dy, dist

    def _terms_xy(self, x, y, lx, ly):
        """(coverage per landmark (n,), local collision reward per agent (n,))."""
        dt = x.dtype
        d_al = jnp.sqrt(jnp.square(x[:, None] - lx[None, :]) + jnp.square(y[:, None] - ly[None, :]))
        cov = -jnp.min(d_al, axis=0)  # per landmark: min over agents
        _, _, dist = self._pair_dist(x, y)
        # mpe2 is_collision: dist < size_a + size_b (strict), self excluded
        collisions = jnp.sum((dist < 2.0 * self.agent_size) & self._offdiag(), axis=1).astype(dt)
        local_rew = -self.collision_penalty * collisions
        return cov, local_rew

    def _rewards_xy(self, x, y, lx, ly):
        dt = x.dtype
        cov, local_rew = self._terms_xy(x, y, lx, ly)
        if self.reward_split == "owner":  # agent i owns landmark i: n * cov_i sums to n * global / n
            glob = cov * jnp.asarray(self.n, dt)
        else:
            glob = jnp.sum(cov)  # sum over landmarks of min over agents (mpe2's global term)
        rew = (glob * (1.0 - self.local_ratio) + local_rew * self.local_ratio).astype(dt)
        if self.nuisance_scale != 0.0:
            rew = rew + jnp.asarray(self.nuisance_scale, dt) * self._nuisance_xy(x, y, lx, ly)
        return rew

    def step(self, key: jax.Array, state: NavState, actions) -> tuple[NavState, jax.Array, jax.Array]:
        """One synchronous step of all agents.

        Args:
          key: PRNG key (only used when ``auto_reset`` is on).
          state: current :class:`NavState` (single environment).
          actions: ``(n,)`` integer action indices in ``[0, 4]``.

        Returns:
          ``(next_state, rewards (n,), done ())``.
        """
        dt_ = self._jdtype()
        self._check_state(state)
        act = self._check_actions(actions)
        pos = state.agent_pos.astype(dt_)
        vel = state.agent_vel.astype(dt_)
        lm = state.landmark_pos.astype(dt_)
        x, y, vx, vy = pos[:, 0], pos[:, 1], vel[:, 0], vel[:, 1]

        # discrete action -> control (mpe2 _set_action): 1 -x, 2 +x, 3 -y, 4 +y
        ux = ((act == 2).astype(dt_) - (act == 1).astype(dt_)) * self.sensitivity
        uy = ((act == 4).astype(dt_) - (act == 3).astype(dt_)) * self.sensitivity

        # soft contact forces between agents (mpe2 World.get_collision_force)
        dx, dy, dist = self._pair_dist(x, y)
        k = self.contact_margin
        penetration = jnp.logaddexp(0.0, -(dist - 2.0 * self.agent_size) / k) * k
        valid = self._offdiag() & (dist > 0)
        scale = jnp.where(valid, self.contact_force * penetration / jnp.where(valid, dist, 1.0), 0.0)
        fx = ux + jnp.sum(scale * dx, axis=1)
        fy = uy + jnp.sum(scale * dy, axis=1)

        # mpe2 World.integrate_state: position first (old velocity), then velocity
        nx, ny = x + vx * self.dt, y + vy * self.dt
        nvx = vx * (1.0 - self.damping) + (fx / self.mass) * self.dt
        nvy = vy * (1.0 - self.damping) + (fy / self.mass) * self.dt

        t = state.t.astype(jnp.int32) + 1
        rew = self._rewards_xy(nx, ny, lm[:, 0], lm[:, 1])
        next_state = NavState(jnp.stack([nx, ny], axis=-1), jnp.stack([nvx, nvy], axis=-1), lm, t)
        done = t >= self.max_steps
        if self.auto_reset:
            fresh = self.reset(key)
            next_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, next_state)
        return next_state, rew, done

    def global_obs(self, state: NavState) -> jax.Array:
        """The paper's global state of ``state``, ``(4n,)``: see :func:`global_obs`."""
        return global_obs(state)

    def observations(self, state: NavState) -> jax.Array:
        """Every agent's mpe2 observation of ``state``, ``(n, 6n)``: see
        :func:`agent_observations`."""
        return agent_observations(state)


# ---------------------------------------------------------------------- functional
def reset(key: jax.Array, n: int, *, dtype: str = "float32") -> NavState:
    """Functional form of :meth:`NavigationEnv.reset` (``n`` must be static)."""
    return NavigationEnv(n, dtype=dtype).reset(key)


def step(
    key: jax.Array,
    state: NavState,
    actions,
    *,
    max_steps: int = 25,
    local_ratio: float = 0.5,
    auto_reset: bool = False,
) -> tuple[NavState, jax.Array, jax.Array]:
    """Functional form of :meth:`NavigationEnv.step`.

    ``n`` and the dtype are read from ``state``; the keyword arguments are
    static configuration (under ``jax.jit`` pass them via ``static_argnames``
    or close over them).
    """
    n = jnp.shape(state.agent_pos)[0] if jnp.ndim(state.agent_pos) == 2 else None
    if n is None:
        raise ValueError(
            f"state.agent_pos must have shape (n, 2), got {jnp.shape(state.agent_pos)} "
            "(vmap step for batches)"
        )
    dtype = jnp.asarray(state.agent_pos).dtype.name
    env = NavigationEnv(n, max_steps=max_steps, local_ratio=local_ratio,
                        auto_reset=auto_reset, dtype=dtype if dtype in _DTYPES else "float32")
    return env.step(key, state, actions)
