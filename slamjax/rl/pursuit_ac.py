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

The configuration, the algorithms' consensus rules and the step sizes are in
:mod:`slamjax.rl.pursuit_config` (re-exported here). :func:`run` trains every
(setting × seed) lane on the one host driver (:mod:`slamjax.rl.lanes`) and returns a
:class:`~slamjax.RunResult`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.baselines.mdac import fresh_minibatches
from slamjax.consensus import Consensus, ConsensusHP
from slamjax.envs._checks import check_int
from slamjax.envs.pursuit import NUM_ACTIONS
from slamjax.graphs import Graph
from slamjax.results import RunResult
from slamjax.rl.core import CriticBatch, critic_grads
from slamjax.rl.critics import CriticRule, critic_rule, critic_update
from slamjax.rl.lanes import check_graph, graph_info, hparam_lanes, init_lanes, run_rounds
from slamjax.rl.nets import apply_agents, init_agents
from slamjax.rl.pursuit_config import (ACTOR_INPUTS, ACTOR_LAYERS, ACTOR_RULES, ADVANTAGE_REWARDS,
                                       ALGORITHMS, DISPLAY, PursuitACConfig, PursuitHyperParams,
                                       actor_consensus, actor_mask, make_pursuit_hparams,
                                       pursuit_graph)

__all__ = ["ALGORITHMS", "DISPLAY", "ACTOR_LAYERS", "ADVANTAGE_REWARDS", "ACTOR_INPUTS",
           "ACTOR_RULES", "PursuitACConfig", "PursuitHyperParams", "PursuitTrainState",
           "PursuitMethod", "make_pursuit_hparams", "actor_mask", "actor_consensus",
           "pursuit_graph", "graph_info", "method", "actor_inputs", "afterstate", "value_grads",
           "collect", "episode_stats", "init_state", "actor_update", "iteration", "make_train",
           "run", "random_capture_rate", "METRICS"]

METRICS = ("return", "capture_rate", "consensus_critic", "consensus_actor_shared",
           "consensus_actor_private", "td_sq", "entropy")
"""Metrics logged every round."""


class PursuitTrainState(NamedTuple):
    """Actors θ (UL) and the actor rule's consensus state (SLAM: ``PrimalDualState`` with the
    duals u_x; ``()`` for the stateless rules), critics y = {"w", "phi"} (LL) and the critic
    rule's consensus state (SLAM: the duals u_y), PRNG key, round counter."""

    actor: Any
    actor_consensus: Any
    critic: Any
    critic_consensus: Any
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


class PursuitMethod(NamedTuple):
    """An algorithm's moving parts, built once from its configuration (:func:`method`): the
    critics' rule, the actors' consensus transform and the per-leaf mask of the shared actor
    layers."""

    critic: CriticRule
    actor: Consensus
    mask: tuple


@functools.lru_cache(maxsize=64)
def method(config: PursuitACConfig) -> PursuitMethod:
    """The :class:`PursuitMethod` of ``config`` (cached: one per configuration)."""
    actor = config.nets()[0]
    shapes = jax.eval_shape(lambda k: init_agents(actor, k, config.n,
                                                  jnp.zeros(config.actor_obs_shape())),
                            jax.random.key(0))
    mask = actor_mask(config, shapes)
    return PursuitMethod(critic_rule(config.critic_rule, config),
                         actor_consensus(config.actor_rule, mask), mask)


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
def _random_fn(config: PursuitACConfig):  # jitted: jax.clear_caches() drops its programs
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
    to do); the rules' consensus states (SLAM: duals zero)."""
    actor, vnet, rnet = config.nets()
    env = config.env()
    X, Y = env.x_size, env.y_size
    n = config.n
    ka, kw, kp, kr = jax.random.split(key, 4)
    actor_params = init_agents(actor, ka, n, jnp.zeros(config.actor_obs_shape()))
    critic = {"w": init_agents(vnet, kw, n, jnp.zeros((3, X, Y)))}
    if config.advantage_reward == "estimate":
        critic["phi"] = init_agents(rnet, kp, n, jnp.zeros((4, X, Y)))
    m = method(config)
    # the trainers' rules cache no communication product: their init needs no graph
    return PursuitTrainState(actor_params, m.actor.init(actor_params, None), critic,
                             m.critic.consensus.init(critic, None), kr,
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


def actor_update(rule: Consensus, actor_params, grads, state, graph: Graph, hp):
    """One UL step of every agent by the actors' consensus transform ``rule``
    (:func:`actor_consensus`): ``grads`` is the ascent direction ∇̂J, so the transform descends
    on −∇̂J with step 1/α = ``hp.actor_lr`` (and ρ, γ_x for SLAM). Returns (actors, state)."""
    h = jax.tree.map(jnp.negative, grads)
    return rule.update(h, state, actor_params, graph,
                       ConsensusHP(hp.actor_lr, hp.rho, hp.gamma_actor))


def _disagreement(graph: Graph, params, mask, want: bool):
    leaves = [v for v, on in zip(jax.tree.leaves(params), mask) if on == want]
    return graph.disagreement(leaves) if leaves else jnp.zeros((), jnp.float32)


def _round_data(config: PursuitACConfig, m: PursuitMethod, state: PursuitTrainState):
    """Collect, flatten and deal the K minibatches (and MDAC's fresh critic minibatches)."""
    key, k_roll, k_perm, k_crit = jax.random.split(state.key, 4)
    traj = collect(config, state.actor, k_roll)
    T, E = config.max_cycles, config.num_envs
    flat = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), traj)
    batch = CriticBatch(flat.gs, afterstate(flat.gs, flat.next_gs), flat.rewards, flat.next_gs)
    K, M = config.iters_per_round, config.minibatch_size
    perm = jax.random.permutation(k_perm, T * E)[: K * M].reshape(K, M)
    mbs = jax.tree.map(lambda x: x[perm], (batch, flat.obs, flat.actions))
    if m.critic.fresh:
        cmbs = fresh_minibatches(batch, jax.random.fold_in(k_perm, 1), K,
                                 config.mdac_inner_steps, config.mdac_batch)
    else:
        cmbs = mbs[0]
    return traj, mbs, cmbs, jax.random.split(k_crit, K), key


def iteration(config: PursuitACConfig, graph: Graph, hp: PursuitHyperParams,
              state: PursuitTrainState):
    """One update round (pure): collect, then K iterations of (critic rule, actor step at the
    new critics).  Returns (state, metrics)."""
    actor, vnet, rnet = config.nets()
    m = method(config)
    traj, mbs, cmbs, crit_keys, key = _round_data(config, m, state)
    estimate = config.advantage_reward == "estimate"
    if estimate:
        grad_fn = lambda c, b: critic_grads(vnet, rnet, c, b, hp.discount)  # noqa: E731
    else:
        grad_fn = lambda c, b: value_grads(vnet, c, b, hp.discount)  # noqa: E731

    def body(carry, xs):
        actor_params, astate, critic, cstate = carry
        ((b, obs, actions), cb), k = xs
        critic, cstate, tdsq = critic_update(m.critic, critic, cstate, grad_fn, cb, graph, hp,
                                             k)
        v = apply_agents(vnet, critic["w"], b.obs)
        v_next = apply_agents(vnet, critic["w"], b.next_obs)
        # R̂ (eq. (212)) or the agent's own observed reward R_i
        rh = apply_agents(rnet, critic["phi"], b.rin) if estimate else b.rewards.T
        adv = rh + hp.discount * v_next - v  # (n, M)
        g = _pg_grads(actor, actor_params, jnp.swapaxes(obs, 0, 1), actions, adv, hp.discount)
        actor_params, astate = actor_update(m.actor, actor_params, g, astate, graph, hp)
        return (actor_params, astate, critic, cstate), jnp.mean(tdsq)

    (actor_params, astate, critic, cstate), tdsq = lax.scan(
        body, (state.actor, state.actor_consensus, state.critic, state.critic_consensus),
        ((mbs, cmbs), crit_keys))

    ret, caught = episode_stats(traj)
    logits = apply_agents(actor, state.actor, jnp.swapaxes(mbs[1][0], 0, 1),
                          shared_input=False)
    p = jax.nn.softmax(logits)
    entropy = -jnp.mean(jnp.sum(p * jax.nn.log_softmax(logits), axis=-1))
    metrics = {"return": ret, "capture_rate": caught,
               "consensus_critic": graph.disagreement(critic),
               "consensus_actor_shared": _disagreement(graph, actor_params, m.mask, True),
               "consensus_actor_private": _disagreement(graph, actor_params, m.mask, False),
               "td_sq": tdsq[0], "entropy": entropy}
    return PursuitTrainState(actor_params, astate, critic, cstate, key, state.step + 1), metrics


def _scan(config, graph, hp, state, length: int):
    return lax.scan(lambda s, _: iteration(config, graph, hp, s), state, None, length=length)


def make_train(config: PursuitACConfig, num_rounds: int):
    """Pure ``train(graph, hp, key) -> (final state, metrics of shape (num_rounds,))``."""
    num_rounds = check_int("num_rounds", num_rounds, 1)
    return lambda graph, hp, key: _scan(config, graph, hp, init_state(config, key), num_rounds)


# ----------------------------------------------------------------------------------------
# the people-facing run, on the driver
# ----------------------------------------------------------------------------------------
def _init_lane(config: PursuitACConfig, hp, key) -> PursuitTrainState:
    del hp  # the networks do not depend on the hyperparameters
    return init_state(config, key)


def _initial_disagreement(config: PursuitACConfig, graph: Graph, state) -> dict:
    """Mean over the lanes of the initial ‖Aθ‖² (shared and private actor leaves) and ‖Ay‖²."""
    mask = method(config).mask
    return {"actor_shared": float(np.mean(jax.vmap(
                lambda a: _disagreement(graph, a, mask, True))(state.actor))),
            "actor_private": float(np.mean(jax.vmap(
                lambda a: _disagreement(graph, a, mask, False))(state.actor))),
            "critic": float(np.mean(jax.vmap(graph.disagreement)(state.critic)))}


def run(config: PursuitACConfig | str = "slam_ac", graph: Graph | None = None, *,
        hparams: PursuitHyperParams | Sequence[PursuitHyperParams] | None = None,
        seeds: int | Sequence[int] = 10, num_rounds: int = 100, chunk: int = 25,
        progress: bool = True, desc: str | None = None, fast_compile: bool = False,
        checkpoint=None, checkpoint_every: int | None = None, resume: bool = False,
        **config_kwargs) -> RunResult:
    """Train every (hyperparameter setting × seed) lane in one vmapped program, chunks of
    ``chunk`` rounds at a time with a progress bar.  Seeds are paired across algorithms (the
    same seed gives the same initial networks and the same environment stream).
    ``checkpoint``, ``checkpoint_every``, ``resume``: as :func:`slamjax.run`.

    Returns a :class:`~slamjax.RunResult`: ``metrics[name]`` of shape (H, S, rounds),
    ``window_mean(name, w)`` per lane, ``diverged_at`` ``None`` or (H, S) rounds done when a
    lane went non-finite (−1: finite), ``meta`` = {algorithm, config, hparams, graph
    (:func:`graph_info`), env_steps_per_round, initial_disagreement}."""
    if isinstance(config, str):
        config = PursuitACConfig(config, **config_kwargs)
    elif config_kwargs:
        config = dataclasses.replace(config, **config_kwargs)
    if not isinstance(config, PursuitACConfig):
        raise ValueError(f"config must be a PursuitACConfig or an algorithm name, got {config!r}")
    graph = check_graph(pursuit_graph(config.n) if graph is None else graph, config.n,
                        "n_pursuers")
    num_rounds = check_int("num_rounds", num_rounds, 1)
    chunk = check_int("chunk", chunk, 1)
    if hparams is None:
        hparams = [make_pursuit_hparams(graph, config)]
    hparams, seeds, hp, keys = hparam_lanes(hparams, PursuitHyperParams, seeds)
    t0 = time.perf_counter()
    state = init_lanes(_init_lane, config, hp, keys, fast_compile=fast_compile)
    meta = {"algorithm": config.algorithm, "config": config, "hparams": hparams,
            "graph": graph_info(graph), "env_steps_per_round": config.batch_size,
            "initial_disagreement": _initial_disagreement(config, graph, state)}
    return run_rounds(iteration, _init_lane, config, graph, hp, state, keys, hparams=hparams,
                      seeds=seeds, num_rounds=num_rounds, chunk=chunk, progress=progress,
                      desc=desc or config.display_name, fast_compile=fast_compile,
                      compile_started=t0, meta=meta, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume)
