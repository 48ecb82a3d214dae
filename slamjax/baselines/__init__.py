"""Methods that plug into the same core as SLAM (each an :class:`slamjax.Algorithm`, one file
per method, registered in :data:`slamjax.REGISTRY`):

* :mod:`.dsgd` — decentralized SGD on one loss with Metropolis gossip (the meta-learning
  experiment's reference).

Critic rules of the actor-critic baselines (used by :func:`slamjax.rl.run`):

* DAC (Zhang et al., ICML 2018): local critic step + one mixing step — :mod:`.dac`.
* MDAC (Chen et al., ICML 2022): mini-batch (B = 10) critic inner loop with mixing — :mod:`.mdac`.
* Dec-PPO: PPO actors, DGD critics — :mod:`.dec_ppo`.

All gossip goes through the communication object (:meth:`slamjax.Graph.mix`, Metropolis).
"""

from slamjax.baselines.dac import dgd_critic_update
from slamjax.baselines.dsgd import DSGDParams, DSGDState, dsgd
from slamjax.baselines.mdac import mdac_critic_update

__all__ = ["DSGDParams", "DSGDState", "dgd_critic_update", "dsgd", "mdac_critic_update"]
