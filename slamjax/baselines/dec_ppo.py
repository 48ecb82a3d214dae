"""Dec-PPO (paper supplement §C.4.3, Fig. 7): PPO actors (clip ε = 0.2) with critics trained by
decentralized gradient descent — a local gradient step on each agent's TD loss (local reward)
and reward regression, then one Metropolis mixing step (the DAC critic rule,
:func:`slamjax.baselines.dac.dac_critic` = ``gossip("atc")``). Everything else — networks, GAE
advantages of the eq.-(212) TD error, PPO epochs, step sizes — is identical to SLAM-PPO
(:mod:`slamjax.rl.ppo`), so the pair isolates the critic's consensus rule: SLAM-L primal–dual
versus DGD.
"""

from __future__ import annotations

from slamjax.baselines.dac import dac_critic

__all__ = ["dac_critic"]
