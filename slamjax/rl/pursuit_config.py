"""Configuration and hyperparameters of the pursuit-evasion actor-critic trainer
(:mod:`slamjax.rl.pursuit_ac`): the algorithms and their consensus rules, the static
:class:`PursuitACConfig`, the traced :class:`PursuitHyperParams` and the paper's step sizes.

**Partial parameter sharing** (the paper follows Zeng et al. [23]): the actor layers named in
``PursuitACConfig.shared_actor_layers`` (Fig 2: ``("conv1",)``, the first convolution) are also
kept in consensus, the other actor layers stay private; Fig 4 shares no actor layer (critics
only).  Every algorithm uses the same sharing scheme; only the rule that enforces it differs:

=============  ===========================================  ====================================
algorithm      critics (V, and R̂ with "estimate")           shared actor layers
=============  ===========================================  ====================================
``slam_ac``    SLAM primal–dual (5a)+(4b), ρ, γ              SLAM primal–dual (5b)+(4d), ρ, γ_x
               ``primal_dual(cache=False)``                  ``primal_dual(mask, cache=False)``
                                                             (per-leaf mask: SLAM, Algorithm 1)
``cac``        local step + one Metropolis mixing (DGD)      local step + one mixing (Zeng et al.)
               ``gossip("atc")``                             ``masked(gossip("atc"), mask)``
``mdac``       5 inner steps on fresh B = 10 minibatches,    local step + one mixing (as CAC)
               one mixing each, then 5 extra mixings
``nocomm``     local steps, no communication, ``local()``   private (nothing shared), ``local()``
``central``    one critic fitted to R̄ (exact average),     exact average over the agents,
               ``central()`` on the team reward              ``masked(central(), mask)``
=============  ===========================================  ====================================

(consensus transforms of :mod:`slamjax.consensus`; the critics' rules are
:func:`slamjax.rl.critics.critic_rule`'s, the actors' :func:`actor_consensus`.)

Private actor leaves always take the plain step θ ← θ + (1/α) ∇̂J.  Steps are plain (no Adam):
an adaptive optimizer on a variable in consensus breaks SLAM's eq. (5b).

**Step sizes.**  The paper's critic 1e-3 and actor 1e-4 are read per sample, as in the
navigation experiments: on the mean over M samples they become 1e-3·M and 1e-4·M
(:func:`make_pursuit_hparams`).  ρ = 5 (paper); γ (critics) and γ_x (actors) critically damp the
stiffest Laplacian mode (:func:`slamjax.rl.core.auto_gamma`), clipped to half the stability
bound ρ λ_max (1 + 2γ) < 4β.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from slamjax.consensus import Consensus, central, gossip, local, masked, primal_dual
from slamjax.envs._checks import check_int
from slamjax.envs.pursuit import NUM_ACTIONS, PursuitEnv
from slamjax.graphs import Graph, ring
from slamjax.rl.cnn import CNN_FEATURES, CNNActor, CNNCritic
from slamjax.rl.core import auto_gamma, canonical_name, positive_floats
from slamjax.slam import StabilityWarning, stability_bound

__all__ = ["ALGORITHMS", "DISPLAY", "ACTOR_LAYERS", "ADVANTAGE_REWARDS", "ACTOR_INPUTS",
           "ACTOR_RULES", "PursuitACConfig", "PursuitHyperParams", "make_pursuit_hparams",
           "actor_mask", "actor_consensus", "pursuit_graph"]

ALGORITHMS = {
    "slam_ac": ("slam", "slam"),
    "cac": ("dgd", "dgd"),
    "mdac": ("mdac_fresh", "dgd"),
    "nocomm": ("local", "local"),
    "central": ("central", "central"),
}
"""Algorithm -> (critic rule, actor rule): the names of the rules built once per configuration
(critic rules: :func:`slamjax.rl.critics.critic_rule`; actor rules: :func:`actor_consensus`)."""
DISPLAY = {"slam_ac": "SLAM-AC", "cac": "CAC", "mdac": "MDAC", "nocomm": "no communication",
           "central": "centralized"}
"""Display names of the algorithms."""
ACTOR_LAYERS = ("conv1", "conv2", "out")
"""The actor's layers (parameter-tree keys of :class:`slamjax.rl.cnn.CNNActor`)."""
ADVANTAGE_REWARDS = ("local", "estimate")
"""The reward in the actor's TD error (module docstring)."""
ACTOR_INPUTS = ("local", "global_self", "global")
"""What the actors read (module docstring)."""



@dataclasses.dataclass(frozen=True)
class PursuitACConfig:
    """Static (hashable) configuration of a pursuit training run; changing it recompiles.

    Attributes:
      algorithm: ``slam_ac`` | ``cac`` | ``mdac`` | ``nocomm`` | ``central``.
      shared_actor_layers: actor layers kept in consensus (Fig 2: ``("conv1",)``; Fig 4: ``()``).
      n_pursuers, n_evaders, max_cycles, n_catch: the environment (4, 4, 100, 2 — the paper's
        two pursuers per capture); see :class:`slamjax.envs.PursuitEnv` for its other (paper)
        settings.
      num_envs: environments per update round, one episode each (8).
      iters_per_round: K iterations per round on disjoint minibatches (16; M = E·T/K = 50).
      features: channels of the two convolutions of every network ((4, 8)).
      critic_zero_init: the critics' output layers start at 0 (True; module docstring).
      advantage_reward: the reward in the actor's TD error, ``"local"`` (the agent's own,
        default) or ``"estimate"`` (eq. (212)'s reward estimator R̂; module docstring).
      actor_input: what the actors read: ``"local"`` (7 × 7 view, default), ``"global_self"``
        (global state + own-cell channel) or ``"global"`` (paper-literal; module docstring).
      critic_steps: critic steps per iteration for the ``slam`` / ``dgd`` / ``local`` rules (1).
      mdac_batch, mdac_inner_steps, mdac_extra_consensus: MDAC's B, T_c and extra mixings
        (10, 5, 5).
    """

    algorithm: str = "slam_ac"
    shared_actor_layers: tuple = ("conv1",)
    n_pursuers: int = 4
    n_evaders: int = 4
    max_cycles: int = 100
    n_catch: int = 2
    num_envs: int = 8
    iters_per_round: int = 16
    features: tuple = CNN_FEATURES
    critic_zero_init: bool = True
    advantage_reward: str = "local"
    actor_input: str = "local"
    critic_steps: int = 1
    mdac_batch: int = 10
    mdac_inner_steps: int = 5
    mdac_extra_consensus: int = 5

    def __post_init__(self):
        object.__setattr__(self, "algorithm", canonical_name(
            self.algorithm, ALGORITHMS, "pursuit algorithm",
            {"centralized": "central", "no_communication": "nocomm"}))
        layers = self.shared_actor_layers
        if isinstance(layers, str):
            layers = (layers,)
        layers = tuple(layers)
        bad = [x for x in layers if x not in ACTOR_LAYERS]
        if bad:
            raise ValueError(f"unknown actor layer(s) {bad}; the actor's layers are {ACTOR_LAYERS}")
        object.__setattr__(self, "shared_actor_layers", tuple(sorted(set(layers))))
        for name in ("n_pursuers", "n_evaders", "max_cycles", "n_catch", "num_envs",
                     "iters_per_round",
                     "critic_steps", "mdac_batch", "mdac_inner_steps"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        object.__setattr__(self, "mdac_extra_consensus",
                           check_int("mdac_extra_consensus", self.mdac_extra_consensus, 0))
        feats = tuple(int(f) for f in self.features)
        if len(feats) != 2 or min(feats) < 1:
            raise ValueError(f"features must be two positive channel counts, got {self.features!r}")
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "critic_zero_init", bool(self.critic_zero_init))
        if self.advantage_reward not in ADVANTAGE_REWARDS:
            raise ValueError(f"advantage_reward must be one of {ADVANTAGE_REWARDS}, "
                             f"got {self.advantage_reward!r}")
        if self.actor_input not in ACTOR_INPUTS:
            raise ValueError(f"actor_input must be one of {ACTOR_INPUTS}, got {self.actor_input!r}")
        if self.iters_per_round > self.batch_size:
            raise ValueError(f"iters_per_round={self.iters_per_round} exceeds the round's "
                             f"{self.batch_size} transitions")
        if (self.critic_rule == "mdac_fresh" and self.iters_per_round * self.mdac_inner_steps
                * self.mdac_batch > self.batch_size):
            raise ValueError(
                f"mdac needs iters_per_round*mdac_inner_steps*mdac_batch = "
                f"{self.iters_per_round * self.mdac_inner_steps * self.mdac_batch} fresh "
                f"transitions per round but a round has only {self.batch_size}")
        self.env()  # the environment's own checks (e.g. room to spawn)

    @property
    def n(self) -> int:
        """Number of learning agents (pursuers)."""
        return self.n_pursuers

    @property
    def batch_size(self) -> int:
        """Transitions per update round (environments × episode length)."""
        return self.num_envs * self.max_cycles

    @property
    def minibatch_size(self) -> int:
        """Transitions per iteration (batch_size // iters_per_round)."""
        return self.batch_size // self.iters_per_round

    @property
    def critic_rule(self) -> str:
        """The critic's consensus rule (by name)."""
        return ALGORITHMS[self.algorithm][0]

    @property
    def actor_rule(self) -> str:
        """The actor's update rule (by name)."""
        return ALGORITHMS[self.algorithm][1]

    @property
    def display_name(self) -> str:
        """The method's name in tables and figures."""
        return DISPLAY[self.algorithm]

    def env(self) -> PursuitEnv:
        """The environment of this configuration."""
        return PursuitEnv(n_pursuers=self.n_pursuers, n_evaders=self.n_evaders,
                          max_cycles=self.max_cycles, n_catch=self.n_catch)

    def nets(self):
        """(actor, value critic, reward estimator) modules."""
        z = self.critic_zero_init
        return (CNNActor(NUM_ACTIONS, self.features), CNNCritic(self.features, zero_out=z),
                CNNCritic(self.features, zero_out=z))

    def actor_obs_shape(self) -> tuple:
        """Shape of one actor input."""
        env = self.env()
        if self.actor_input == "local":
            return env.obs_shape
        return (4 if self.actor_input == "global_self" else 3, env.x_size, env.y_size)


class PursuitHyperParams(NamedTuple):
    """Traced hyperparameters (vmappable, never recompile): actor_lr = 1/α, critic_lr = 1/β
    (steps on the minibatch mean), rho = ρ, gamma = γ (critics), gamma_actor = γ_x (shared actor
    layers), discount = γ_d."""

    actor_lr: Any
    critic_lr: Any
    rho: Any
    gamma: Any
    gamma_actor: Any
    discount: Any


PAPER_ACTOR_STEP = 1e-4
PAPER_CRITIC_STEP = 1e-3
PAPER_RHO = 5.0


def make_pursuit_hparams(graph: Graph, config: PursuitACConfig | None = None, *,
                         actor_step=PAPER_ACTOR_STEP, critic_step=PAPER_CRITIC_STEP,
                         rho=PAPER_RHO, gamma="auto", gamma_actor="auto", discount=0.95,
                         check=True) -> PursuitHyperParams:
    """Validated hyperparameters.  ``actor_step`` / ``critic_step`` are per-sample steps (the
    paper's 1e-4 / 1e-3), multiplied by the minibatch size M of ``config``; ρ = 5 (paper);
    γ_d = 0.95 (not in the paper; as in the navigation experiments: with 0.99 the factor
    (1 − γ_d)^{-1} = 100 of eq. (212) made actor steps of 1e-3 per sample diverge in pilots).
    ``"auto"`` γ's critically damp the consensus recursion (:func:`slamjax.rl.core.auto_gamma`);
    a warning if ρ breaks the stability bound at either level."""
    config = PursuitACConfig() if config is None else config
    M = config.minibatch_size
    vals = positive_floats(actor_step=actor_step, critic_step=critic_step, rho=rho,
                           discount=discount)
    a_lr, c_lr, rho = vals["actor_step"] * M, vals["critic_step"] * M, vals["rho"]
    g = {}
    for name, val, lr in (("gamma", gamma, c_lr), ("gamma_actor", gamma_actor, a_lr)):
        if isinstance(val, str):
            if val != "auto":
                raise ValueError(f"{name} must be a positive number or 'auto', got {val!r}")
            val = auto_gamma(graph.lam_max, lr, rho)
            if val <= 0:  # no γ > 0 is stable at this (ρ, step): take 1 and warn below
                val = 1.0
        val = float(val)
        if not math.isfinite(val) or val <= 0:
            raise ValueError(f"{name} must be finite and > 0, got {val}")
        g[name] = val
        if check and graph.lam_max > 0 and rho >= stability_bound(graph.lam_max, 1 / lr, val):
            warnings.warn(f"SLAM consensus ({name}) is unstable: rho={rho} >= "
                          f"4*beta/(lam_max*(1+2*{name})) with 1/beta={lr:.4g}",
                          StabilityWarning, stacklevel=2)
    f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return PursuitHyperParams(f(a_lr), f(c_lr), f(rho), f(g["gamma"]), f(g["gamma_actor"]),
                              f(vals["discount"]))


def actor_mask(config: PursuitACConfig, actor_params) -> tuple:
    """One bool per leaf of the actor's parameter tree (``jax.tree.leaves`` order): True for the
    leaves of ``config.shared_actor_layers``."""
    paths = jax.tree_util.tree_flatten_with_path(actor_params)[0]
    out = []
    for path, _ in paths:
        keys = [getattr(p, "key", None) for p in path]
        out.append(any(k in config.shared_actor_layers for k in keys))
    return tuple(out)



ACTOR_RULES: dict[str, Callable[[tuple], Consensus]] = {
    "slam": lambda mask: primal_dual(mask, cache=False),
    "dgd": lambda mask: masked(gossip("atc"), mask),
    "central": lambda mask: masked(central(), mask),
    "local": lambda mask: local(),
}
"""Actor rule name -> the consensus transform of the actors' leaves given the per-leaf mask of
the shared layers (the private leaves always take the plain step)."""


def actor_consensus(rule: str, mask) -> Consensus:
    """The UL rule of every agent's actor leaves: the private leaves (``mask`` False) take
    θ ← θ + (1/α) ∇̂J, the shared ones (``mask`` True) ``slam`` = the primal–dual step (5b) +
    dual step (4d) with ρ and γ_x, ``dgd`` = the ascent step then one Metropolis mixing,
    ``central`` = the ascent step then the exact average, ``local`` = the ascent step only.
    Called once per configuration (:func:`slamjax.rl.pursuit_ac.method`)."""
    if rule not in ACTOR_RULES:
        raise ValueError(f"unknown actor rule {rule!r}; choose one of {tuple(ACTOR_RULES)}")
    return ACTOR_RULES[rule](tuple(mask))


def pursuit_graph(n: int) -> Graph:
    """The paper's pursuit graph: a ring over the n ≥ 3 pursuers."""
    return ring(check_int("n", n, 3))
