"""DAC — decentralized actor-critic of Zhang, Yang, Liu, Zhang & Başar, "Fully decentralized
multi-agent reinforcement learning with networked agents", ICML 2018 (the paper's ref. [15]).

We follow their Algorithm 2 (state-value critic + estimated team reward), written for the
discounted objective (211) so that it shares SLAM-AC's networks and data:

* **critic step**: each agent takes a local gradient step on its own TD loss (local reward R_i)
  and on the reward regression, w̃_i = w_i − (1/β) h_{w,i}, φ̃_i = φ_i − (1/β) h_{φ,i},
* **one consensus step**: w_i ← Σ_j W_ij w̃_j (the same for φ), W = Metropolis–Hastings weights
  (:meth:`slamjax.Graph.mix`) — decentralized gradient descent (DGD),
* **actor**: the TD error computed locally from the agent's own critic and reward estimate,
  δ̃_i = R̂(s, a; φ_i) + γ_d V(s'; w_i) − V(s; w_i), times ∇ log π_i(a_i|s) (eq. (212), the same
  estimator as SLAM-AC, so that the comparison isolates the critic's consensus rule).

The critic step and the consensus step together are the consensus transform
:func:`dac_critic` = ``slamjax.consensus.gossip("atc")`` (adapt then combine: y ← W(y − (1/β) h)),
taken ``critic_steps`` times per iteration on the iteration's minibatch
(:func:`slamjax.rl.critics.critic_rule` ``"dgd"``). CAC, the pursuit trainer's baseline
(:mod:`slamjax.rl.pursuit_ac`), uses the same rule for its critics and its shared actor layers.

Differences from Zhang et al.: neural instead of linear critics, the discounted instead of the
average-reward criterion, and a batch of 16 episodes per iteration instead of one transition.
Step sizes as in the paper's §C.2 for all compared algorithms: critic 1e-3, actor 1e-4 (Adam).

Dec-PPO (:mod:`slamjax.baselines.dec_ppo`) uses the same critic rule.
"""

from __future__ import annotations

from slamjax.consensus import Consensus, gossip

__all__ = ["dac_critic"]


def dac_critic() -> Consensus:
    """DAC's critic rule (DGD): a local gradient step, then one Metropolis mixing round,
    y ← W(y − lr·h) on every leaf of y — ``gossip("atc")``. Stateless."""
    return gossip("atc")
