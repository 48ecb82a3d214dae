"""On-policy data collection on the cooperative-navigation environment.

One *iteration* of every algorithm in :mod:`slamjax.rl` collects one full episode
(``env.max_steps`` = 25 steps, the MPE default) in each of ``num_envs`` parallel environments:
a vmapped ``reset`` followed by a ``lax.scan`` over the steps, in which all n agents sample
their actions from their own policies π_{θ_i}(·|s) at the same global state s.  Episodes are
aligned with iterations, so the learning curve is the undiscounted return of exactly the
episodes the update used.

State features: every transition stores ``obs`` = [agent positions, landmark positions, agent
velocities] (6n numbers); its first 4n entries are exactly ``global_obs`` (the paper's 4n-dim
state). Which slice the actors and the critics read is set by the algorithm's configuration
(``ACConfig.actor_velocities`` / ``critic_velocities``; see :mod:`slamjax.rl.core` for why the
critics need the velocities under mpe2's integration order).

Time limit: MPE ends an episode by *truncation* after 25 steps; the global state carries no
clock, so the transition into the last state is bootstrapped like any other (no ``done`` mask
in the TD targets).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.envs.navigation import NUM_ACTIONS, NavigationEnv, global_obs
from slamjax.rl.nets import Actor, apply_agents

__all__ = ["Transition", "collect", "episode_return", "random_policy_return", "state_features",
           "team_reward_std", "nuisance_scale"]


class Transition(NamedTuple):
    """A batch of transitions; leading axes (T, E) = (steps, environments).

    obs, next_obs: (T, E, 6n) state features s, s' (see :func:`state_features`).
    actions: (T, E, n) int32 joint action a.
    rewards: (T, E, n) local rewards R_i(s, a). logp: (T, E, n) log π_i(a_i|s) of the
    behaviour policy (used by PPO's ratio).
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_obs: jax.Array
    logp: jax.Array


def state_features(state) -> jax.Array:
    """[agent positions (2n), landmark positions (2n), agent velocities (2n)] of one state:
    ``global_obs(state)`` (4n) followed by the velocities."""
    return jnp.concatenate([global_obs(state), state.agent_vel.reshape(-1)])


def _policy(actor: Actor, actor_params, obs, key):
    """Sample every agent's action at the states ``obs`` (E, 4n) -> actions (E, n), logp."""
    logits = apply_agents(actor, actor_params, obs)  # (n, E, A)
    logits = jnp.swapaxes(logits, 0, 1)  # (E, n, A)
    actions = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], axis=-1)[..., 0]
    return actions, logp


def collect(env: NavigationEnv, actor: Actor, actor_params, key, num_envs: int,
            actor_dim: int | None = None) -> Transition:
    """One episode in each of ``num_envs`` environments with the current joint policy.

    The actors read the first ``actor_dim`` state features (default 4n: positions only).

    ``actor_params=None`` samples uniformly random actions (the random-policy baseline).
    Pure; jit/vmap-able.
    """
    k_reset, k_steps = jax.random.split(key)
    states = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
    n = env.n
    actor_dim = 4 * n if actor_dim is None else int(actor_dim)

    def body(states, k):
        k_act, k_env = jax.random.split(k)
        obs = jax.vmap(state_features)(states)
        if actor_params is None:
            actions = jax.random.randint(k_act, (num_envs, n), 0, NUM_ACTIONS, jnp.int32)
            logp = jnp.full((num_envs, n), -np.log(NUM_ACTIONS), obs.dtype)
        else:
            actions, logp = _policy(actor, actor_params, obs[:, :actor_dim], k_act)
        states, rewards, _ = jax.vmap(env.step)(jax.random.split(k_env, num_envs), states,
                                                actions)
        next_obs = jax.vmap(state_features)(states)
        return states, Transition(obs, actions, rewards, next_obs, logp)

    _, traj = jax.lax.scan(body, states, jax.random.split(k_steps, env.max_steps))
    return traj


def episode_return(traj: Transition) -> jax.Array:
    """Mean over environments of the undiscounted episode return of the team-average reward
    R̄ = (1/n) Σ_i R_i (the paper's "averaged reward")."""
    return jnp.mean(jnp.sum(jnp.mean(traj.rewards, axis=-1), axis=0))


@functools.lru_cache(maxsize=32)
def _random_returns_fn(n: int, num_envs: int, max_steps: int, local_ratio: float):
    env = NavigationEnv(n, max_steps=max_steps, local_ratio=local_ratio)
    return jax.jit(lambda k: episode_return(collect(env, Actor(), None, k, num_envs)))


def random_policy_return(n: int, key=None, num_envs: int = 256, max_steps: int = 25,
                         local_ratio: float = 0.5) -> float:
    """Average episode return of the uniformly random joint policy over ``num_envs`` episodes
    (the reference a learner must beat)."""
    key = jax.random.key(0) if key is None else key
    return float(_random_returns_fn(int(n), int(num_envs), int(max_steps),
                                    float(local_ratio))(key))


@functools.lru_cache(maxsize=32)
def _team_std_fn(n: int, num_envs: int, max_steps: int, local_ratio: float):
    env = NavigationEnv(n, max_steps=max_steps, local_ratio=local_ratio)

    def fn(k):
        traj = collect(env, Actor(), None, k, num_envs)
        return jnp.std(jnp.mean(traj.rewards, axis=-1))

    return jax.jit(fn)


@functools.lru_cache(maxsize=64)
def team_reward_std(n: int, key_seed: int = 0, num_envs: int = 1024, max_steps: int = 25,
                    local_ratio: float = 0.5) -> float:
    """std(R) of the per-step team reward R = (1/n) Σ_i R_i under the uniformly random joint
    policy, over all steps of ``num_envs`` episodes from ``jax.random.key(key_seed)``
    (mpe2's rewards; the heterogeneous settings have the same R). Deterministic and cached:
    the unit of the nuisance scale c (issue 13: c ∈ {0, 0.5, 1}·std(R))."""
    return float(_team_std_fn(int(n), int(num_envs), int(max_steps), float(local_ratio))(
        jax.random.key(int(key_seed))))


def nuisance_scale(n: int, relative: float, *, max_steps: int = 25,
                   local_ratio: float = 0.5) -> float:
    """Absolute nuisance scale c = ``relative`` · std(R) (:func:`team_reward_std`) for
    ``ACConfig(nuisance_scale=...)`` / ``NavigationEnv(nuisance_scale=...)``."""
    relative = float(relative)
    if not (np.isfinite(relative) and relative >= 0):
        raise ValueError(f"relative nuisance scale must be a finite float >= 0, got {relative}")
    if relative == 0.0:
        return 0.0
    return relative * team_reward_std(int(n), max_steps=int(max_steps),
                                      local_ratio=float(local_ratio))
