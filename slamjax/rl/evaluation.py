"""Policy evaluation on a fixed dataset: where each critic consensus rule converges, without
sampling noise (issue 13, "the mechanism first").

In the actor-critic runs every critic step sees a fresh minibatch, so a consensus error mixes
two things: the *bias* of the rule's fixed point and the *noise* of the minibatch gradients.
Here the policy is frozen (uniformly random), one dataset of transitions is drawn once, and
every rule takes full-batch steps on it, so the iteration is deterministic and what is left of
the disagreement is the rule's own:

* **SLAM** (eqs. (5a)+(4b), ``"slam"``): at a fixed point u is constant, so (ρ/γ) L y = 0 —
  exact consensus y_i = y — and Σ_i u_i = 0 (u = Aᵀλ) turns Σ_i of the primal fixed-point
  equation into Σ_i h_i(y) = 0: the consensus point is the centralized critic fitted to the
  team reward R̄ (the TD semi-gradient is linear in the reward). ‖Ay‖² → 0 up to round-off,
  whatever the heterogeneity, and the agents' critics equal the centralized one.
* **DGD / DAC** (``"dgd"``, local step then ``k`` Metropolis mixing rounds): the fixed point
  y = Wᵏ(y − (1/β) h(y)) is *not* in consensus when the local gradients h_i differ at the
  consensus point: the disagreement is O((1/β)·heterogeneity / (1 − λ₂(W)ᵏ)) — it grows with
  the reward heterogeneity c and with 1/(spectral gap), and shrinks with more mixing rounds
  (MDAC's extra communication) but never vanishes at a constant step.
* **no communication** (``"local"``): every agent fits its own reward R_i;
  **centralized** (``"central"``): one critic on R̄, exact averaging — the two controls.

:func:`critic_fixed_points` runs one rule from the same initial critics as the training runs
(independent networks per agent, ``init_state``) and logs the disagreements ‖Aw‖², ‖Aφ‖².
Everything is pure and vmappable over seeds, hyperparameters and datasets of the same shape.

What is *not* measured here: the distance to a centralized critic. Semi-gradient TD(0) with
the MLP critics converges slowly on a fixed dataset (and two runs of the same centralized rule
from different initial networks were still far apart after 4000 full-batch steps, measured), so
a distance to a reference would mix the rule's bias with TD's own slow drift; the disagreement
‖Ay‖² has no such ambiguity (it is 0 for any consensus). The training runs report the error
against a reference centralized critic on the same minibatches (``ACConfig(track_central=True)``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from slamjax.baselines.dac import dac_critic
from slamjax.consensus import gossip
from slamjax.graphs import Graph
from slamjax.rl.core import ACConfig, ACHyperParams, CriticBatch, critic_grads, make_batch
from slamjax.rl.critics import CriticRule, critic_rule, critic_update
from slamjax.rl.rollout import collect
from slamjax.rl.train import init_critics

__all__ = ["EVAL_RULES", "random_policy_dataset", "critic_fixed_points", "FixedPointLog"]

EVAL_RULES = ("slam", "dgd", "local", "central")
"""Critic rules of :func:`critic_fixed_points`."""


class FixedPointLog(NamedTuple):
    """Metrics every ``log_every`` iterations, each of shape (num_iters // log_every,):
    ``consensus_w`` ‖Aw‖² (value critic), ``consensus_phi`` ‖Aφ‖² (reward estimator),
    ``td_sq`` the mean squared TD error over agents and the dataset (is the critic fitting?)."""

    consensus_w: jax.Array
    consensus_phi: jax.Array
    td_sq: jax.Array


def random_policy_dataset(config: ACConfig, key, num_envs: int = 64) -> CriticBatch:
    """One uniformly-random-policy episode in each of ``num_envs`` environments of
    ``config.env()`` (heterogeneous rewards included), flattened to a :class:`CriticBatch`
    of ``num_envs · max_steps`` transitions with the critics' features."""
    traj = collect(config.env(), config.nets()[0], None, key, int(num_envs))
    T, E = traj.obs.shape[:2]
    flat = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), traj)
    dc = config.critic_dim
    return make_batch(flat.obs[:, :dc], flat.actions, flat.rewards, flat.next_obs[:, :dc])


def critic_fixed_points(config: ACConfig, graph: Graph, hp: ACHyperParams, batch: CriticBatch,
                        key, num_iters: int, *, rule: str = "slam", mixing_rounds: int = 1,
                        log_every: int = 10):
    """Full-batch critic iterations of ``rule`` on a fixed dataset (see the module docstring).

    Args:
      config: the run's configuration (networks, n; ``critic_steps`` is taken as 1).
      graph: communication graph (n agents).
      hp: hyperparameters (``critic_lr`` = 1/β on the dataset-mean loss, ``rho``, ``gamma``,
        ``discount``).
      batch: the dataset (e.g. :func:`random_policy_dataset`), rewards (B, n) per agent.
      key: initial critics (the same networks as a training run with this key).
      num_iters: full-batch iterations (a multiple of ``log_every``).
      rule: ``"slam"``, ``"dgd"`` (local step + ``mixing_rounds`` Metropolis rounds; 1 = DAC),
        ``"local"`` or ``"central"``.

    Returns ``(critic, FixedPointLog)``. Pure: jit/vmap over ``key``, ``hp`` and ``batch``.
    """
    if rule not in EVAL_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {EVAL_RULES}")
    num_iters, log_every, mixing_rounds = int(num_iters), int(log_every), int(mixing_rounds)
    if log_every < 1 or num_iters < log_every or num_iters % log_every:
        raise ValueError(f"num_iters={num_iters} must be a positive multiple of "
                         f"log_every={log_every}")
    if mixing_rounds < 1:
        raise ValueError(f"mixing_rounds must be >= 1, got {mixing_rounds}")
    if batch.rewards.shape[-1] != config.n:
        raise ValueError(f"batch rewards have {batch.rewards.shape[-1]} agents, config has "
                         f"n={config.n}")
    _, vnet, rnet = config.nets()
    grad_fn = lambda c, b: critic_grads(vnet, rnet, c, b, hp.discount)  # noqa: E731
    crule = _eval_rule(rule, config, mixing_rounds)

    def step(critic, state):
        critic, state, _ = critic_update(crule, critic, state, grad_fn, batch, graph, hp)
        return critic, state

    def chunk(carry, _):
        carry, _ = lax.scan(lambda c, _: (step(*c), None), carry, None, length=log_every)
        critic = carry[0]
        td = jnp.mean(grad_fn(critic, batch)[1])  # diagnostics: the gradient part is unused
        return carry, FixedPointLog(graph.disagreement(critic["w"]),
                                    graph.disagreement(critic["phi"]), td)

    critic = init_critics(config, key)  # the same initial critics as a training run
    state = crule.consensus.init(critic, graph)
    (critic, _), log = lax.scan(chunk, (critic, state), None, length=num_iters // log_every)
    return critic, log


def _eval_rule(rule: str, config: ACConfig, mixing_rounds: int) -> CriticRule:
    """One full-batch step of ``rule`` (``critic_steps`` taken as 1): DGD with
    ``mixing_rounds`` Metropolis rounds, else the training runs' rule."""
    one = dataclasses.replace(config, critic_steps=1)
    if rule == "dgd":
        return CriticRule(dac_critic() if mixing_rounds == 1
                          else gossip("atc", rounds=mixing_rounds))
    return critic_rule(rule, one)
