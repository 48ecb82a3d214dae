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

Critic rules of the actor-critic baselines (consensus transforms of :mod:`slamjax.consensus`,
assembled per algorithm by :func:`slamjax.rl.critics.critic_rule` for both trainers):

* DAC (Zhang et al., ICML 2018): local critic step + one mixing step, ``gossip("atc")`` —
  :mod:`.dac` (also CAC's rule in the pursuit trainer).
* MDAC (Chen et al., ICML 2022): mini-batch (B = 10) critic inner loop of ``gossip("atc")``
  steps, then extra mixing ``gossip(rounds=5)`` — :mod:`.mdac`, with the two ways of dealing the
  inner minibatches (a split of the actor's minibatch, or fresh minibatches as Chen et al.).
* Dec-PPO: PPO actors, DGD critics — :mod:`.dec_ppo`.
* Controls: no communication (``local()``), and a centralized critic on the team reward
  (``central()``) — :mod:`.controls`.

All gossip goes through the communication object (:meth:`slamjax.Graph.mix`, Metropolis).
"""

from slamjax.baselines.controls import central_critic, nocomm_critic
from slamjax.baselines.bias_free_slam import BiasFreeParams, BiasFreeState, bias_free_slam
from slamjax.baselines.dac import dac_critic
from slamjax.baselines.dsgd import DSGDParams, DSGDState, dsgd
from slamjax.baselines.dsgd_bilevel import DSGDBilevelParams, DSGDBilevelState, dsgd_bilevel
from slamjax.baselines.dsoba import DSOBAParams, DSOBAState, dsoba
from slamjax.baselines.dsoba_gt import DSOBAGTParams, DSOBAGTState, dsoba_gt
from slamjax.baselines.mdac import mdac_critic, mdac_extra_mixing

__all__ = ["BiasFreeParams", "BiasFreeState", "DSGDBilevelParams", "DSGDBilevelState",
           "DSGDParams", "DSGDState", "DSOBAGTParams", "DSOBAGTState", "DSOBAParams",
           "DSOBAState", "bias_free_slam", "dsgd", "dsgd_bilevel", "dsoba", "dsoba_gt",
           "dac_critic", "mdac_critic", "mdac_extra_mixing", "nocomm_critic", "central_critic"]
