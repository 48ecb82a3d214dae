"""Decentralized actor-critic on pursuit-evasion with partial parameter sharing (paper §4, Figs 2
and 4; supplement §C.3): SLAM-AC against CAC and MDAC, with the no-communication and
centralized controls.

Problem (211) of the paper on :class:`slamjax.envs.PursuitEnv` (per-pursuer rewards): agent i
holds an actor θ_i (UL) and a value critic V(s; w_i) (LL) fitted by TD(0) to its *local* reward
R_i; consensus on the critic makes every agent estimate the team value.  The actor ascends
(1 − γ_d)^{-1} E[δ_i ∇ log π_i(a_i|o_i)] at the new critics, with the TD error

* ``advantage_reward="local"`` (default): δ_i = R_i + γ_d V(s'; w_i) − V(s; w_i) — the agent's
  own observed reward with the (consensus) critic as bootstrap, the local-TD-error actor of
  networked AC with local rewards;
* ``advantage_reward="estimate"``: eq. (212) as written, δ_i = R̂(s, a; φ_i) + γ_d V(s'; w_i) −
  V(s; w_i), with a second LL task, a reward CNN R̂ fitted to R_i and kept in consensus so that
  it estimates R̄ = (1/n) Σ_i R_i.

Why the default departs from eq. (212): in a pilot the R̂ variant did not learn within the
budget of the reproduction (``experiments/pursuit_pilot.py``: 4 pursuers, 10 evaders,
single-pursuer captures, 25-step episodes, 3 seeds, 60 rounds, no communication, actor step
3e-4 per sample): capture rate 0.276 in the first tenth of the run and 0.272 in the last,
against 0.273 → 0.390 with the observed reward (random team 0.267).  R̂ has to learn
a product of two image channels (a pursuer landing on an evader) before the actor gets any
signal, and after consensus it carries only 1/n of the agent's own capture.  Every algorithm
uses the same TD error, so the comparison of consensus rules is unaffected by the choice.

**Partial parameter sharing** (the paper follows Zeng et al. [23]): the actor layers named in
``PursuitACConfig.shared_actor_layers`` (Fig 2: ``("conv1",)``, the first convolution) are also
kept in consensus, the other actor layers stay private; Fig 4 shares no actor layer (critics
only).  Every algorithm uses the same sharing scheme; only the rule that enforces it differs:

=============  ===========================================  ====================================
algorithm      critics (V, and R̂ with "estimate")           shared actor layers
=============  ===========================================  ====================================
``slam_ac``    SLAM primal–dual (5a)+(4b), ρ, γ              SLAM primal–dual (5b)+(4d), ρ, γ_x
               (:func:`slamjax.primal_dual_update`)          (per-leaf mask: SLAM, Algorithm 1)
``cac``        local step + one Metropolis mixing (DGD)      local step + one mixing (Zeng et al.)
``mdac``       5 inner steps on fresh B = 10 minibatches,    local step + one mixing (as CAC)
               one mixing each, then 5 extra mixings
``nocomm``     local steps, no communication                 private (nothing shared)
``central``    one critic fitted to R̄ (exact average)       exact average over the agents
=============  ===========================================  ====================================

Private actor leaves always take the plain step θ ← θ + (1/α) ∇̂J.  Steps are plain (no Adam):
an adaptive optimizer on a variable in consensus breaks SLAM's eq. (5b).

**Inputs.**  Critics read the paper's global state s = 3 × 15 × 15 (counts of pursuers, alive
evaders, obstacles).  The reward estimator R̂(s, a) reads the *afterstate* of the pursuers'
moves, 4 × 15 × 15 = [pursuers before, pursuers after the joint action, evaders, obstacles]:
the pursuers' moves are deterministic (agents never block each other), the capture reward is
decided on the pursuers' new cells before the evaders move, so the team reward R̄ that the
estimators agree on is a function of this afterstate (up to the small tag reward's sub-step
order); the pursuers' new cells are read off
the next state s' (the evaders move after the capture check).  The actors read, by default
(``actor_input="local"``), the reference's own observation, the 7 × 7 view centred on the
pursuer (PettingZoo's ``observe``).  The paper's actors read the global state, in which the
pursuers are anonymous counts: an actor cannot tell where *it* is, so no policy of the form
"move towards the nearest evader" is representable.  ``actor_input="global_self"`` adds a
one-hot channel of the agent's own cell to the global state; ``"global"`` is the paper-literal
input.  The local view is also 4.6× fewer pixels, which matters for the CPU budget.  The
critics' output layers start at zero (``critic_zero_init``): a random critic's variation over
the grid would enter γ_d V(s') − V(s) as a bias on every move before the critic has learned.

**Data.**  An update round collects one episode of ``max_cycles`` steps in each of
``num_envs`` environments (E·T transitions), shuffles them into K = ``iters_per_round``
minibatches of M and runs K iterations (critic rule, then one actor step at the new critics) —
the same transitions for every algorithm (MDAC's fresh critic minibatches are dealt out from
the same round).  When every evader is caught the environment stays in the absorbing state with
no evader and zero reward until the round's episode ends; those transitions teach V(∅) = 0 and
carry no policy gradient in expectation.  The time limit is a truncation without a clock in the
state, bootstrapped like every other step.

**Step sizes.**  The paper's critic 1e-3 and actor 1e-4 are read per sample, as in the
navigation experiments: on the mean over M samples they become 1e-3·M and 1e-4·M
(:func:`make_pursuit_hparams`).  ρ = 5 (paper); γ (critics) and γ_x (actors) critically damp the
stiffest Laplacian mode (:func:`slamjax.rl.core.auto_gamma`), clipped to half the stability
bound ρ λ_max (1 + 2γ) < 4β.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.envs._checks import check_int
from slamjax.envs.pursuit import NUM_ACTIONS, PursuitEnv
from slamjax.graphs import Graph, ring
from slamjax.rl.cnn import CNN_FEATURES, CNNActor, CNNCritic
from slamjax.rl.core import (CriticBatch, auto_gamma, canonical_name, critic_grads,
                             positive_floats)
from slamjax.rl.nets import apply_agents, init_agents
from slamjax.rl.train import (CRITIC_RULES, compile_program, first_nonfinite, graph_info,
                              lanes)
from slamjax.run import drive
from slamjax.slam import StabilityWarning, primal_dual_update, stability_bound

__all__ = ["ALGORITHMS", "DISPLAY", "ACTOR_LAYERS", "PursuitACConfig", "PursuitHyperParams",
           "PursuitTrainState", "PursuitResult", "make_pursuit_hparams", "actor_mask",
           "actor_inputs", "afterstate", "value_grads", "collect", "init_state", "iteration", "make_train",
           "run", "random_capture_rate", "METRICS"]

#: algorithm -> (critic rule, actor rule); critic rules are those of :mod:`slamjax.rl.train`
ALGORITHMS = {
    "slam_ac": ("slam", "slam"),
    "cac": ("dgd", "dgd"),
    "mdac": ("mdac_fresh", "dgd"),
    "nocomm": ("local", "local"),
    "central": ("central", "central"),
}
DISPLAY = {"slam_ac": "SLAM-AC", "cac": "CAC", "mdac": "MDAC", "nocomm": "no communication",
           "central": "centralized"}
#: the actor's layers (parameter-tree keys of :class:`slamjax.rl.cnn.CNNActor`)
ACTOR_LAYERS = ("conv1", "conv2", "out")
#: the reward in the actor's TD error (module docstring)
ADVANTAGE_REWARDS = ("local", "estimate")
#: what the actors read (module docstring)
ACTOR_INPUTS = ("local", "global_self", "global")
METRICS = ("return", "capture_rate", "consensus_critic", "consensus_actor_shared",
           "consensus_actor_private", "td_sq", "entropy")


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
        return self.n_pursuers

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.max_cycles

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.iters_per_round

    @property
    def critic_rule(self) -> str:
        return ALGORITHMS[self.algorithm][0]

    @property
    def actor_rule(self) -> str:
        return ALGORITHMS[self.algorithm][1]

    @property
    def display_name(self) -> str:
        return DISPLAY[self.algorithm]

    def env(self) -> PursuitEnv:
        return PursuitEnv(n_pursuers=self.n_pursuers, n_evaders=self.n_evaders,
                          max_cycles=self.max_cycles, n_catch=self.n_catch)

    def nets(self):
        """(actor, value critic, reward estimator) modules."""
        z = self.critic_zero_init
        return (CNNActor(NUM_ACTIONS, self.features), CNNCritic(self.features, zero_out=z),
                CNNCritic(self.features, zero_out=z))

    def actor_obs_shape(self) -> tuple:
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
    (1 − γ_d)^{-1} = 100 of eq. (212) made actor steps of 1e-3 per sample diverge in pilots).  ``"auto"`` γ's critically damp the
    consensus recursion (:func:`slamjax.rl.core.auto_gamma`); a warning if ρ breaks the
    stability bound at either level."""
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


class PursuitTrainState(NamedTuple):
    """Actors θ (UL) and their duals u_x, critics y = {"w", "phi"} (LL) and their duals u_y
    (duals are zeros and unused outside SLAM), PRNG key, round counter."""

    actor: Any
    actor_dual: Any
    critic: Any
    critic_dual: Any
    key: Any
    step: Any


class Transitions(NamedTuple):
    """One round of data, leading axes (T, E): global states s and s' (3, X, Y), the pursuers'
    cells (n, 2) at s, joint actions (n,), per-pursuer rewards (n,), evaders alive after the
    step (n_evaders,); ``obs`` (n, C, H, W) are the actors' inputs (:func:`actor_inputs`)."""

    gs: jax.Array
    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_gs: jax.Array
    alive: jax.Array


def actor_mask(config: PursuitACConfig, actor_params) -> tuple:
    """One bool per leaf of the actor's parameter tree (``jax.tree.leaves`` order): True for the
    leaves of ``config.shared_actor_layers``."""
    paths = jax.tree_util.tree_flatten_with_path(actor_params)[0]
    out = []
    for path, _ in paths:
        keys = [getattr(p, "key", None) for p in path]
        out.append(any(k in config.shared_actor_layers for k in keys))
    return tuple(out)


def actor_inputs(config: PursuitACConfig, state, gs=None) -> jax.Array:
    """Every agent's actor input at one environment state: (n, C, H, W) — the reference's
    local view (``"local"``: (n, 3, 7, 7)), the global state plus a one-hot channel of the
    agent's own cell (``"global_self"``: (n, 4, X, Y)) or the global state (``"global"``).
    ``gs``: the state's global state if the caller has it already."""
    env = config.env()
    gs = env.global_state(state) if gs is None else gs
    if config.actor_input == "local":
        return env.observations(state, gs)
    n = config.n
    if config.actor_input == "global":
        return jnp.broadcast_to(gs, (n,) + gs.shape)
    X, Y = gs.shape[-2:]
    pos = state.pursuer_pos
    own = (jax.nn.one_hot(pos[:, 0], X, dtype=gs.dtype)[:, :, None]
           * jax.nn.one_hot(pos[:, 1], Y, dtype=gs.dtype)[:, None, :])  # (n, X, Y)
    return jnp.concatenate([jnp.broadcast_to(gs, (n,) + gs.shape), own[:, None]], axis=1)


def afterstate(gs, next_gs):
    """Input of the reward estimator: [pursuers at s, pursuers after the move (= at s'),
    evaders at s, obstacles], shape (..., 4, X, Y)."""
    return jnp.stack([gs[..., 0, :, :], next_gs[..., 0, :, :], gs[..., 1, :, :],
                      gs[..., 2, :, :]], axis=-3)


def _sample(actor, actor_params, inp, key):
    logits = jnp.swapaxes(apply_agents(actor, actor_params, inp, shared_input=False), 0, 1)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32), logits


def collect(config: PursuitACConfig, actor_params, key) -> Transitions:
    """One episode of ``max_cycles`` steps in each of ``num_envs`` environments with the joint
    policy (``actor_params=None``: uniformly random actions).  Pure; jit/vmap-able."""
    env = config.env()
    actor = config.nets()[0]
    E, n = config.num_envs, config.n
    k_reset, k_steps = jax.random.split(key)
    states = jax.vmap(env.reset)(jax.random.split(k_reset, E))
    global_state = jax.vmap(env.global_state)

    def body(carry, k):  # the carry holds each state's global state: computed once per step
        states, gs = carry
        k_act, k_env = jax.random.split(k)
        obs = jax.vmap(functools.partial(actor_inputs, config))(states, gs)  # (E, n, C, H, W)
        if actor_params is None:
            actions = jax.random.randint(k_act, (E, n), 0, NUM_ACTIONS, jnp.int32)
        else:
            actions, _ = _sample(actor, actor_params, jnp.swapaxes(obs, 0, 1), k_act)
        nxt, rewards, _ = jax.vmap(env.step)(jax.random.split(k_env, E), states, actions)
        next_gs = global_state(nxt)
        return (nxt, next_gs), Transitions(gs, obs, actions, rewards, next_gs, nxt.evader_alive)

    _, traj = lax.scan(body, (states, global_state(states)),
                       jax.random.split(k_steps, config.max_cycles))
    return traj


def episode_stats(traj: Transitions):
    """(team return, capture rate): the mean over environments of Σ_t R̄_t (R̄ = mean over
    pursuers) and of the fraction of evaders caught by the end of the episode."""
    ret = jnp.mean(jnp.sum(jnp.mean(traj.rewards, axis=-1), axis=0))
    caught = 1.0 - jnp.mean(traj.alive[-1].astype(jnp.float32))
    return ret, caught


@functools.lru_cache(maxsize=16)
def _random_fn(config: PursuitACConfig):
    return jax.jit(jax.vmap(lambda k: jnp.stack(episode_stats(collect(config, None, k)))))


def random_capture_rate(config: PursuitACConfig, episodes: int = 256, seed: int = 0) -> dict:
    """Team return and capture rate of the uniformly random joint policy (the floor a learner
    must beat), over ``episodes`` episodes (rounded up to whole rounds)."""
    rounds = max(1, -(-int(episodes) // config.num_envs))
    out = np.asarray(_random_fn(config)(jax.random.split(jax.random.key(seed), rounds)))
    return {"return": float(out[:, 0].mean()), "capture_rate": float(out[:, 1].mean()),
            "episodes": rounds * config.num_envs}


def init_state(config: PursuitACConfig, key) -> PursuitTrainState:
    """Independent random networks for every agent (agents start apart, so consensus has work
    to do); duals zero."""
    actor, vnet, rnet = config.nets()
    env = config.env()
    X, Y = env.x_size, env.y_size
    n = config.n
    ka, kw, kp, kr = jax.random.split(key, 4)
    actor_params = init_agents(actor, ka, n, jnp.zeros(config.actor_obs_shape()))
    critic = {"w": init_agents(vnet, kw, n, jnp.zeros((3, X, Y)))}
    if config.advantage_reward == "estimate":
        critic["phi"] = init_agents(rnet, kp, n, jnp.zeros((4, X, Y)))
    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    return PursuitTrainState(actor_params, zeros(actor_params), critic, zeros(critic), kr,
                             jnp.zeros((), jnp.int32))


def value_grads(value_net, critic, batch: CriticBatch, discount):
    """Per-agent gradient of the TD(0) loss ½ mean (R_i + γ_d V(s'; w_i) − V(s; w_i))² (target
    held fixed) for ``critic = {"w": ...}``; also the mean squared TD error per agent (n,)."""

    def one(p, r):
        def loss(p):
            v = value_net.apply(p["w"], batch.obs)
            v_next = lax.stop_gradient(value_net.apply(p["w"], batch.next_obs))
            td = r + discount * v_next - v
            return 0.5 * jnp.mean(td ** 2), jnp.mean(td ** 2)

        return jax.grad(loss, has_aux=True)(p)

    return jax.vmap(one, in_axes=(0, 1))(critic, batch.rewards)


def _pg_grads(actor, actor_params, inp, actions, adv, discount):
    """Eq. (212) for every agent on per-agent inputs ``inp`` (n, B, C, X, Y): the ascent
    direction (1 − γ_d)^{-1} mean_b adv_{i,b} ∇ log π_i(a_{b,i} | inp_{i,b})."""

    def one(theta, x, a_i, adv_i):
        def surrogate(th):
            logp = jax.nn.log_softmax(actor.apply(th, x))
            logp_a = jnp.take_along_axis(logp, a_i[:, None], axis=-1)[:, 0]
            return jnp.mean(lax.stop_gradient(adv_i) * logp_a) / (1.0 - discount)

        return jax.grad(surrogate)(theta)

    return jax.vmap(one, in_axes=(0, 0, 1, 0))(actor_params, inp, actions, adv)


def actor_update(rule: str, actor_params, grads, dual, mask, graph: Graph, hp):
    """One UL step of every agent: ascent on the private leaves; the shared leaves (``mask``)
    by the rule: ``slam`` = primal–dual step (5b) + dual step (4d), ``dgd`` = ascent then one
    Metropolis mixing, ``central`` = ascent then the exact average, ``local`` = ascent only."""
    h = jax.tree.map(jnp.negative, grads)
    if rule == "slam" and any(mask):
        return primal_dual_update(actor_params, h, dual, mask, graph, hp.actor_lr, hp.rho,
                                  hp.gamma_actor)
    leaves, treedef = jax.tree.flatten(actor_params)
    new = []
    for v, g, on in zip(leaves, jax.tree.leaves(h), mask):
        v = v - hp.actor_lr.astype(v.dtype) * g
        if on and rule == "dgd":
            v = graph.mix(v)
        elif on and rule == "central":
            v = jnp.broadcast_to(jnp.mean(v, axis=0, keepdims=True), v.shape)
        new.append(v)
    return jax.tree.unflatten(treedef, new), dual


def _disagreement(graph: Graph, params, mask, want: bool):
    leaves = [v for v, on in zip(jax.tree.leaves(params), mask) if on == want]
    return graph.disagreement(leaves) if leaves else jnp.zeros((), jnp.float32)


def iteration(config: PursuitACConfig, graph: Graph, hp: PursuitHyperParams,
              state: PursuitTrainState):
    """One update round (pure): collect, then K iterations of (critic rule, actor step at the
    new critics).  Returns (state, metrics)."""
    actor, vnet, rnet = config.nets()
    key, k_roll, k_perm, k_crit = jax.random.split(state.key, 4)
    traj = collect(config, state.actor, k_roll)
    T, E = config.max_cycles, config.num_envs
    flat = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), traj)
    batch = CriticBatch(flat.gs, afterstate(flat.gs, flat.next_gs), flat.rewards, flat.next_gs)
    K, M = config.iters_per_round, config.minibatch_size
    perm = jax.random.permutation(k_perm, T * E)[: K * M].reshape(K, M)
    mbs = jax.tree.map(lambda x: x[perm], (batch, flat.obs, flat.actions))
    if config.critic_rule == "mdac_fresh":
        Tc, B = config.mdac_inner_steps, config.mdac_batch
        cperm = jax.random.permutation(jax.random.fold_in(k_perm, 1), T * E)
        cmbs = jax.tree.map(lambda x: x[cperm[: K * Tc * B].reshape(K, Tc, B)], batch)
    else:
        cmbs = mbs[0]
    mask = actor_mask(config, state.actor)
    rule = CRITIC_RULES[config.critic_rule]
    if config.advantage_reward == "estimate":
        grad_fn = lambda c, b: critic_grads(vnet, rnet, c, b, hp.discount)  # noqa: E731
    else:
        grad_fn = lambda c, b: value_grads(vnet, c, b, hp.discount)  # noqa: E731

    def body(carry, xs):
        actor_params, adual, critic, cdual = carry
        ((b, obs, actions), cb), k = xs
        critic, cdual, tdsq = rule(critic, cdual, grad_fn, cb, graph, hp, k, config)
        v = apply_agents(vnet, critic["w"], b.obs)
        v_next = apply_agents(vnet, critic["w"], b.next_obs)
        if config.advantage_reward == "estimate":
            rh = apply_agents(rnet, critic["phi"], b.rin)
        else:
            rh = b.rewards.T  # the agent's own observed reward R_i
        adv = rh + hp.discount * v_next - v  # (n, M)
        g = _pg_grads(actor, actor_params, jnp.swapaxes(obs, 0, 1), actions, adv, hp.discount)
        actor_params, adual = actor_update(config.actor_rule, actor_params, g, adual, mask,
                                           graph, hp)
        return (actor_params, adual, critic, cdual), jnp.mean(tdsq)

    (actor_params, adual, critic, cdual), tdsq = lax.scan(
        body, (state.actor, state.actor_dual, state.critic, state.critic_dual),
        ((mbs, cmbs), jax.random.split(k_crit, K)))

    ret, caught = episode_stats(traj)
    logits = apply_agents(actor, state.actor, jnp.swapaxes(mbs[1][0], 0, 1),
                          shared_input=False)
    p = jax.nn.softmax(logits)
    entropy = -jnp.mean(jnp.sum(p * jax.nn.log_softmax(logits), axis=-1))
    metrics = {"return": ret, "capture_rate": caught,
               "consensus_critic": graph.disagreement(critic),
               "consensus_actor_shared": _disagreement(graph, actor_params, mask, True),
               "consensus_actor_private": _disagreement(graph, actor_params, mask, False),
               "td_sq": tdsq[0], "entropy": entropy}
    return PursuitTrainState(actor_params, adual, critic, cdual, key, state.step + 1), metrics


def _scan(config, graph, hp, state, length: int):
    return lax.scan(lambda s, _: iteration(config, graph, hp, s), state, None, length=length)


def make_train(config: PursuitACConfig, num_rounds: int):
    """Pure ``train(graph, hp, key) -> (final state, metrics of shape (num_rounds,))``."""
    num_rounds = check_int("num_rounds", num_rounds, 1)
    return lambda graph, hp, key: _scan(config, graph, hp, init_state(config, key), num_rounds)


@functools.lru_cache(maxsize=64)
def _batched_fns(config: PursuitACConfig, length: int):
    init = jax.jit(jax.vmap(lambda k: init_state(config, k)))
    chunk = jax.jit(jax.vmap(lambda g, hp, s: _scan(config, g, hp, s, length),
                             in_axes=(None, 0, 0)), donate_argnums=(2,))
    return init, chunk


@dataclasses.dataclass
class PursuitResult:
    """Outcome of :func:`run`; ``metrics[name]`` has shape (H, S, rounds)."""

    config: PursuitACConfig
    hparams: list
    seeds: list
    metrics: dict
    graph: Graph
    compile_time: float
    run_time: float
    initial: dict

    @property
    def env_steps_per_round(self) -> int:
        return self.config.batch_size

    def final(self, name: str = "return", window: int = 20) -> np.ndarray:
        return np.asarray(self.metrics[name])[..., -window:].mean(axis=-1)

    @property
    def diverged_at(self) -> np.ndarray:
        return first_nonfinite(self.metrics, ("td_sq", "consensus_critic", "entropy"))

    def to_dict(self) -> dict:
        return {"algorithm": self.config.algorithm, "config": dataclasses.asdict(self.config),
                "hparams": [{k: float(v) for k, v in h._asdict().items()} for h in self.hparams],
                "seeds": list(self.seeds), "graph": graph_info(self.graph),
                "compile_time_s": self.compile_time, "run_time_s": self.run_time,
                "env_steps_per_round": self.env_steps_per_round,
                "initial_disagreement": self.initial,
                "diverged_at": self.diverged_at.tolist(),
                "metrics": {k: np.asarray(v).tolist() for k, v in self.metrics.items()}}


def default_graph(n: int) -> Graph:
    """The paper's pursuit graph: a ring (n ≥ 3)."""
    return ring(check_int("n", n, 3))


def run(config: PursuitACConfig | str = "slam_ac", graph: Graph | None = None, *,
        hparams: PursuitHyperParams | Sequence[PursuitHyperParams] | None = None,
        seeds: int | Sequence[int] = 10, num_rounds: int = 100, chunk: int = 25,
        progress: bool = True, desc: str | None = None, fast_compile: bool = False,
        **config_kwargs) -> PursuitResult:
    """Train every (hyperparameter setting × seed) lane in one vmapped program, chunks of
    ``chunk`` rounds at a time with a progress bar.  Seeds are paired across algorithms (the
    same seed gives the same initial networks and the same environment stream)."""
    if isinstance(config, str):
        config = PursuitACConfig(config, **config_kwargs)
    elif config_kwargs:
        config = dataclasses.replace(config, **config_kwargs)
    if not isinstance(config, PursuitACConfig):
        raise ValueError(f"config must be a PursuitACConfig or an algorithm name, got {config!r}")
    graph = default_graph(config.n) if graph is None else graph
    if not isinstance(graph, Graph):
        raise ValueError(f"graph must be a slamjax Graph, got {type(graph).__name__}")
    if graph.n != config.n:
        raise ValueError(f"graph has n={graph.n} agents but the config has "
                         f"n_pursuers={config.n}")
    if hparams is None:
        hparams = [make_pursuit_hparams(graph, config)]
    hparams, seeds, hp, keys, sizes = lanes(hparams, PursuitHyperParams, seeds,
                                            check_int("num_rounds", num_rounds, 1),
                                            check_int("chunk", chunk, 1))
    H, S = len(hparams), len(seeds)
    chunk = sizes[0]
    t0 = time.perf_counter()
    init, _ = _batched_fns(config, chunk)
    state = compile_program(init, keys, fast_compile=fast_compile)(keys)
    mask = actor_mask(config, jax.tree.map(lambda a: a[0], state.actor))
    initial = {"actor_shared": float(np.mean(jax.vmap(
                   lambda a: _disagreement(graph, a, mask, True))(state.actor))),
               "actor_private": float(np.mean(jax.vmap(
                   lambda a: _disagreement(graph, a, mask, False))(state.actor))),
               "critic": float(np.mean(jax.vmap(graph.disagreement)(state.critic)))}
    compiled = {}
    for L in sorted(set(sizes)):
        compiled[L] = compile_program(_batched_fns(config, L)[1], graph, hp, state,
                                      fast_compile=fast_compile)
    compile_time = time.perf_counter() - t0

    def on_chunk(st, m, done):
        r = np.asarray(m["return"])[..., -5:].mean(-1)
        c = np.asarray(m["capture_rate"])[..., -5:].mean(-1)
        return {"return": f"{r.mean():.2f}", "capture": f"{c.mean():.2f}"}

    state, logs, run_time = drive(lambda L, st: compiled[L](graph, hp, st), state, sizes,
                                  desc=desc or config.display_name, progress=progress,
                                  unit="round", on_chunk=on_chunk)
    metrics = {}
    for k in logs[0]:
        a = np.concatenate([np.asarray(m[k]) for m in logs], axis=1)
        metrics[k] = a.reshape((H, S) + a.shape[1:])
    return PursuitResult(config, hparams, seeds, metrics, graph, compile_time, run_time, initial)
