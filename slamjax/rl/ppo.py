"""SLAM-PPO (paper supplement §C.4.3, Fig. 7): SLAM-L critics with PPO actors.

The critics — value V(s; w_i) and reward estimator R̂(s, a; φ_i), both lower-level tasks — are
updated exactly as in SLAM-AC (one SLAM-L primal–dual step (5a)+(4b) per iteration on the
iteration's batch). The actors replace the vanilla policy gradient (212) by PPO's clipped
surrogate (Schulman et al. 2017) with clip ε = 0.2 (paper §C.4.3):

    L_i(θ_i) = −E[min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε) A_i)],  ρ_i = π_{θ_i}(a_i|s) / π_old(a_i|s),

where A_i is the GAE(λ = 0.95) of the one-step advantage of eq. (212),
δ̂_i = R̂(s, a; φ_i) + γ_d V(s'; w_i) − V(s; w_i) (the episode's last transition is a
truncation: its δ̂ bootstraps and the GAE sum stops there), normalised per agent over the
batch. Each agent runs ``ppo_epochs`` = 4 epochs of ``ppo_minibatches`` = 4 minibatches with
Adam at step 1e-4 (the paper's actor step size for every algorithm). Dec-PPO
(:mod:`slamjax.baselines.dec_ppo`) is the same with decentralized gradient descent (local step
+ one Metropolis mixing step) for the critics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from slamjax.rl.nets import Actor

__all__ = ["gae", "ppo_actor_update", "ppo_loss"]


def gae(delta, discount, lam):
    """Generalised advantage estimate along axis 1 of ``delta`` (n, T, E), one episode per
    column: A_t = δ_t + γ_d λ A_{t+1}, A_{T−1} = δ_{T−1}."""

    def body(carry, d):
        a = d + discount * lam * carry
        return a, a

    _, adv = lax.scan(body, jnp.zeros_like(delta[:, 0]), jnp.swapaxes(delta, 0, 1),
                      reverse=True)
    return jnp.swapaxes(adv, 0, 1)


def ppo_loss(actor: Actor, theta, obs, a_i, old_logp_i, adv_i, clip_eps):
    """Clipped surrogate of one agent (to be minimised) and its clip fraction."""
    logp = jax.nn.log_softmax(actor.apply(theta, obs))
    logp_a = jnp.take_along_axis(logp, a_i[:, None], axis=-1)[:, 0]
    ratio = jnp.exp(logp_a - old_logp_i)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    obj = jnp.minimum(ratio * adv_i, clipped * adv_i)
    return -jnp.mean(obj), jnp.mean(jnp.abs(ratio - 1.0) > clip_eps)


def ppo_actor_update(actor: Actor, tx: optax.GradientTransformation, actor_params, opt_state,
                     obs, actions, old_logp, adv, clip_eps, key, epochs: int,
                     minibatches: int):
    """PPO epochs for every agent at once. obs (B, 4n), actions/old_logp (B, n), adv (n, B).
    Returns (params, opt_state, mean clip fraction)."""
    B = obs.shape[0]
    mb = B // minibatches
    adv = (adv - adv.mean(axis=1, keepdims=True)) / (adv.std(axis=1, keepdims=True) + 1e-8)

    def grads(params, idx):
        def one(theta, a_i, lp_i, adv_i):
            return jax.grad(ppo_loss, argnums=1, has_aux=True)(
                actor, theta, obs[idx], a_i[idx], lp_i[idx], adv_i[idx], clip_eps)

        return jax.vmap(one, in_axes=(0, 1, 1, 0))(params, actions, old_logp, adv)

    def step(carry, idx):
        params, opt = carry
        g, clipfrac = grads(params, idx)
        upd, opt = tx.update(g, opt, params)
        return (optax.apply_updates(params, upd), opt), jnp.mean(clipfrac)

    def epoch(carry, k):
        perm = jax.random.permutation(k, B)[: mb * minibatches].reshape(minibatches, mb)
        return lax.scan(step, carry, perm)

    (actor_params, opt_state), clipfrac = lax.scan(epoch, (actor_params, opt_state),
                                                   jax.random.split(key, epochs))
    return actor_params, opt_state, jnp.mean(clipfrac)
