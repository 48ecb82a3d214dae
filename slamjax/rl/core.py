"""Shared pieces of the multi-agent actor-critic algorithms: configuration, hyperparameters,
state, the two lower-level (critic) losses and the one-step advantage of eq. (212).

Problem (211) of the paper (supplement §C.1), as implemented here for n agents:

* UL (one objective per agent, no consensus — SLAM-L, problem (8)): the policy θ_i of agent i
  maximises J(θ) = E Σ_r γ_d^r R̄(s^r, a^r), R̄ = (1/n) Σ_i R_i.
* LL task 1, value critic (211c): w* = argmin (1/n) Σ_i ½ E (R_i + γ_d V(s'; w_i) − V(s; w_i))²
  subject to w_i = w_j on the edges — each agent fits its *local* reward R_i, consensus makes
  all of them estimate the value of the team reward R̄. We take the semi-gradient (TD(0)):
  the target R_i + γ_d V(s'; w_i) is held fixed, so h_w = −E[δ_i ∇_w V(s; w_i)].
* LL task 2, reward estimator (211d): φ* = argmin (1/n) Σ_i ½ E (R_i − R̂(s, a; φ_i))²,
  φ_i = φ_j on the edges — after consensus R̂ estimates R̄, which agent i cannot observe.

**Why the critics read the velocities.** The environment follows mpe2 (PettingZoo MPE), whose
integrator moves the agents with their *old* velocity and only then applies the force:
p_{t+1} = p_t + v_t dt, v_{t+1} = (1 − damping) v_t + u(a_t) dt. So neither R_i(s_t, a_t)
(computed at p_{t+1}) nor the positions in s_{t+1} depend on a_t; the action shows up in the
positions two steps later. With the paper's 4n-dim state of positions only, the one-step
advantage R̂(s, a) + γ_d V(s') − V(s) of eq. (212) is then independent of a_i given s, so
E[δ̂ ∇ log π_i(a_i|s)] = 0: the actor step is pure noise and the policies drift to worse than
random (measured with SLAM-AC, n = 3, 5 seeds, 2000 rounds: −28.0 ± 0.5 against −27.7 at the
start, −25.9 for the random policy and −20.3 ± 0.2 with velocities;
``results/ablation.json``). (The original OpenAI MPE, which the paper used, updates the
velocity first, so there the action moves the agent within the step.) The critics
therefore read s = [positions (4n), agent velocities (2n)], a Markov state in which V(s')
depends on a_t through v_{t+1}; the actors keep the paper's 4n positions.

The ½ makes the critic step size 1/β the classical TD(0) / LMS step size. The "discount"
γ_d is called ``discount`` everywhere to keep it apart from SLAM's Lagrangian scaling γ
(``gamma``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.envs._checks import check_int as _pos_int
from slamjax.envs.navigation import NUM_ACTIONS, NavigationEnv
from slamjax.graphs import Graph
from slamjax.rl.nets import HIDDEN, Actor, MLPHead, apply_agents, reward_input
from slamjax.slam import StabilityWarning, stability_bound

__all__ = ["DISPLAY", "ALGORITHMS", "ACConfig", "ACHyperParams", "TrainState", "CriticBatch",
           "canonical_name", "positive_floats",
           "make_hparams", "auto_gamma", "canonical_algorithm", "critic_grads",
           "td_advantage", "check_actions"]

ALGORITHMS = {
    "slam_ac": ("slam", "pg"),
    "dac": ("dgd", "pg"),
    "mdac": ("mdac", "pg"),
    "slam_ppo": ("slam", "ppo"),
    "dec_ppo": ("dgd", "ppo"),
    "dac_extra_mixing": ("mdac", "pg"),
    "mdac_fresh": ("mdac_fresh", "pg"),
    "nocomm_ac": ("local", "pg"),
    "central_ac": ("central", "pg"),
    "nocomm_ppo": ("local", "ppo"),
    "central_ppo": ("central", "ppo"),
}
"""Algorithm -> (critic rule, actor rule), the names of the rules the trainer builds once per
configuration (:func:`slamjax.rl.critics.critic_rule`, :func:`slamjax.rl.train.method`).
Critic rules: "slam" = SLAM-L primal-dual consensus (eq. (5a)+(4b)); "dgd" = local gradient
step + one Metropolis mixing step (Zhang et al. 2018); "mdac" = the iteration's minibatch
split into B-sample inner steps with mixing, then extra mixing (the figures' "MDAC"; also
named "dac_extra_mixing"); "mdac_fresh" = MDAC as Chen et al. 2022: every inner step on its
own fresh B-sample minibatch, independent of the actor's; controls: "local" = no
communication (local gradient steps only), "central" = one centralized critic fitted to the
team reward (exact averaging; the ideal every consensus rule approximates). Actor rules: "pg"
= eq. (212); "ppo" = clipped surrogate (Schulman et al. 2017)."""
DISPLAY = {"slam_ac": "SLAM-AC", "dac": "DAC", "mdac": "MDAC", "slam_ppo": "SLAM-PPO",
           "dec_ppo": "Dec-PPO", "dac_extra_mixing": "DAC + extra mixing",
           "mdac_fresh": "MDAC (fresh minibatches)", "nocomm_ac": "no communication",
           "central_ac": "centralized critic", "nocomm_ppo": "PPO, no communication",
           "central_ppo": "PPO, centralized critic"}
"""Display names of the algorithms."""


def canonical_name(name: str, table, what: str = "algorithm", aliases=None) -> str:
    """``name`` as a key of ``table``: case, surrounding blanks and '-' vs '_' ignored, then
    ``aliases`` (normalised spelling -> key) applied; unknown names are a ValueError naming
    ``what`` and the choices."""
    if not isinstance(name, str):
        raise ValueError(f"algorithm must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = (aliases or {}).get(key, key)
    if key not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {tuple(table)}")
    return key


def canonical_algorithm(name: str) -> str:
    """'SLAM-AC', 'slam_ac', 'slam-ac' -> 'slam_ac'; unknown names are a ValueError."""
    return canonical_name(name, ALGORITHMS)


def positive_floats(**vals) -> dict:
    """The values as floats, each finite and > 0 (a ValueError naming the first that is not);
    a ``discount`` must also be < 1."""
    out = {}
    for k, v in vals.items():
        v = float(v)
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{k} must be finite and > 0, got {v}")
        out[k] = v
    if out.get("discount", 0.0) >= 1.0:
        raise ValueError(f"discount must lie in (0, 1), got {out['discount']}")
    return out


@dataclasses.dataclass(frozen=True)
class ACConfig:
    """Static (hashable) configuration of a training run; changing it recompiles.

    Attributes:
      algorithm: ``slam_ac`` | ``dac`` | ``mdac`` | ``slam_ppo`` | ``dec_ppo``.
      n: number of agents (= landmarks). Paper Fig. 1 does not state n; we use 3 (the MPE
        ``simple_spread`` default); Fig. 5 uses 4, 6, 8, 10.
      num_envs: parallel environments per update round (16); each runs one full episode, so a
        round collects ``num_envs × max_steps`` = 400 transitions.
      max_steps: episode length (25, the MPE default ``max_cycles``).
      hidden: hidden units of every network (20, paper §C.2).
      actor_optimizer: ``"adam"`` (default) or ``"sgd"``; the step size is ``actor_lr``.
      iters_per_round: K, iterations per update round (8). A round collects one episode in
        each environment (E·T = 400 transitions), shuffles them into K minibatches of
        M = E·T/K = 50 and runs K iterations, each one LL step and one UL step on its
        minibatch (Algorithm 2). Every transition is used once per round by every algorithm.
      critic_steps: critic (LL) steps per iteration for the ``slam`` and ``dgd`` rules (1, as
        in Algorithm 2: one LL step, then one UL step).
      mdac_batch: MDAC's critic mini-batch B (10, paper §4).
      mdac_extra_consensus: extra mixing rounds after MDAC's critic inner loop (5).
      mdac_inner_steps: T_c, inner critic steps per iteration of ``mdac_fresh`` (5), each on
        its own fresh minibatch of ``mdac_batch`` transitions; the round's transitions are
        dealt out once to the K·T_c critic minibatches (so K·T_c·B ≤ E·T) and, independently,
        once to the K actor minibatches.
      reward_split, nuisance_scale, nuisance_seed: heterogeneous rewards of the environment
        (``"shared"``, 0.0, 0: mpe2's rewards; see :class:`slamjax.envs.NavigationEnv`).
        ``nuisance_scale`` is absolute (reward units); :func:`slamjax.rl.nuisance_scale`
        converts a multiple of std(R).
      track_central: also train, on the same minibatches, a reference centralized critic fitted
        to the team reward (started from the average of the agents' initial critics), and log
        every agent's critic error against it on a fixed batch of states (metrics
        ``value_err``, ``rhat_err`` and per agent ``value_err_agent``), plus ``consensus_w``
        (‖Aw‖², value critic only). Off by default (no extra compute).
      ppo_epochs, ppo_minibatches: PPO actor epochs over the iteration's batch and minibatches
        per epoch (4 and 4).
      local_ratio: weight of the local collision reward in R_i (0.5, the MPE default).
      actor_velocities: actors also read the agents' velocities (False: the paper's 4n-dim
        global state of positions).
      critic_velocities: critics (V and R̂) also read the agents' velocities (True; see the
        module docstring — without them the one-step advantage of eq. (212) carries no
        information about the action under mpe2's physics).
    """

    algorithm: str = "slam_ac"
    n: int = 3
    num_envs: int = 16
    max_steps: int = 25
    hidden: int = HIDDEN
    actor_optimizer: str = "adam"
    iters_per_round: int = 8
    critic_steps: int = 1
    mdac_batch: int = 10
    mdac_extra_consensus: int = 5
    mdac_inner_steps: int = 5
    ppo_epochs: int = 4
    ppo_minibatches: int = 4
    local_ratio: float = 0.5
    actor_velocities: bool = False
    critic_velocities: bool = True
    reward_split: str = "shared"
    nuisance_scale: float = 0.0
    nuisance_seed: int = 0
    track_central: bool = False

    def __post_init__(self):
        object.__setattr__(self, "algorithm", canonical_algorithm(self.algorithm))
        if isinstance(self.n, bool) or not isinstance(self.n, (int, np.integer)) or self.n < 1:
            raise ValueError(f"n (number of agents) must be an int >= 1, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        for name in ("num_envs", "max_steps", "hidden", "iters_per_round", "critic_steps",
                     "mdac_batch", "mdac_inner_steps",
                     "ppo_epochs", "ppo_minibatches"):
            object.__setattr__(self, name, _pos_int(name, getattr(self, name)))
        object.__setattr__(self, "mdac_extra_consensus",
                           _pos_int("mdac_extra_consensus", self.mdac_extra_consensus, 0))
        opt = str(self.actor_optimizer).lower()
        if opt not in ("adam", "sgd"):
            raise ValueError(f"actor_optimizer must be 'adam' or 'sgd', "
                             f"got {self.actor_optimizer!r}")
        object.__setattr__(self, "actor_optimizer", opt)
        object.__setattr__(self, "actor_velocities", bool(self.actor_velocities))
        object.__setattr__(self, "critic_velocities", bool(self.critic_velocities))
        if self.batch_size % self.ppo_minibatches:
            raise ValueError(f"ppo_minibatches={self.ppo_minibatches} must divide the batch of "
                             f"num_envs*max_steps={self.batch_size} transitions")
        if self.iters_per_round > self.batch_size:
            raise ValueError(f"iters_per_round={self.iters_per_round} exceeds the round's "
                             f"{self.batch_size} transitions")
        if self.critic_rule == "mdac" and self.mdac_batch > self.minibatch_size:
            raise ValueError(f"mdac_batch={self.mdac_batch} exceeds the iteration's minibatch "
                             f"of {self.minibatch_size} transitions")
        if (self.critic_rule == "mdac_fresh" and self.iters_per_round * self.mdac_inner_steps
                * self.mdac_batch > self.batch_size):
            raise ValueError(
                f"mdac_fresh needs iters_per_round*mdac_inner_steps*mdac_batch = "
                f"{self.iters_per_round * self.mdac_inner_steps * self.mdac_batch} fresh "
                f"transitions per round but a round has only {self.batch_size}")
        object.__setattr__(self, "track_central", bool(self.track_central))
        env = self.env()  # checks reward_split / nuisance_*
        object.__setattr__(self, "reward_split", env.reward_split)
        object.__setattr__(self, "nuisance_scale", env.nuisance_scale)
        object.__setattr__(self, "nuisance_seed", env.nuisance_seed)

    @property
    def batch_size(self) -> int:
        """Transitions per update round (environments × episode length)."""
        return self.num_envs * self.max_steps

    @property
    def minibatch_size(self) -> int:
        """M = transitions per iteration (E·T // K)."""
        return self.batch_size // self.iters_per_round

    @property
    def actor_dim(self) -> int:
        """Length of the actors' input."""
        return 4 * self.n + (2 * self.n if self.actor_velocities else 0)

    @property
    def critic_dim(self) -> int:
        """Length of the critics' input."""
        return 4 * self.n + (2 * self.n if self.critic_velocities else 0)

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

    def env(self) -> NavigationEnv:
        """The environment of this configuration."""
        return NavigationEnv(self.n, max_steps=self.max_steps, local_ratio=self.local_ratio,
                             reward_split=self.reward_split, nuisance_scale=self.nuisance_scale,
                             nuisance_seed=self.nuisance_seed)

    @property
    def comm_rounds(self) -> int | None:
        """Communication rounds (each agent sends its critic parameters to every neighbour
        once) per iteration, i.e. per actor step; ``None`` for the centralized critic (an exact
        average: an all-reduce, not neighbour gossip). SLAM: one exchange of y per critic step
        (L·y⁺ of the dual step is reused by the next primal step); DGD: one mixing per critic
        step; MDAC: one mixing per inner step plus the extra mixings; no communication: 0."""
        rule = self.critic_rule
        if rule in ("slam", "dgd"):
            return self.critic_steps
        if rule == "mdac":
            return self.minibatch_size // self.mdac_batch + self.mdac_extra_consensus
        if rule == "mdac_fresh":
            return self.mdac_inner_steps + self.mdac_extra_consensus
        if rule == "local":
            return 0
        return None

    @property
    def critic_samples(self) -> int:
        """Transitions behind the critic updates of one iteration (each counted once)."""
        if self.critic_rule == "mdac_fresh":
            return self.mdac_inner_steps * self.mdac_batch
        return self.minibatch_size

    def nets(self):
        """(actor, value critic, reward estimator) modules."""
        return Actor(NUM_ACTIONS, self.hidden), MLPHead(self.hidden), MLPHead(self.hidden)


class ACHyperParams(NamedTuple):
    """Traced hyperparameters (changing them never recompiles; they can be vmapped).

    actor_lr = 1/α (UL step), critic_lr = 1/β (LL step), rho = ρ (SLAM penalty), gamma = γ
    (SLAM's Lagrangian scaling), discount = γ_d, clip_eps (PPO), gae_lambda (PPO).
    """

    actor_lr: Any
    critic_lr: Any
    rho: Any
    gamma: Any
    discount: Any
    clip_eps: Any
    gae_lambda: Any


def auto_gamma(lam_max: float, critic_lr: float, rho: float) -> float:
    """SLAM's γ that critically damps the consensus recursion on the stiffest Laplacian mode.

    On an eigenmode μ of L the LL recursion (two-step form (6), gradients aside) has
    characteristic polynomial z² − (2 − s(1+γ)) z + (1 − sγ), s = ρμ/β. Its roots are real and
    equal (z = 1 − √s) when s(1+γ)² = 4, i.e. γ = 2/√s − 1. With ρ = 0.1, 1/β = 0.05 and
    λ_max = 3 (n = 3): s = 0.015 and γ ≈ 15.3, so disagreement decays by 1 − √s ≈ 0.88 per
    iteration; with γ = 1 the modes would oscillate (≈ 0.12 rad per iteration) and decay only
    by ≈ 1 − sγ/2 ≈ 0.993 per iteration. The value is clipped to [1, half of the stability
    limit ρλ_max(1+2γ) < 4β].
    """
    if lam_max <= 0:
        return 1.0
    s = rho * lam_max * critic_lr
    g = 2.0 / math.sqrt(s) - 1.0
    g_stab = (4.0 / (rho * lam_max * critic_lr) - 1.0) / 2.0
    return float(min(max(g, 1.0), 0.5 * g_stab))


PAPER_CRITIC_STEP_PER_SAMPLE = 1e-3
"""The paper's critic step size 1e-3 is a per-sample (online) step; one iteration here averages
the gradient over a minibatch of M = 50 transitions, so the same per-sample step is 1/β = M ×
1e-3 = 0.05 on the mean loss (linear scaling: one step on the mean of M samples with step M·η
moves as far, to first order, as M online steps of size η)."""
PAPER_ACTOR_STEP = 1e-4
PAPER_RHO = 0.1
DEFAULT_MINIBATCH = 50


def make_hparams(graph: Graph, *, actor_lr=PAPER_ACTOR_STEP,
                 critic_lr=PAPER_CRITIC_STEP_PER_SAMPLE * DEFAULT_MINIBATCH, rho=PAPER_RHO,
                 gamma="auto",
                 discount=0.95, clip_eps=0.2, gae_lambda=0.95, gamma_from=None,
                 check=True) -> ACHyperParams:
    """Validated hyperparameters.

    Defaults (paper §C.2 where it gives them): actor step 1e-4 (Adam), critic step
    1/β = 0.05 on the minibatch-mean loss (= the paper's 1e-3 per sample × M = 50 samples, see
    ``PAPER_CRITIC_STEP_PER_SAMPLE``), ρ = 0.1, discount γ_d = 0.95, PPO clip 0.2, GAE λ 0.95.

    ``gamma="auto"`` uses :func:`auto_gamma` at (critic_lr, rho) — or at ``gamma_from =
    (critic_lr, rho)`` if given (Fig. 6 keeps γ of the base setting while it varies ρ and 1/β).
    """
    vals = positive_floats(actor_lr=actor_lr, critic_lr=critic_lr, rho=rho, discount=discount,
                           clip_eps=clip_eps, gae_lambda=gae_lambda)
    if vals["gae_lambda"] > 1.0:
        raise ValueError(f"gae_lambda must lie in (0, 1], got {vals['gae_lambda']}")
    if isinstance(gamma, str):
        if gamma != "auto":
            raise ValueError(f"gamma must be a positive number or 'auto', got {gamma!r}")
        lr0, rho0 = gamma_from if gamma_from is not None else (vals["critic_lr"], vals["rho"])
        gamma = auto_gamma(graph.lam_max, float(lr0), float(rho0))
    gamma = float(gamma)
    if not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be finite and > 0, got {gamma}")
    if check and graph.lam_max > 0:
        bound = stability_bound(graph.lam_max, 1.0 / vals["critic_lr"], gamma)
        if vals["rho"] >= bound:
            warnings.warn(f"SLAM critic consensus is unstable: rho={vals['rho']} >= "
                          f"{bound:.4g} = 4*beta/(lam_max*(1+2*gamma)) "
                          f"(lam_max={graph.lam_max:.3g},"
                          f" beta={1 / vals['critic_lr']:.4g}, gamma={gamma:.4g})",
                          StabilityWarning, stacklevel=2)
    f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return ACHyperParams(f(vals["actor_lr"]), f(vals["critic_lr"]), f(vals["rho"]), f(gamma),
                         f(vals["discount"]), f(vals["clip_eps"]), f(vals["gae_lambda"]))


class TrainState(NamedTuple):
    """Per-run state: actors θ (UL), their optimizer state, critics y = {"w", "phi"} (LL),
    the critic rule's consensus state (SLAM: ``PrimalDualState`` holding the duals u = Aᵀω;
    ``()`` for the stateless rules), PRNG key, iteration."""

    actor: Any
    actor_opt: Any
    critic: Any
    critic_consensus: Any
    key: Any
    step: Any
    central: Any = None  # reference centralized critic (ACConfig.track_central), else None
    eval_batch: Any = None  # fixed CriticBatch of states for the critic errors, else None
    critic_ema: Any = None  # moving average of the critics over rounds (track_central)


class CriticBatch(NamedTuple):
    """Flat batch for the critic losses: obs (B, d_c) critic state features, rin = [s, one-hot
    a] (B, d_c + 5n), rewards (B, n), next_obs (B, d_c)."""

    obs: jax.Array
    rin: jax.Array
    rewards: jax.Array
    next_obs: jax.Array


def make_batch(obs, actions, rewards, next_obs) -> CriticBatch:
    return CriticBatch(obs, reward_input(obs, actions, NUM_ACTIONS), rewards, next_obs)


def critic_grads(value_net, reward_net, critic, batch: CriticBatch, discount):
    """Per-agent gradients h_g of the two LL losses at y = critic; also the mean squared TD
    error per agent (n,). ``critic = {"w": ..., "phi": ...}`` with the agent axis first."""

    def one(p, r):
        def loss(p):
            v = value_net.apply(p["w"], batch.obs)
            v_next = jax.lax.stop_gradient(value_net.apply(p["w"], batch.next_obs))
            td = r + discount * v_next - v
            rh = reward_net.apply(p["phi"], batch.rin)
            return 0.5 * jnp.mean(td ** 2) + 0.5 * jnp.mean((r - rh) ** 2), jnp.mean(td ** 2)

        return jax.grad(loss, has_aux=True)(p)

    return jax.vmap(one, in_axes=(0, 1))(critic, batch.rewards)


def td_advantage(value_net, reward_net, critic, obs, rin, next_obs, discount):
    """δ̂_i = R̂(s, a; φ_i) + γ_d V(s'; w_i) − V(s; w_i) for every agent: shape (n, B)."""
    v = apply_agents(value_net, critic["w"], obs)
    v_next = apply_agents(value_net, critic["w"], next_obs)
    rh = apply_agents(reward_net, critic["phi"], rin)
    return rh + discount * v_next - v


def check_actions(actions, n: int, batch: int | None = None) -> None:
    """Clear errors for a joint-action array: shape (B, n), integer, values in [0, 4].

    Values are only checked when concrete (inside jit they cannot be inspected)."""
    shape = tuple(jnp.shape(actions))
    if len(shape) != 2 or shape[1] != n or (batch is not None and shape[0] != batch):
        want = f"({batch if batch is not None else 'B'}, {n})"
        raise ValueError(f"actions must have shape {want} (one action index per sample and "
                         f"agent), got {shape}")
    if not jnp.issubdtype(jnp.asarray(actions).dtype if not isinstance(actions, jax.core.Tracer)
                          else actions.dtype, jnp.integer):
        raise ValueError(f"actions must be integer action indices in [0, {NUM_ACTIONS - 1}], "
                         f"got dtype {jnp.asarray(actions).dtype}")
    if not isinstance(actions, jax.core.Tracer):
        a = np.asarray(actions)
        bad = (a < 0) | (a >= NUM_ACTIONS)
        if bad.any():
            raise ValueError(f"invalid action index {a[bad].flat[0]}: actions must lie in "
                             f"[0, {NUM_ACTIONS - 1}] (stay, left, right, down, up)")
