"""How the critics of both actor-critic trainers move in one iteration: a consensus transform
(:mod:`slamjax.consensus`) and how its steps take their minibatches.

A :class:`CriticRule` is chosen once from a configuration (:func:`critic_rule`) and holds
objects, not names: the traced step only calls ``rule.consensus.update(...)``. The rules of the
compared methods (each documented in its own module):

==============  =========================================================================
name            rule
==============  =========================================================================
``slam``        SLAM-L primal–dual (5a)+(4b), ``primal_dual(cache=False)``
                (:func:`slamjax.rl.slam_ac.slam_critic`), ``critic_steps`` per iteration
``dgd``         DAC / CAC / Dec-PPO: ``gossip("atc")`` (:mod:`slamjax.baselines.dac`)
``mdac``        MDAC: the actor's minibatch split into B-sample ``gossip("atc")`` inner
                steps at (B/M)/β, then ``gossip(rounds=extra)`` mixing
                (:mod:`slamjax.baselines.mdac`)
``mdac_fresh``  MDAC as Chen et al.: T_c inner steps on fresh B-sample minibatches dealt by
                the round (:func:`slamjax.baselines.mdac.fresh_minibatches`), then mixing
``local``       no communication, ``local()`` (:mod:`slamjax.baselines.controls`)
``central``     one critic on the team reward, ``central()`` on :func:`team_batch`
==============  =========================================================================

Every rule's state is its consensus transform's state (SLAM: ``PrimalDualState`` with the
duals u = Aᵀω; the others: ``()``), made by ``rule.consensus.init(critic, comm)``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
from jax import lax

from slamjax.baselines.controls import central_critic, nocomm_critic, team_batch
from slamjax.baselines.dac import dac_critic
from slamjax.baselines.mdac import (inner_step_scale, mdac_critic, mdac_extra_mixing,
                                    split_minibatch)
from slamjax.consensus import Consensus, ConsensusHP
from slamjax.rl.slam_ac import slam_critic

__all__ = ["CriticRule", "CRITIC_RULES", "critic_rule", "critic_update"]


class CriticRule(NamedTuple):
    """One method's critic update per iteration.

    Attributes:
      consensus: the transform of every (inner) step, ``consensus.update(h, state, critic,
        comm, ConsensusHP(lr, ρ, γ))``.
      steps: steps on the iteration's whole minibatch (``critic_steps``; ignored with
        ``split`` / ``fresh``, whose inner steps are one per minibatch).
      split: B — the iteration's minibatch shuffled by the iteration's key and split into
        B-sample inner steps (MDAC), else ``None``.
      fresh: the batch holds the iteration's own fresh minibatches, leaves (T_c, B, ...)
        (MDAC as Chen et al.; the round deals them), one inner step each.
      lr_scale: the inner steps take ``lr_scale``·1/β (B/M for MDAC), ``None``: 1/β.
      after: mixing after the (inner) steps (MDAC's extra rounds), or ``None``.
      team: the steps fit the team reward R̄ (the centralized critic).
    """

    consensus: Consensus
    steps: int = 1
    split: int | None = None
    fresh: bool = False
    lr_scale: float | None = None
    after: Consensus | None = None
    team: bool = False


def _slam(config) -> CriticRule:
    return CriticRule(slam_critic(), config.critic_steps)


def _dgd(config) -> CriticRule:
    return CriticRule(dac_critic(), config.critic_steps)


def _mdac(config) -> CriticRule:
    B = config.mdac_batch
    return CriticRule(mdac_critic(), split=B,
                      lr_scale=inner_step_scale(B, config.minibatch_size),
                      after=mdac_extra_mixing(config.mdac_extra_consensus))


def _mdac_fresh(config) -> CriticRule:
    return CriticRule(mdac_critic(), fresh=True,
                      lr_scale=inner_step_scale(config.mdac_batch, config.minibatch_size),
                      after=mdac_extra_mixing(config.mdac_extra_consensus))


def _local(config) -> CriticRule:
    return CriticRule(nocomm_critic(), config.critic_steps)


def _central(config) -> CriticRule:
    return CriticRule(central_critic(), config.critic_steps, team=True)


CRITIC_RULES: dict[str, Callable[..., CriticRule]] = {
    "slam": _slam, "dgd": _dgd, "mdac": _mdac, "mdac_fresh": _mdac_fresh, "local": _local,
    "central": _central}
"""Rule name (``ACConfig.critic_rule``, ``PursuitACConfig.critic_rule``) -> constructor."""


def critic_rule(name: str, config) -> CriticRule:
    """The :class:`CriticRule` ``name`` with the numbers of ``config`` (``critic_steps``,
    ``mdac_batch``, ``minibatch_size``, ``mdac_extra_consensus``): called once per
    configuration, outside the traced step."""
    if name not in CRITIC_RULES:
        raise ValueError(f"unknown critic rule {name!r}; choose one of {tuple(CRITIC_RULES)}")
    return CRITIC_RULES[name](config)


def critic_update(rule: CriticRule, critic, state, grad_fn, batch, comm, hp, key=None):
    """One iteration's critic update by ``rule``.

    ``grad_fn(critic, batch) -> (h, td_sq per agent)``; ``batch`` is the iteration's minibatch
    (leaves (T_c, B, ...) for ``rule.fresh``); ``hp`` has ``critic_lr``, ``rho`` and ``gamma``;
    ``key`` shuffles MDAC's split. Returns (critic, state, mean squared TD error per agent on
    the iteration's samples before the update)."""
    lr = hp.critic_lr if rule.lr_scale is None else hp.critic_lr * rule.lr_scale
    chp = ConsensusHP(lr, hp.rho, hp.gamma)
    if rule.team:
        batch = team_batch(batch, jax.tree.leaves(critic)[0].shape[0])
    split = rule.split
    if split is None and not rule.fresh:
        h, tdsq0 = grad_fn(critic, batch)
        critic, state = rule.consensus.update(h, state, critic, comm, chp)
        for _ in range(rule.steps - 1):
            h, _ = grad_fn(critic, batch)
            critic, state = rule.consensus.update(h, state, critic, comm, chp)
    else:
        if split is None:  # rule.fresh
            mbs = batch
            batch = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
        else:
            mbs = split_minibatch(batch, split, key)
        # diagnostics only: the gradient is discarded (XLA removes the unused part)
        tdsq0 = grad_fn(critic, batch)[1]

        def inner(carry, mb):
            c, s = carry
            h, _ = grad_fn(c, mb)
            return rule.consensus.update(h, s, c, comm, chp), None

        (critic, state), _ = lax.scan(inner, (critic, state), mbs)
    if rule.after is not None:
        critic, _ = rule.after.update(None, (), critic, comm, chp)
    return critic, state, tdsq0
