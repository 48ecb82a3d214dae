"""SLAM-AC: SLAM-L (Lu et al., NeurIPS 2022, Algorithm 2) applied to the decentralized
actor-critic problem (211) of the supplement, §C.1.

Per iteration r, for all agents at once:

1. sample one episode in each of ``num_envs`` environments with the joint policy π_{θʳ};
2. **LL (critics), SLAM's eqs. (5a) + (4b)** on both tasks y = (w, φ) with consensus on:
   y ← y − (1/β)(h_g + γ u + ργ L y),  u ← u + (ρ/γ) L y   (:func:`slam_critic`, the
   consensus transform ``slamjax.consensus.primal_dual(cache=False)``),
   h_g = the gradients of the TD loss (211c) and the reward regression (211d) on the batch;
3. **UL (actors), no consensus (SLAM-L)**: θ_i ← θ_i + step · ∇̂_{θ_i} J with eq. (212),
   evaluated at the new critics y^{r+1}:
   ∇̂_{θ_i} J = (1 − γ_d)^{-1} E[(R̂(s, a; φ_i) + γ_d V(s'; w_i) − V(s; w_i)) ∇ log π_{θ_i}(a_i|s)],
   with the networks' outputs in place of the paper's linear features ψᵀφ, φᵀw.

Iterations and data: an update round collects one 25-step episode in each of 16 environments
and runs K = 8 SLAM-L iterations on disjoint minibatches of M = 50 of those transitions (every
algorithm sees exactly the same data; ``slamjax.rl.train.iteration``).

Settings (paper §C.2 where it gives them, our choice otherwise):
* critic step: plain gradient step, exactly eq. (5a), 1/β = 0.05 on the minibatch-mean loss —
  the paper's 1e-3 read as a per-sample (online) step: one step on the mean of M = 50 samples
  with M·1e-3 moves as far, to first order, as 50 online steps of 1e-3. Taken literally on the
  mean loss (1/β = 1e-3), the critics learn ~50× slower and the actors barely improve within
  the rounds we can afford (measured, n = 3, 5 seeds, 2000 rounds: −26.1 ± 0.8 vs
  −20.3 ± 0.2; the random policy scores −25.9; ``results/ablation.json``);
* actor step 1/α = 1e-4 with Adam (scale-free, so the per-sample question does not arise).
  Plain SGD with the per-sample reading (5e-3 on the mean) learns faster in 2000 rounds
  (−17.8 ± 1.4 vs −20.3 ± 0.2, n = 3, 5 seeds; ``results/ablation.json``) but with a 7×
  larger spread over seeds and near-deterministic policies (entropy 0.44 vs 1.31 nats); we
  keep Adam at the paper's number 1e-4 for every algorithm;
* ρ = 0.1 (paper); γ (SLAM's scaling) = :func:`slamjax.rl.core.auto_gamma` (critical damping
  of the consensus recursion, γ ≈ 15.3 for n = 3); discount γ_d = 0.95 (not given in the
  paper); critic inputs include the agents' velocities (see :mod:`slamjax.rl.core`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slamjax.consensus import Consensus, primal_dual
from slamjax.rl.core import check_actions
from slamjax.rl.nets import Actor

__all__ = ["slam_critic", "pg_actor_grads", "actor_gradient_212"]


def slam_critic() -> Consensus:
    """SLAM-L's critic rule: the primal–dual step (5a) + dual step (4b) on every leaf of
    y = (w, φ), ``primal_dual(cache=False)`` (its state holds the duals u = Aᵀω). The trainers
    take ``critic_steps`` of them per iteration on the iteration's minibatch
    (:func:`slamjax.rl.critics.critic_rule` ``"slam"``)."""
    return primal_dual(cache=False)


def pg_actor_grads(actor: Actor, actor_params, obs, actions, adv, discount):
    """Eq. (212) averaged over a batch, for every agent: the ascent direction ∇̂_{θ_i} J.

    obs (B, 4n), actions (B, n) int, adv (n, B) = R̂ + γ_d V(s') − V(s) per agent.
    """

    def one(theta, a_i, adv_i):
        def surrogate(th):
            logp = jax.nn.log_softmax(actor.apply(th, obs))
            logp_a = jnp.take_along_axis(logp, a_i[:, None], axis=-1)[:, 0]
            return jnp.mean(jax.lax.stop_gradient(adv_i) * logp_a) / (1.0 - discount)

        return jax.grad(surrogate)(theta)

    return jax.vmap(one, in_axes=(0, 1, 0))(actor_params, actions, adv)


def actor_gradient_212(actor_params, obs, actions, reward_hat, value, value_next, discount,
                       actor: Actor | None = None):
    """Eq. (212) for every agent, averaged over the samples of a batch.

    Args:
      actor_params: stacked actor parameters (agent axis first, n agents).
      obs: (B, 4n) global states s.
      actions: (B, n) joint actions a (integers in [0, 4]).
      reward_hat, value, value_next: (B, n): ψ(s,a)ᵀφ_i, V(s; w_i), V(s'; w_i) per sample and
        agent (any estimates — e.g. the critic networks' outputs).
      discount: γ_d ∈ (0, 1).

    Returns the pytree of
    (1−γ_d)^{-1} mean_b (R̂ + γ_d V' − V)_{b,i} ∇_{θ_i} log π_{θ_i}(a_{b,i}|s_b)
    (an ascent direction, agent axis first). Bad shapes or action indices are a ValueError.
    """
    actor = Actor() if actor is None else actor
    n = jax.tree.leaves(actor_params)[0].shape[0]
    obs = jnp.asarray(obs)
    if obs.ndim != 2:
        raise ValueError(f"obs must have shape (B, 4n), got {obs.shape}")
    check_actions(actions, n, obs.shape[0])
    for name, v in (("reward_hat", reward_hat), ("value", value), ("value_next", value_next)):
        if tuple(jnp.shape(v)) != (obs.shape[0], n):
            raise ValueError(f"{name} must have shape (B, n) = {(obs.shape[0], n)}, "
                             f"got {tuple(jnp.shape(v))}")
    if not 0.0 < float(discount) < 1.0:
        raise ValueError(f"discount must lie in (0, 1), got {discount}")
    adv = (jnp.asarray(reward_hat) + discount * jnp.asarray(value_next) - jnp.asarray(value)).T
    return _pg_jit(actor, actor_params, obs, jnp.asarray(actions, jnp.int32), adv,
                   jnp.asarray(discount, obs.dtype))


_pg_jit = jax.jit(pg_actor_grads, static_argnums=0)
