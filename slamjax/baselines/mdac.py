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

Differences from Chen et al.: no Gaussian noise on shared rewards (their privacy mechanism),
i.i.d. shuffled mini-batches from on-policy episodes instead of one Markovian trajectory, neural
critics, and the actor uses the estimated team reward R̂ instead of noisy shared rewards.
MDAC therefore performs 5× more critic gradient steps and 10 communication rounds per
iteration, against 1 step and 1 round for SLAM-AC and DAC.

Two variants (issue 13):

* ``"mdac"`` / ``"dac_extra_mixing"`` — :func:`mdac_critic_update` above: the inner steps
  split the actor's own minibatch, so to first order the inner loop is one DAC step on that
  minibatch, followed by extra mixing ("DAC + extra mixing"). Kept for Figs 1 and 5.
* ``"mdac_fresh"`` — :func:`mdac_fresh_critic_update`: as Chen et al., every inner step has
  its own fresh minibatch of B = 10 transitions, drawn from the round independently of the
  actor's minibatch (T_c = ``mdac_inner_steps`` = 5 by default, then 5 extra mixings).
"""

from __future__ import annotations

import jax
from jax import lax

from slamjax.graphs import Graph

__all__ = ["mdac_critic_update", "mdac_fresh_critic_update"]


def mdac_critic_update(critic, dual, grad_fn, batch, graph: Graph, hp, key, config):
    """MDAC critic inner loop (see the module docstring). Returns (critic, dual, mean squared
    TD error per agent on the whole batch before the loop)."""
    B = config.mdac_batch
    total = jax.tree.leaves(batch)[0].shape[0]
    num_mb = total // B
    perm = jax.random.permutation(key, total)[: num_mb * B]
    mbs = jax.tree.map(lambda x: x[perm].reshape((num_mb, B) + x.shape[1:]), batch)
    tdsq0 = _td_sq(grad_fn, critic, batch)

    # same per-sample step as the other algorithms: 1/β is the step on the mean of M samples,
    # an inner step averages B samples, so it takes (B/M)/β
    return _inner_loop(critic, grad_fn, mbs, graph, hp.critic_lr * (B / total),
                       config), dual, tdsq0


def _inner_loop(critic, grad_fn, mbs, graph: Graph, lr, config):
    """The inner loop of both variants: per minibatch (leading axis of ``mbs``) a local step
    of size ``lr`` then one mixing round; then ``mdac_extra_consensus`` extra mixings."""
    def inner(c, mb):
        h, _ = grad_fn(c, mb)
        local = jax.tree.map(lambda v, g: v - lr.astype(v.dtype) * g, c, h)
        return graph.mix(local), None

    critic, _ = lax.scan(inner, critic, mbs)
    if config.mdac_extra_consensus:
        critic = graph.mix(critic, config.mdac_extra_consensus)
    return critic


def _td_sq(grad_fn, critic, batch):
    # diagnostics only: the gradient is discarded (XLA removes the unused part)
    return grad_fn(critic, batch)[1]


def mdac_fresh_critic_update(critic, dual, grad_fn, batch, graph: Graph, hp, key, config):
    """MDAC as Chen et al. (2022): T_c = ``config.mdac_inner_steps`` inner steps, each a local
    TD / reward-regression step on its *own fresh* minibatch of B = ``config.mdac_batch``
    transitions followed by one mixing round, then ``mdac_extra_consensus`` extra mixing
    rounds.

    ``batch`` has leaves of shape (T_c, B, ...): the iteration's fresh critic minibatches,
    dealt out by :func:`slamjax.rl.train.iteration` from the round's transitions
    independently of the actor's minibatch (so the actor's advantage is evaluated on samples
    the critic did not just fit, and the critic's samples are not a split of the actor's).
    Step: the per-sample step of every algorithm (1/β is the step on a mean of M samples, so a
    B-sample inner step takes (B/M)/β). Returns (critic, dual, mean squared TD error per agent
    on all T_c·B samples before the loop)."""
    del key
    B = config.mdac_batch
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
    tdsq0 = _td_sq(grad_fn, critic, flat)
    return _inner_loop(critic, grad_fn, batch, graph,
                       hp.critic_lr * (B / config.minibatch_size), config), dual, tdsq0
