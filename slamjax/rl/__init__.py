"""Multi-agent actor-critic on cooperative navigation (paper §4 and supplement §C).

* SLAM-AC — SLAM-L (Algorithm 2) on problem (211): critics (value w_i and reward estimator
  φ_i, the two LL tasks) by SLAM's primal–dual consensus, actors by eq. (212);
  :mod:`slamjax.rl.slam_ac`.
* SLAM-PPO — the same critics, PPO actors; :mod:`slamjax.rl.ppo`.
* Baselines DAC, MDAC (and MDAC with fresh minibatches, Chen et al.) and Dec-PPO live in
  :mod:`slamjax.baselines`, with the controls (no communication, centralized critic): each
  method's critics are a consensus transform of :mod:`slamjax.consensus`, assembled with how
  its steps take their minibatches into a :class:`~slamjax.rl.critics.CriticRule` once per
  configuration (:mod:`slamjax.rl.critics`).
* Heterogeneous rewards (issue 13): ``ACConfig(reward_split="owner")`` and
  ``ACConfig(nuisance_scale=nuisance_scale(n, c))`` (c in units of std(R)); sparse graphs:
  ``make_rl_graph("ring" | "er_sparse", n)``, described by ``graph_info``; communication per
  iteration: ``ACConfig.comm_rounds`` and ``comm_info``; ``ACConfig(track_central=True)`` logs
  the critic errors against a reference centralized critic.

Pursuit-evasion (issue 14, paper Figs 2 and 4): :mod:`slamjax.rl.pursuit_ac` — SLAM-AC, CAC
and MDAC with partial parameter sharing (per-leaf consensus masks on the actors' CNN layers)
and the controls, on :class:`slamjax.envs.PursuitEnv` (configuration and hyperparameters in
:mod:`slamjax.rl.pursuit_config`).

``run(algorithm, graph, hparams=..., seeds=5, num_updates=...)`` (and ``pursuit_ac.run``)
trains every (setting × seed) lane in one vmapped, jit-compiled program on the one host driver
(:mod:`slamjax.rl.lanes`, :func:`slamjax.driver.execute`) and returns a
:class:`~slamjax.RunResult`; ``make_train`` returns the pure function for tests and for
composing with other transformations.
"""

from slamjax.rl.core import (ALGORITHMS, ACConfig, ACHyperParams, TrainState, auto_gamma,
                             canonical_algorithm, check_actions, critic_grads, make_hparams,
                             td_advantage)
from slamjax.rl.critics import CriticRule, critic_rule, critic_update
from slamjax.rl.lanes import first_nonfinite_round
from slamjax.rl.nets import Actor, MLPHead, apply_agents, init_agents, reward_input
from slamjax.rl.ppo import gae, ppo_actor_update
from slamjax.rl.rollout import (Transition, collect, episode_return, nuisance_scale,
                                random_policy_return, team_reward_std)
from slamjax.rl.slam_ac import actor_gradient_212, pg_actor_grads, slam_critic
from slamjax.rl.train import (CENTRAL_METRICS, GRAPH_KINDS, METRICS, comm_info, graph_info,
                              init_state, iteration, make_rl_graph, make_train,
                              navigation_graph, run)

__all__ = [
    "ALGORITHMS", "ACConfig", "ACHyperParams", "Actor", "CriticRule", "METRICS", "MLPHead",
    "TrainState", "Transition", "actor_gradient_212", "apply_agents", "auto_gamma",
    "canonical_algorithm", "check_actions", "collect", "critic_grads", "critic_rule",
    "critic_update", "episode_return", "first_nonfinite_round", "gae", "init_agents",
    "init_state", "iteration", "make_hparams", "make_train", "navigation_graph",
    "pg_actor_grads", "ppo_actor_update", "random_policy_return", "reward_input", "run",
    "slam_critic", "td_advantage", "CENTRAL_METRICS", "GRAPH_KINDS", "comm_info",
    "graph_info", "make_rl_graph", "nuisance_scale", "team_reward_std",
]
