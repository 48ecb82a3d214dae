"""Methods that plug into the same core as SLAM (each an :class:`slamjax.Algorithm`, one file
per method, registered in :data:`slamjax.REGISTRY`):

* :mod:`.dsgd` — decentralized SGD on one loss with Metropolis gossip (the meta-learning
  experiment's reference; ``optimizer="adam"``: per-agent Adam steps, the centralized Adam
  oracle at n = 1);
* :mod:`.dsgd_bilevel` — decentralized SGD with an inner LL loop and eq.-(23) hypergradients
  (the naive bilevel reference);
* :mod:`.dsoba` — single-loop D-SOBA (optional moving average);
* :mod:`.dsoba_gt` — D-SOBA with gradient tracking on all three directions (SPARKLE /
  MA-DSBO-GT family);
* :mod:`.bias_free_slam` — SLAM with the auxiliary z in consensus (true hypergradient).

Critic rules of the actor-critic baselines (used by :func:`slamjax.rl.run`):

* DAC (Zhang et al., ICML 2018): local critic step + one mixing step — :mod:`.dac`.
* MDAC (Chen et al., ICML 2022): mini-batch (B = 10) critic inner loop with mixing — :mod:`.mdac`.
* Dec-PPO: PPO actors, DGD critics — :mod:`.dec_ppo`.
* MDAC with a fresh minibatch per inner step (Chen et al.) — :mod:`.mdac`
  (``mdac_fresh_critic_update``).
* Controls: no communication, and a centralized critic on the team reward — :mod:`.controls`.

All gossip goes through the communication object (:meth:`slamjax.Graph.mix`, Metropolis).
"""

from slamjax.baselines.controls import (central_critic_step, central_critic_update,
                                        local_critic_update)
from slamjax.baselines.bias_free_slam import BiasFreeParams, BiasFreeState, bias_free_slam
from slamjax.baselines.dac import dgd_critic_update
from slamjax.baselines.dsgd import DSGDParams, DSGDState, dsgd
from slamjax.baselines.dsgd_bilevel import DSGDBilevelParams, DSGDBilevelState, dsgd_bilevel
from slamjax.baselines.dsoba import DSOBAParams, DSOBAState, dsoba
from slamjax.baselines.dsoba_gt import DSOBAGTParams, DSOBAGTState, dsoba_gt
from slamjax.baselines.mdac import mdac_critic_update, mdac_fresh_critic_update

__all__ = ["BiasFreeParams", "BiasFreeState", "DSGDBilevelParams", "DSGDBilevelState",
           "DSGDParams", "DSGDState", "DSOBAGTParams", "DSOBAGTState", "DSOBAParams",
           "DSOBAState", "bias_free_slam", "dgd_critic_update", "dsgd", "dsgd_bilevel",
           "dsoba", "dsoba_gt", "mdac_critic_update", "mdac_fresh_critic_update",
           "local_critic_update", "central_critic_update", "central_critic_step"]
