"""Baselines for the multi-agent actor-critic experiments.

* DAC (Zhang et al., ICML 2018): local critic step + one mixing step — :mod:`.dac`.
* MDAC (Chen et al., ICML 2022): mini-batch (B = 10) critic inner loop with mixing — :mod:`.mdac`.
* Dec-PPO: PPO actors, DGD critics — :mod:`.dec_ppo`.
* Metropolis–Hastings gossip averaging — :mod:`.mixing`.

All of them are run by :func:`slamjax.rl.run` (``algorithm="dac" | "mdac" | "dec_ppo"``).
"""

from slamjax.baselines.dac import dgd_critic_update
from slamjax.baselines.mdac import mdac_critic_update
from slamjax.baselines.mixing import metropolis_weights, mix, mixing_matrix, spectral_gap

__all__ = ["dgd_critic_update", "mdac_critic_update", "metropolis_weights", "mix",
           "mixing_matrix", "spectral_gap"]
