"""Controls of every actor-critic comparison (DESIGN §7, issue 13): the two ends between which
every consensus rule lies.

* **No communication** (``"local"`` critic rule; algorithms ``nocomm_ac``, ``nocomm_ppo``):
  each agent takes ``critic_steps`` local gradient steps on its own TD loss (local reward R_i)
  and reward regression, and never talks to anyone — what consensus has to beat.
* **Centralized critic** (``"central"`` rule; ``central_ac``, ``central_ppo``): one critic
  fitted to the team reward R̄ = (1/n) Σ_i R_i by the same plain gradient step, held by every
  agent (exact averaging: the first step averages the independent initial critics, after that
  all copies are equal and every agent's gradient is the same). This is the ideal a consensus
  rule approximates (the "perfect averaging" control); it needs an all-reduce, not gossip.

:func:`central_critic_step` is also the reference critic of ``ACConfig.track_central`` (one
copy, agent axis of size 1), against which every agent's critic error is measured.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slamjax.graphs import Graph

__all__ = ["local_critic_update", "central_critic_update", "central_critic_step",
           "team_batch"]


def team_batch(batch, copies: int):
    """The batch with every agent's reward replaced by the team reward R̄ (``copies`` columns)."""
    team = jnp.mean(batch.rewards, axis=-1, keepdims=True)
    return batch._replace(rewards=jnp.broadcast_to(team, team.shape[:-1] + (copies,)))


def local_critic_update(critic, dual, grad_fn, batch, graph: Graph, hp, key, config):
    """``config.critic_steps`` local gradient steps, no communication. Returns (critic, dual,
    mean squared TD error per agent before the update)."""
    del key, graph
    tdsq0 = None
    for _ in range(config.critic_steps):
        h, tdsq = grad_fn(critic, batch)
        tdsq0 = tdsq if tdsq0 is None else tdsq0
        critic = jax.tree.map(lambda v, g: v - hp.critic_lr.astype(v.dtype) * g, critic, h)
    return critic, dual, tdsq0


def central_critic_step(critic, grad_fn, batch, hp, steps: int = 1):
    """``steps`` gradient steps of the critic copies in ``critic`` (agent axis first) on the
    team-reward losses, each followed by the exact average over the copies. Returns (critic,
    mean squared TD error per copy before the first step)."""
    copies = jax.tree.leaves(critic)[0].shape[0]
    tb = team_batch(batch, copies)
    tdsq0 = None
    for _ in range(steps):
        h, tdsq = grad_fn(critic, tb)
        tdsq0 = tdsq if tdsq0 is None else tdsq0
        critic = jax.tree.map(
            lambda v, g: jnp.broadcast_to(
                jnp.mean(v - hp.critic_lr.astype(v.dtype) * g, axis=0, keepdims=True), v.shape),
            critic, h)
    return critic, tdsq0


def central_critic_update(critic, dual, grad_fn, batch, graph: Graph, hp, key, config):
    """The centralized-critic control as a critic rule (see the module docstring)."""
    del key, graph
    critic, tdsq = central_critic_step(critic, grad_fn, batch, hp, config.critic_steps)
    return critic, dual, tdsq
