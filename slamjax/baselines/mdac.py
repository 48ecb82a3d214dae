"""MDAC — mini-batch decentralized actor-critic of Chen, Zhou, Chen & Zou, "Sample and
communication-efficient decentralized actor-critic algorithms with finite-time analysis",
ICML 2022 (the paper's ref. [22]).

Their decentralized AC runs, before every actor update, a critic *inner loop*: T_c mini-batch
TD steps, each a local step followed by one communication round with the neighbours, then
T_c' extra consensus rounds so that all agents hold (nearly) the same critic. The SLAM paper
(§4) uses "a small batch B = 10 in the inner loop for MDAC". Here, per iteration:

* the iteration's M = 50 transitions (the same minibatch every algorithm gets: a round of 16
  episodes × 25 steps split into K = 8 iterations) are split into mini-batches of
  ``mdac_batch`` = B = 10, giving T_c = M/B = 5 inner steps, each
  y ← W (y − (B/M)(1/β) h_g(y; mini-batch)) for both critic tasks (value and reward) — the
  step (B/M)/β keeps the per-sample step size of every algorithm equal (the paper's 1e-3;
  with the full 1/β on a 10-sample mean the critics diverged for n ≥ 8);
* then ``mdac_extra_consensus`` = 5 extra mixing rounds y ← W⁵ y (Metropolis weights);
* actor: eq. (212) with the agent's own critic on the whole batch, as for SLAM-AC and DAC.

As consensus transforms (:mod:`slamjax.consensus`): every inner step is :func:`mdac_critic`
= ``gossip("atc")`` at the step ``(B/M)/β`` (:func:`inner_step_scale`), the extra rounds are
:func:`mdac_extra_mixing` = ``gossip(rounds=T_c')`` applied with ``update(None, ...)`` (mixing
only); :func:`slamjax.rl.critics.critic_rule` assembles them.

Differences from Chen et al.: no Gaussian noise on shared rewards (their privacy mechanism),
i.i.d. shuffled mini-batches from on-policy episodes instead of one Markovian trajectory, neural
critics, and the actor uses the estimated team reward R̂ instead of noisy shared rewards.
MDAC therefore performs 5× more critic gradient steps and 10 communication rounds per
iteration, against 1 step and 1 round for SLAM-AC and DAC.

Two variants (issue 13), differing only in how the inner steps' minibatches are dealt:

* ``"mdac"`` / ``"dac_extra_mixing"`` — the inner steps split the actor's own minibatch
  (:func:`split_minibatch`, shuffled by the iteration's key), so to first order the inner loop
  is one DAC step on that minibatch, followed by extra mixing ("DAC + extra mixing"). Kept for
  Figs 1 and 5.
* ``"mdac_fresh"`` — as Chen et al., every inner step has its own fresh minibatch of B = 10
  transitions, drawn from the round independently of the actor's minibatch
  (:func:`fresh_minibatches`; T_c = ``mdac_inner_steps`` = 5 by default, then 5 extra
  mixings). The pursuit trainer's MDAC is this variant.
"""

from __future__ import annotations

import jax

from slamjax.consensus import Consensus, gossip

__all__ = ["mdac_critic", "mdac_extra_mixing", "inner_step_scale", "split_minibatch",
           "fresh_minibatches"]


def mdac_critic() -> Consensus:
    """One MDAC inner step: a local gradient step then one Metropolis mixing round,
    ``gossip("atc")`` (taken at the step of :func:`inner_step_scale`)."""
    return gossip("atc")


def mdac_extra_mixing(rounds: int) -> Consensus | None:
    """The extra consensus rounds after the inner loop, y ← W^rounds y: ``gossip(rounds=...)``
    used with ``update(None, ...)``; ``None`` for ``rounds = 0``."""
    return gossip("atc", rounds=rounds) if rounds else None


def inner_step_scale(batch: int, minibatch: int) -> float:
    """B/M: 1/β is the step on a mean of M samples and an inner step averages B samples, so it
    takes (B/M)/β — the per-sample step of every algorithm."""
    return batch / minibatch


def split_minibatch(batch, size: int, key):
    """The iteration's minibatch (leading axis M) shuffled by ``key`` and split into ⌊M/B⌋
    minibatches of B = ``size`` (leaves of shape (⌊M/B⌋, B, ...))."""
    total = jax.tree.leaves(batch)[0].shape[0]
    num = total // size
    perm = jax.random.permutation(key, total)[: num * size]
    return jax.tree.map(lambda x: x[perm].reshape((num, size) + x.shape[1:]), batch)


def fresh_minibatches(batch, key, iterations: int, inner_steps: int, size: int):
    """Chen et al.'s fresh critic minibatches of one round: the round's transitions (leading
    axis E·T) dealt out once, by their own permutation ``key``, to ``iterations`` ×
    ``inner_steps`` minibatches of ``size`` (leaves (K, T_c, B, ...)), independently of the
    actor's minibatches (so K·T_c·B ≤ E·T)."""
    total = jax.tree.leaves(batch)[0].shape[0]
    perm = jax.random.permutation(key, total)
    perm = perm[: iterations * inner_steps * size].reshape(iterations, inner_steps, size)
    return jax.tree.map(lambda x: x[perm], batch)
