"""The training loop shared by SLAM-AC, DAC, MDAC, SLAM-PPO and Dec-PPO.

One update round (``iteration``): collect one episode in each of ``num_envs`` environments,
shuffle the E·T transitions into K = ``iters_per_round`` minibatches and run K iterations,
each a critic (LL) update by the algorithm's rule followed by an actor (UL) step by eq. (212)
evaluated at the *new* critics (SLAM's order: y^{r+1} first, then x^{r+1}); PPO algorithms
run the K critic steps and then the PPO epochs on the whole round.

What moves how is chosen once per configuration (:func:`method`): the critics' rule — a
consensus transform and how its steps take their minibatches (:mod:`slamjax.rl.critics`) — and
the actors' round (policy gradient or PPO); the traced step only calls them.

``make_train(config, num_updates)`` returns a pure ``train(graph, hp, key) -> (state,
metrics)``: initialisation and all rounds as one ``lax.scan`` (jit and vmap it). ``run(...)`` is
the people-facing version on the one host driver (:mod:`slamjax.rl.lanes`,
:func:`slamjax.driver.execute`): every (hyperparameter setting × seed) pair is one lane of a
``vmap``, the rounds run in compiled chunks with a progress bar, and it returns a
:class:`~slamjax.RunResult` whose history has shape (settings, seeds, rounds) and whose ``meta``
holds the configuration, the settings, the graph, the communication counts and the random
policy's return. Metrics are recorded at every update round:

* ``return`` — mean over the round's episodes of Σ_t R̄_t, R̄ = (1/n) Σ_i R_i (the
  undiscounted 25-step return of the team-average reward: the paper's "averaged reward");
* ``consensus`` — ‖A y‖² = Σ_{(i,j)∈E} ‖y_i − y_j‖² over both critic networks, after the update;
* ``td_sq`` — mean squared TD error of the value critics on the round's first minibatch,
  before its update;
* ``entropy`` — mean policy entropy at the batch states.

With ``ACConfig.track_central`` (off by default) a reference centralized critic (one copy,
started from the average of the agents' initial critics) is trained on the same minibatches
against the team reward, and every round also logs

* ``consensus_w`` — ‖A w‖² of the value critics only;
* ``value_err`` / ``rhat_err`` — mean over agents of the mean squared difference between agent
  i's V (resp. R̂) and the reference's, on a fixed batch of states (400 states and joint actions
  of the uniformly random policy from a fixed key, the same for every seed and algorithm);
* ``value_err_agent`` — the same for V per agent, shape (n,) per round;
* ``consensus_w_ema`` — ‖A w̄‖² of the moving average w̄ ← (1 − a) w̄ + a w over rounds
  (a = ``EMA_RATE`` = 0.05, started at the critics after the first round): noise in the
  critics' disagreement averages out of w̄, a persistent (bias) disagreement does not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from slamjax.baselines.mdac import fresh_minibatches
from slamjax.envs._checks import check_int
from slamjax.graphs import Graph, complete, erdos_renyi, ring
from slamjax.results import RunResult
from slamjax.rl.core import (ACConfig, ACHyperParams, TrainState, critic_grads, make_batch,
                             make_hparams, td_advantage)
from slamjax.rl.critics import CriticRule, critic_rule, critic_update
from slamjax.rl.lanes import (FAST_COMPILE, check_graph, graph_info, hparam_lanes, init_lanes,
                              run_rounds)
from slamjax.rl.nets import apply_agents, init_agents
from slamjax.rl.ppo import gae, ppo_actor_update
from slamjax.rl.rollout import collect, episode_return, random_policy_return
from slamjax.rl.slam_ac import pg_actor_grads

__all__ = ["Method", "method", "init_critics", "init_state", "iteration", "make_train", "run",
           "navigation_graph", "METRICS", "CENTRAL_METRICS", "FAST_COMPILE", "make_rl_graph",
           "graph_info", "GRAPH_KINDS", "EVAL_KEY", "comm_info"]

METRICS = ("return", "consensus", "td_sq", "entropy")
"""Metrics logged every round."""
CENTRAL_METRICS = ("consensus_w", "value_err", "rhat_err", "value_err_agent",
                   "consensus_w_ema")
"""Extra metrics logged with ``ACConfig.track_central``."""
EMA_RATE = 0.05
"""Per-round rate of the critics' moving average behind ``consensus_w_ema``."""
EVAL_KEY = 20221
"""Key of the fixed batch of states on which the critic errors are measured."""


def _tx(config: ACConfig, lr) -> optax.GradientTransformation:
    return optax.adam(lr) if config.actor_optimizer == "adam" else optax.sgd(lr)


def navigation_graph(n: int, seed: int = 0, p: float | None = None) -> Graph:
    """The navigation experiments' graph: the first connected Erdős–Rényi draw G(n, p) with
    seeds ``seed, seed+1, …`` (p defaults to 2 ln(n)/n, above the connectivity threshold)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of agents) must be an int >= 1, got {n!r}")
    last = None
    for s in range(seed, seed + 100):
        try:
            return erdos_renyi(int(n), p, seed=s)
        except ValueError as e:  # disconnected draw
            last = e
    raise ValueError(f"no connected Erdős–Rényi graph in 100 draws: {last}")


GRAPH_KINDS = ("er", "er_sparse", "ring", "complete")
"""Graph kinds of the RL experiments (``make_rl_graph``)."""
ER_SPARSE_FACTOR = 1.2
"""``er_sparse``: G(n, p) with p = ER_SPARSE_FACTOR · ln(n)/n, just above the connectivity
threshold ln(n)/n (``er`` uses 2 ln(n)/n)."""


def make_rl_graph(kind: str = "er", n: int = 3, seed: int = 0) -> Graph:
    """Communication graph of an RL run: ``er`` = :func:`navigation_graph` (G(n, 2 ln n / n),
    first connected draw; complete at n = 3), ``er_sparse`` = the first connected draw of
    G(n, 1.2 ln n / n) from seed ``seed`` on (near the connectivity threshold), ``ring``,
    ``complete``."""
    kind = str(kind).lower().replace("-", "_")
    if kind == "er":
        return navigation_graph(n, seed)
    if kind == "er_sparse":
        p = min(1.0, ER_SPARSE_FACTOR * math.log(n) / n) if n > 2 else 1.0
        return navigation_graph(n, seed, p=p)
    if kind == "ring":
        return ring(int(n))
    if kind == "complete":
        return complete(int(n))
    raise ValueError(f"unknown graph kind {kind!r}; choose one of {GRAPH_KINDS}")


def comm_info(config: ACConfig, graph: Graph) -> dict:
    """Communication per iteration (= per actor step) and per update round: rounds of
    neighbour exchange and scalars sent (every agent sends both critic networks to each
    neighbour once per round). The centralized critic is an all-reduce (rounds ``None``)."""
    r = config.comm_rounds
    shapes = jax.eval_shape(lambda k: init_critics(config, k), jax.random.key(0))
    per_round_msgs = graph.messages(shapes)
    K = config.iters_per_round
    return {"rounds_per_iteration": r,
            "rounds_per_update_round": None if r is None else r * K,
            "scalars_per_iteration": None if r is None else r * per_round_msgs,
            "critic_samples_per_iteration": config.critic_samples,
            "actor_samples_per_iteration": config.minibatch_size,
            "env_steps_per_update_round": config.batch_size}


# ----------------------------------------------------------------------------------------
# what moves how: chosen once per configuration
# ----------------------------------------------------------------------------------------
class Method(NamedTuple):
    """An algorithm's moving parts, built once from its configuration (:func:`method`).

    Attributes:
      critic: the critics' rule (consensus transform and minibatch dealing).
      actors: the round's actor part, ``actors(config, method, graph, hp, state, data) ->
        (actor, actor_opt, critic, critic_consensus, td_sq per iteration)`` —
        :func:`pg_round` (K interleaved critic/actor iterations, eq. (212)) or
        :func:`ppo_round` (K critic steps, then the PPO epochs).
      reference: the reference centralized critic's rule (``track_central``), else ``None``.
    """

    critic: CriticRule
    actors: Callable
    reference: CriticRule | None = None


class RoundData(NamedTuple):
    """One round's data: the trajectory, its flat transitions, the critic batch, the actors'
    inputs, the K actor minibatches (batch, actor inputs, actions), the critics' minibatches,
    the K critic keys, the PPO key and the state's next key."""

    traj: Any
    flat: Any
    batch: Any
    actor_obs: Any
    mbs: Any
    cmbs: Any
    crit_keys: Any
    k_act: Any
    key: Any


def _grad_fn(config: ACConfig, hp):
    _, vnet, rnet = config.nets()
    return lambda c, b: critic_grads(vnet, rnet, c, b, hp.discount)


def pg_round(config: ACConfig, m: Method, graph, hp, state: TrainState, d: RoundData):
    """K SLAM-L iterations, each on its minibatch: LL (the critic rule), then UL (eq. (212),
    Adam/SGD) at the new critics y^{r+1}."""
    actor, vnet, rnet = config.nets()
    grad_fn = _grad_fn(config, hp)

    def body(carry, xs):
        actor_params, opt, critic, cstate = carry
        ((batch, actor_obs, actions), critic_mb), key = xs
        critic, cstate, tdsq = critic_update(m.critic, critic, cstate, grad_fn, critic_mb,
                                             graph, hp, key)
        adv = td_advantage(vnet, rnet, critic, batch.obs, batch.rin, batch.next_obs,
                           hp.discount)
        g = pg_actor_grads(actor, actor_params, actor_obs, actions, adv, hp.discount)
        upd, opt = _tx(config, hp.actor_lr).update(jax.tree.map(jnp.negative, g), opt,
                                                   actor_params)
        return (optax.apply_updates(actor_params, upd), opt, critic, cstate), jnp.mean(tdsq)

    carry, tdsq = lax.scan(body, (state.actor, state.actor_opt, state.critic,
                                  state.critic_consensus), ((d.mbs, d.cmbs), d.crit_keys))
    return (*carry, tdsq)


def ppo_round(config: ACConfig, m: Method, graph, hp, state: TrainState, d: RoundData):
    """K critic-rule steps on the minibatches, then GAE with the new critics and the PPO
    epochs on the whole round."""
    actor, vnet, rnet = config.nets()
    grad_fn = _grad_fn(config, hp)

    def body(carry, xs):
        (c, s), (mb, k) = carry, xs
        c, s, td = critic_update(m.critic, c, s, grad_fn, mb, graph, hp, k)
        return (c, s), jnp.mean(td)

    (critic, cstate), tdsq = lax.scan(body, (state.critic, state.critic_consensus),
                                      (d.cmbs, d.crit_keys))
    T, E = d.traj.obs.shape[:2]
    b = d.batch
    adv = td_advantage(vnet, rnet, critic, b.obs, b.rin, b.next_obs, hp.discount)
    A = gae(adv.reshape(config.n, T, E), hp.discount, hp.gae_lambda).reshape(config.n, -1)
    actor_params, opt, _ = ppo_actor_update(
        actor, _tx(config, hp.actor_lr), state.actor, state.actor_opt, d.actor_obs,
        d.flat.actions, d.flat.logp, A, hp.clip_eps, d.k_act, config.ppo_epochs,
        config.ppo_minibatches)
    return actor_params, opt, critic, cstate, tdsq


@functools.lru_cache(maxsize=64)
def method(config: ACConfig) -> Method:
    """The :class:`Method` of ``config`` (cached: one per configuration)."""
    reference = critic_rule("central", config) if config.track_central else None
    return Method(critic_rule(config.critic_rule, config),
                  pg_round if config.actor_rule == "pg" else ppo_round, reference)


# ----------------------------------------------------------------------------------------
# state
# ----------------------------------------------------------------------------------------
def _eval_batch(config: ACConfig):
    """The fixed batch of the critic errors: one random-policy episode in each of 16
    environments from ``EVAL_KEY`` (400 states s, joint actions, s')."""
    traj = collect(config.env(), config.nets()[0], None, jax.random.key(EVAL_KEY), 16)
    T, E = traj.obs.shape[:2]
    flat = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), traj)
    dc = config.critic_dim
    return make_batch(flat.obs[:, :dc], flat.actions, flat.rewards, flat.next_obs[:, :dc])


def init_critics(config: ACConfig, key) -> dict:
    """The agents' initial critics {"w": value nets, "phi": reward estimators} of
    :func:`init_state` with this key (independent random networks, one per agent)."""
    _, vnet, rnet = config.nets()
    n = config.n
    _, kw, kp, _ = jax.random.split(key, 4)
    obs0 = jnp.zeros((config.critic_dim,), jnp.float32)
    rin0 = jnp.zeros((config.critic_dim + 5 * n,), jnp.float32)
    return {"w": init_agents(vnet, kw, n, obs0), "phi": init_agents(rnet, kp, n, rin0)}


def init_state(config: ACConfig, hp: ACHyperParams, key) -> TrainState:
    """Independent random networks for every agent (one key each); the critic rule's state
    (SLAM: duals u = 0). With ``track_central``: the reference centralized critic (the average
    of the agents' initial critics) and the fixed evaluation batch."""
    actor = config.nets()[0]
    ka, _, _, kr = jax.random.split(key, 4)
    actor_params = init_agents(actor, ka, config.n, jnp.zeros((config.actor_dim,), jnp.float32))
    critic = init_critics(config, key)
    # the trainers' rules cache no communication product: their init needs no graph
    cstate = method(config).critic.consensus.init(critic, None)
    opt = _tx(config, hp.actor_lr).init(actor_params)
    if not config.track_central:
        return TrainState(actor_params, opt, critic, cstate, kr, jnp.zeros((), jnp.int32))
    # the reference starts at the agents' average critic: Metropolis mixing (doubly
    # stochastic) and SLAM (duals summing to zero) both move the network average by the
    # average gradient, so this is where every consensus rule's average starts too
    central = jax.tree.map(lambda x: jnp.mean(x, axis=0, keepdims=True), critic)
    return TrainState(actor_params, opt, critic, cstate, kr, jnp.zeros((), jnp.int32), central,
                      _eval_batch(config), critic["w"])


# ----------------------------------------------------------------------------------------
# one update round
# ----------------------------------------------------------------------------------------
def _round_data(config: ACConfig, m: Method, state: TrainState) -> RoundData:
    """Collect one episode per environment and deal the K minibatches (and MDAC's fresh
    critic minibatches, from a key derived from the permutation's, so the other algorithms'
    streams are unchanged)."""
    key, k_roll, k_perm, k_crit, k_act = jax.random.split(state.key, 5)
    traj = collect(config.env(), config.nets()[0], state.actor, k_roll, config.num_envs,
                   config.actor_dim)
    T, E = traj.obs.shape[:2]
    flat = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), traj)
    dc, da = config.critic_dim, config.actor_dim
    batch = make_batch(flat.obs[:, :dc], flat.actions, flat.rewards, flat.next_obs[:, :dc])
    actor_obs = flat.obs[:, :da]
    K, M = config.iters_per_round, config.minibatch_size
    perm = jax.random.permutation(k_perm, T * E)[: K * M].reshape(K, M)
    mbs = jax.tree.map(lambda x: x[perm], (batch, actor_obs, flat.actions))
    if m.critic.fresh:
        cmbs = fresh_minibatches(batch, jax.random.fold_in(k_perm, 1), K,
                                 config.mdac_inner_steps, config.mdac_batch)
    else:
        cmbs = mbs[0]
    return RoundData(traj, flat, batch, actor_obs, mbs, cmbs, jax.random.split(k_crit, K),
                     k_act, key)


def _central_metrics(config, graph, critic, central, eb):
    _, vnet, rnet = config.nets()
    v = apply_agents(vnet, critic["w"], eb.obs)  # (n, B)
    vc = apply_agents(vnet, central["w"], eb.obs)  # (1, B)
    rh = apply_agents(rnet, critic["phi"], eb.rin)
    rc = apply_agents(rnet, central["phi"], eb.rin)
    v_agent = jnp.mean((v - vc) ** 2, axis=1)
    return {"consensus_w": graph.disagreement(critic["w"]), "value_err": jnp.mean(v_agent),
            "rhat_err": jnp.mean((rh - rc) ** 2), "value_err_agent": v_agent}


def _track_central(config, m: Method, graph, hp, state: TrainState, d: RoundData, critic,
                   metrics: dict):
    """The reference centralized critic on the actor minibatches (team reward, same step),
    its metrics, and the critics' moving average. Returns (central, ema)."""
    grad_fn = _grad_fn(config, hp)
    reference = m.reference
    assert reference is not None  # track_central

    def ref_body(c, mb):
        return critic_update(reference, c, (), grad_fn, mb, graph, hp)[0], None

    central, _ = lax.scan(ref_body, state.central, d.mbs[0])
    metrics.update(_central_metrics(config, graph, critic, central, state.eval_batch))
    a = jnp.where(state.step == 0, 1.0, EMA_RATE)  # start at the critics after round 1
    ema = jax.tree.map(lambda mv, w: (1.0 - a).astype(w.dtype) * mv + a.astype(w.dtype) * w,
                       state.critic_ema, critic["w"])
    metrics["consensus_w_ema"] = graph.disagreement(ema)
    return central, ema


def iteration(config: ACConfig, graph: Graph, hp: ACHyperParams, state: TrainState):
    """One update round of the configured algorithm (pure). Returns (state, metrics dict).

    Collect one episode in each of ``num_envs`` environments (E·T transitions), then
    * PG algorithms (SLAM-AC, DAC, MDAC): shuffle the transitions into ``iters_per_round``
      minibatches and run that many iterations, each = critic rule + one actor step (212);
    * PPO algorithms: ``iters_per_round`` critic-rule steps on the minibatches, then GAE with
      the new critics and the PPO epochs on the whole round.
    """
    m = method(config)
    d = _round_data(config, m, state)
    actor_params, opt, critic, cstate, tdsq = m.actors(config, m, graph, hp, state, d)
    actor = config.nets()[0]
    logits = apply_agents(actor, state.actor, d.actor_obs)
    p = jax.nn.softmax(logits)
    entropy = -jnp.mean(jnp.sum(p * jax.nn.log_softmax(logits), axis=-1))
    metrics = {"return": episode_return(d.traj), "consensus": graph.disagreement(critic),
               "td_sq": tdsq[0], "entropy": entropy}
    if not config.track_central:
        return TrainState(actor_params, opt, critic, cstate, d.key, state.step + 1), metrics
    central, ema = _track_central(config, m, graph, hp, state, d, critic, metrics)
    return TrainState(actor_params, opt, critic, cstate, d.key, state.step + 1, central,
                      state.eval_batch, ema), metrics


def _scan(config, graph, hp, state, length: int):
    def body(s, _):
        return iteration(config, graph, hp, s)

    return lax.scan(body, state, None, length=length)


def make_train(config: ACConfig, num_updates: int):
    """Pure ``train(graph, hp, key) -> (final TrainState, metrics dict of (num_updates,))``:
    initialisation and ``num_updates`` update rounds in one ``lax.scan``; jit / vmap it."""
    num_updates = check_int("num_updates", num_updates, 1)

    def train(graph, hp, key):
        return _scan(config, graph, hp, init_state(config, hp, key), num_updates)

    return train


# ----------------------------------------------------------------------------------------
# the people-facing run, on the driver
# ----------------------------------------------------------------------------------------
def run(algorithm: str | ACConfig = "slam_ac", graph: Graph | None = None, *,
        hparams: ACHyperParams | Sequence[ACHyperParams] | None = None,
        seeds: int | Sequence[int] = 5, num_updates: int = 1000, chunk: int = 250,
        progress: bool = True, desc: str | None = None, fast_compile: bool = False,
        checkpoint=None, checkpoint_every: int | None = None, resume: bool = False,
        **config_kwargs) -> RunResult:
    """Train ``algorithm`` for every hyperparameter setting × seed in one vmapped program.

    ``algorithm``: a name (``slam_ac``, ``dac``, ``mdac``, ``slam_ppo``, ``dec_ppo``, …) plus
    ``ACConfig`` keyword arguments, or an :class:`ACConfig`. ``graph`` defaults to
    :func:`navigation_graph` (n). ``hparams`` defaults to :func:`make_hparams` (paper values).
    ``seeds``: a count (0..k−1) or a list; the same seeds are used for every setting (and, by
    the caller, for every algorithm), so runs are paired across algorithms.
    ``num_updates`` counts update rounds (each = one episode per environment + K iterations),
    ``chunk`` the rounds per compiled chunk. ``fast_compile`` trades run time for compile
    time (:data:`FAST_COMPILE`). ``checkpoint=DIR``, ``checkpoint_every`` (rounds),
    ``resume=True``: as :func:`slamjax.run` (bit-identical resume, clean Ctrl-C).

    Returns a :class:`~slamjax.RunResult`: ``metrics[name]`` of shape (H, S, rounds[, n]),
    ``window_mean(name, w)`` the per-lane mean of the last ``w`` rounds, ``diverged_at``
    ``None`` or (H, S) rounds done when a lane went non-finite (−1: finite; the lane is frozen
    and logs NaN after it), ``meta`` = {algorithm, config, hparams, graph (:func:`graph_info`),
    communication (:func:`comm_info`), random_policy_return}.
    """
    config = algorithm if isinstance(algorithm, ACConfig) else ACConfig(algorithm, **config_kwargs)
    if isinstance(algorithm, ACConfig) and config_kwargs:
        config = dataclasses.replace(config, **config_kwargs)
    graph = check_graph(navigation_graph(config.n) if graph is None else graph, config.n)
    num_updates = check_int("num_updates", num_updates, 1)
    if hparams is None:
        hparams = [make_hparams(graph)]
    hparams, seeds, hp, keys = hparam_lanes(hparams, ACHyperParams, seeds)
    t0 = time.perf_counter()
    state = init_lanes(init_state, config, hp, keys, fast_compile=fast_compile)
    res = run_rounds(iteration, init_state, config, graph, hp, state, keys, hparams=hparams,
                     seeds=seeds, num_rounds=num_updates, chunk=chunk, progress=progress,
                     desc=desc or config.display_name, fast_compile=fast_compile,
                     compile_started=t0, checkpoint=checkpoint,
                     checkpoint_every=checkpoint_every, resume=resume,
                     meta={"algorithm": config.algorithm, "config": config,
                           "hparams": hparams, "graph": graph_info(graph),
                           "communication": comm_info(config, graph)})
    res.meta["random_policy_return"] = random_policy_return(
        config.n, jax.random.key(12345), max_steps=config.max_steps,
        local_ratio=config.local_ratio)
    return res
