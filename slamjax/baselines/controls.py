"""Controls of every actor-critic comparison (DESIGN §7, issue 13): the two ends between which
every consensus rule lies.

* **No communication** (``"local"`` critic rule; algorithms ``nocomm_ac``, ``nocomm_ppo`` and
  the pursuit trainer's ``nocomm``): each agent takes ``critic_steps`` local gradient steps on
  its own TD loss (local reward R_i) and reward regression, and never talks to anyone — what
  consensus has to beat. Consensus transform: :func:`nocomm_critic` = ``consensus.local()``.
* **Centralized critic** (``"central"`` rule; ``central_ac``, ``central_ppo``, the pursuit
  trainer's ``central``): one critic fitted to the team reward R̄ = (1/n) Σ_i R_i
  (:func:`team_batch`) by the same plain gradient step, held by every agent (exact averaging:
  the first step averages the independent initial critics, after that all copies are equal and
  every agent's gradient is the same). This is the ideal a consensus rule approximates (the
  "perfect averaging" control); it needs an all-reduce, not gossip. Consensus transform:
  :func:`central_critic` = ``consensus.central()`` on the team-reward batch.

The centralized rule (with one copy, agent axis of size 1) is also the reference critic of
``ACConfig.track_central``, against which every agent's critic error is measured
(:func:`slamjax.rl.critics.critic_rule` ``"central"``).
"""

from __future__ import annotations

import jax.numpy as jnp

from slamjax.consensus import Consensus, central, local

__all__ = ["nocomm_critic", "central_critic", "team_batch"]


def nocomm_critic() -> Consensus:
    """The no-communication control: y ← y − lr·h, nothing exchanged (``local()``)."""
    return local()


def central_critic() -> Consensus:
    """The centralized control: every copy holds mean_i(y_i − lr·h_i) (``central()``); fed the
    team-reward batch (:func:`team_batch`), it is one critic fitted to R̄."""
    return central()


def team_batch(batch, copies: int):
    """The batch with every agent's reward replaced by the team reward R̄ (``copies`` columns)."""
    team = jnp.mean(batch.rewards, axis=-1, keepdims=True)
    return batch._replace(rewards=jnp.broadcast_to(team, team.shape[:-1] + (copies,)))
