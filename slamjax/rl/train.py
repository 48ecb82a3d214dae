"""The training loop shared by SLAM-AC, DAC, MDAC, SLAM-PPO and Dec-PPO.

One update round (``iteration``): collect one episode in each of ``num_envs`` environments,
shuffle the E·T transitions into K = ``iters_per_round`` minibatches and run K iterations,
each a critic (LL) update by the algorithm's rule followed by an actor (UL) step by eq. (212)
evaluated at the *new* critics (SLAM's order: y^{r+1} first, then x^{r+1}); PPO algorithms
run the K critic steps and then the PPO epochs on the whole round.

``make_train(config, num_updates)`` returns a pure ``train(graph, hp, key) -> (state,
metrics)``: initialisation and all rounds as one ``lax.scan`` (jit and vmap it). ``run(...)`` is the
people-facing version: every (hyperparameter setting × seed) pair is one lane of a ``vmap``
and the updates are a ``lax.scan`` inside jit-compiled chunks; a thin host loop over the chunks
prints progress. Metrics are recorded at every update round:

* ``return`` — mean over the round's episodes of Σ_t R̄_t, R̄ = (1/n) Σ_i R_i (the
  undiscounted 25-step return of the team-average reward: the paper's "averaged reward");
* ``consensus`` — ‖A y‖² = Σ_{(i,j)∈E} ‖y_i − y_j‖² over both critic networks, after the update;
* ``td_sq`` — mean squared TD error of the value critics on the round's first minibatch,
  before its update;
* ``entropy`` — mean policy entropy at the batch states.

With ``ACConfig.track_central`` (off by default) a reference centralized critic (one copy,
started from the average of the agents' initial critics) is trained on the same minibatches against the team
reward, and every round also logs

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
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from slamjax.baselines.controls import (central_critic_step, central_critic_update,
                                        local_critic_update)
from slamjax.baselines.dac import dgd_critic_update
from slamjax.baselines.mdac import mdac_critic_update, mdac_fresh_critic_update
from slamjax.caches import check_memory_maps
from slamjax.graphs import Graph, erdos_renyi, ring, spectral_gap
from slamjax.run import drive
from slamjax.rl.core import (ACConfig, ACHyperParams, TrainState, critic_grads, make_batch,
                             make_hparams, td_advantage)
from slamjax.rl.nets import apply_agents, init_agents
from slamjax.rl.ppo import gae, ppo_actor_update
from slamjax.rl.rollout import collect, episode_return, random_policy_return
from slamjax.rl.slam_ac import pg_actor_grads, slam_critic_update

__all__ = ["init_state", "iteration", "make_train", "run", "RLResult", "default_graph",
           "METRICS", "CENTRAL_METRICS", "FAST_COMPILE", "make_rl_graph", "graph_info",
           "GRAPH_KINDS", "EVAL_KEY", "comm_info"]

METRICS = ("return", "consensus", "td_sq", "entropy")
#: extra metrics logged with ``ACConfig.track_central``
CENTRAL_METRICS = ("consensus_w", "value_err", "rhat_err", "value_err_agent",
                   "consensus_w_ema")
#: per-round rate of the critics' moving average behind ``consensus_w_ema``
EMA_RATE = 0.05
#: key of the fixed batch of states on which the critic errors are measured
EVAL_KEY = 20221


#: critic rule name -> update function (all gossip goes through the graph's mix/laplacian)
CRITIC_RULES = {"slam": slam_critic_update, "dgd": dgd_critic_update,
                "mdac": mdac_critic_update, "mdac_fresh": mdac_fresh_critic_update,
                "local": local_critic_update, "central": central_critic_update}


def _critic_rule(name: str):
    if name not in CRITIC_RULES:  # pragma: no cover - ACConfig validates the algorithm
        raise ValueError(f"unknown critic rule {name!r}")
    return CRITIC_RULES[name]


def _tx(config: ACConfig, lr) -> optax.GradientTransformation:
    return optax.adam(lr) if config.actor_optimizer == "adam" else optax.sgd(lr)


def default_graph(n: int, seed: int = 0, p: float | None = None) -> Graph:
    """The first connected Erdős–Rényi draw G(n, p) with seeds ``seed, seed+1, …``
    (p defaults to 2 ln(n)/n, above the connectivity threshold)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of agents) must be an int >= 1, got {n!r}")
    last = None
    for s in range(seed, seed + 100):
        try:
            return erdos_renyi(int(n), p, seed=s)
        except ValueError as e:  # disconnected draw
            last = e
    raise ValueError(f"no connected Erdős–Rényi graph in 100 draws: {last}")


#: graph kinds of the RL experiments (``make_rl_graph``)
GRAPH_KINDS = ("er", "er_sparse", "ring", "complete")
#: ``er_sparse``: G(n, p) with p = ER_SPARSE_FACTOR · ln(n)/n, just above the connectivity
#: threshold ln(n)/n (``er`` uses 2 ln(n)/n)
ER_SPARSE_FACTOR = 1.2


def make_rl_graph(kind: str = "er", n: int = 3, seed: int = 0) -> Graph:
    """Communication graph of an RL run: ``er`` = :func:`default_graph` (G(n, 2 ln n / n),
    first connected draw; complete at n = 3), ``er_sparse`` = the first connected draw of
    G(n, 1.2 ln n / n) from seed ``seed`` on (near the connectivity threshold), ``ring``,
    ``complete``."""
    kind = str(kind).lower().replace("-", "_")
    if kind == "er":
        return default_graph(n, seed)
    if kind == "er_sparse":
        p = min(1.0, ER_SPARSE_FACTOR * math.log(n) / n) if n > 2 else 1.0
        return default_graph(n, seed, p=p)
    if kind == "ring":
        return ring(int(n))
    if kind == "complete":
        from slamjax.graphs import complete
        return complete(int(n))
    raise ValueError(f"unknown graph kind {kind!r}; choose one of {GRAPH_KINDS}")


def graph_info(graph: Graph) -> dict:
    """What a comparison must state about its graph: kind, n, edges, λ_max(L) and the spectral
    gap 1 − |λ₂(W)| of the Metropolis matrix (0 for the empty graph: no mixing at all)."""
    return {"kind": graph.kind, "n": graph.n, "num_edges": graph.num_edges,
            "edges": graph.edges().tolist(), "lam_max": graph.lam_max,
            "spectral_gap": spectral_gap(graph) if graph.n > 1 else 1.0}


def comm_info(config: ACConfig, graph: Graph) -> dict:
    """Communication per iteration (= per actor step) and per update round: rounds of
    neighbour exchange and scalars sent (every agent sends both critic networks to each
    neighbour once per round). The centralized critic is an all-reduce (rounds ``None``)."""
    r = config.comm_rounds
    shapes = jax.eval_shape(lambda k: init_state(config, _dummy_hparams(), k)[2],
                            jax.random.key(0))
    per_round_msgs = graph.messages(shapes)
    K = config.iters_per_round
    return {"rounds_per_iteration": r,
            "rounds_per_update_round": None if r is None else r * K,
            "scalars_per_iteration": None if r is None else r * per_round_msgs,
            "critic_samples_per_iteration": config.critic_samples,
            "actor_samples_per_iteration": config.minibatch_size,
            "env_steps_per_update_round": config.batch_size}


def _dummy_hparams() -> ACHyperParams:
    return ACHyperParams(*(jnp.float32(1.0),) * len(ACHyperParams._fields))


def _eval_batch(config: ACConfig):
    """The fixed batch of the critic errors: one random-policy episode in each of 16
    environments from ``EVAL_KEY`` (400 states s, joint actions, s')."""
    traj = collect(config.env(), config.nets()[0], None, jax.random.key(EVAL_KEY), 16)
    T, E = traj.obs.shape[:2]
    flat = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), traj)
    dc = config.critic_dim
    return make_batch(flat.obs[:, :dc], flat.actions, flat.rewards, flat.next_obs[:, :dc])


def init_state(config: ACConfig, hp: ACHyperParams, key) -> TrainState:
    """Independent random networks for every agent (one key each); duals u = 0. With
    ``track_central``: the reference centralized critic (the average of the agents' initial
    critics) and the fixed evaluation batch."""
    actor, vnet, rnet = config.nets()
    n = config.n
    ka, kw, kp, kr = jax.random.split(key, 4)
    actor_params = init_agents(actor, ka, n, jnp.zeros((config.actor_dim,), jnp.float32))
    obs0 = jnp.zeros((config.critic_dim,), jnp.float32)
    rin0 = jnp.zeros((config.critic_dim + 5 * n,), jnp.float32)
    critic = {"w": init_agents(vnet, kw, n, obs0), "phi": init_agents(rnet, kp, n, rin0)}
    dual = jax.tree.map(jnp.zeros_like, critic)
    opt = _tx(config, hp.actor_lr).init(actor_params)
    if not config.track_central:
        return TrainState(actor_params, opt, critic, dual, kr, jnp.zeros((), jnp.int32))
    # the reference starts at the agents' average critic: Metropolis mixing (doubly
    # stochastic) and SLAM (duals summing to zero) both move the network average by the
    # average gradient, so this is where every consensus rule's average starts too
    central = jax.tree.map(lambda x: jnp.mean(x, axis=0, keepdims=True), critic)
    return TrainState(actor_params, opt, critic, dual, kr, jnp.zeros((), jnp.int32), central,
                      _eval_batch(config), critic["w"])


def _central_metrics(config, graph, critic, central, eb):
    _, vnet, rnet = config.nets()
    v = apply_agents(vnet, critic["w"], eb.obs)  # (n, B)
    vc = apply_agents(vnet, central["w"], eb.obs)  # (1, B)
    rh = apply_agents(rnet, critic["phi"], eb.rin)
    rc = apply_agents(rnet, central["phi"], eb.rin)
    v_agent = jnp.mean((v - vc) ** 2, axis=1)
    return {"consensus_w": graph.disagreement(critic["w"]), "value_err": jnp.mean(v_agent),
            "rhat_err": jnp.mean((rh - rc) ** 2), "value_err_agent": v_agent}


def _pg_iteration(config, graph, hp, carry, mb, key):
    """One SLAM-L iteration on a minibatch: LL (critic rule), then UL (eq. (212)) at y^{r+1}."""
    actor_params, opt, critic, dual = carry
    actor, vnet, rnet = config.nets()
    (batch, actor_obs, actions), critic_mb = mb
    grad_fn = lambda c, b: critic_grads(vnet, rnet, c, b, hp.discount)  # noqa: E731
    critic, dual, tdsq = _critic_rule(config.critic_rule)(critic, dual, grad_fn, critic_mb,
                                                          graph, hp, key, config)
    adv = td_advantage(vnet, rnet, critic, batch.obs, batch.rin, batch.next_obs, hp.discount)
    g = pg_actor_grads(actor, actor_params, actor_obs, actions, adv, hp.discount)
    upd, opt = _tx(config, hp.actor_lr).update(jax.tree.map(jnp.negative, g), opt, actor_params)
    return (optax.apply_updates(actor_params, upd), opt, critic, dual), jnp.mean(tdsq)


def iteration(config: ACConfig, graph: Graph, hp: ACHyperParams, state: TrainState):
    """One update round of the configured algorithm (pure). Returns (state, metrics dict).

    Collect one episode in each of ``num_envs`` environments (E·T transitions), then
    * PG algorithms (SLAM-AC, DAC, MDAC): shuffle the transitions into ``iters_per_round``
      minibatches and run that many iterations, each = critic rule + one actor step (212);
    * PPO algorithms: ``iters_per_round`` critic-rule steps on the minibatches, then GAE with
      the new critics and the PPO epochs on the whole round.
    """
    env = config.env()
    actor, vnet, rnet = config.nets()
    key, k_roll, k_perm, k_crit, k_act = jax.random.split(state.key, 5)
    traj = collect(env, actor, state.actor, k_roll, config.num_envs, config.actor_dim)
    T, E = traj.obs.shape[:2]
    flat = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), traj)
    dc, da = config.critic_dim, config.actor_dim
    batch = make_batch(flat.obs[:, :dc], flat.actions, flat.rewards, flat.next_obs[:, :dc])
    actor_obs = flat.obs[:, :da]
    K, M = config.iters_per_round, config.minibatch_size
    perm = jax.random.permutation(k_perm, T * E)[: K * M].reshape(K, M)
    mbs = jax.tree.map(lambda x: x[perm], (batch, actor_obs, flat.actions))
    crit_keys = jax.random.split(k_crit, K)
    if config.critic_rule == "mdac_fresh":
        # the critic's own fresh minibatches: (K, T_c, B), dealt out independently of the
        # actor's (a key derived from k_perm, so the other algorithms' streams are unchanged)
        Tc, B = config.mdac_inner_steps, config.mdac_batch
        cperm = jax.random.permutation(jax.random.fold_in(k_perm, 1), T * E)
        cperm = cperm[: K * Tc * B].reshape(K, Tc, B)
        cmbs = jax.tree.map(lambda x: x[cperm], batch)
    else:
        cmbs = mbs[0]
    grad_fn = lambda c, b: critic_grads(vnet, rnet, c, b, hp.discount)  # noqa: E731

    if config.actor_rule == "pg":
        def body(carry, xs):
            mb, k = xs
            return _pg_iteration(config, graph, hp, carry, mb, k)

        (actor_params, opt, critic, dual), tdsq = lax.scan(
            body, (state.actor, state.actor_opt, state.critic, state.dual),
            ((mbs, cmbs), crit_keys))
    else:
        rule = _critic_rule(config.critic_rule)

        def body(carry, xs):
            mb, k = xs
            c, d, td = rule(*carry, grad_fn, mb, graph, hp, k, config)
            return (c, d), jnp.mean(td)

        (critic, dual), tdsq = lax.scan(body, (state.critic, state.dual), (cmbs, crit_keys))
        adv = td_advantage(vnet, rnet, critic, batch.obs, batch.rin, batch.next_obs,
                           hp.discount)
        A = gae(adv.reshape(config.n, T, E), hp.discount, hp.gae_lambda).reshape(config.n, -1)
        actor_params, opt, _ = ppo_actor_update(
            actor, _tx(config, hp.actor_lr), state.actor, state.actor_opt, actor_obs,
            flat.actions, flat.logp, A, hp.clip_eps, k_act, config.ppo_epochs,
            config.ppo_minibatches)

    logits = apply_agents(actor, state.actor, actor_obs)
    p = jax.nn.softmax(logits)
    entropy = -jnp.mean(jnp.sum(p * jax.nn.log_softmax(logits), axis=-1))
    metrics = {"return": episode_return(traj), "consensus": graph.disagreement(critic),
               "td_sq": tdsq[0], "entropy": entropy}
    if not config.track_central:
        return TrainState(actor_params, opt, critic, dual, key, state.step + 1), metrics

    # reference centralized critic on the actor minibatches (team reward, same step)
    def ref_body(c, mb):
        return central_critic_step(c, grad_fn, mb, hp, config.critic_steps)[0], None

    central, _ = lax.scan(ref_body, state.central, mbs[0])
    metrics.update(_central_metrics(config, graph, critic, central, state.eval_batch))
    a = jnp.where(state.step == 0, 1.0, EMA_RATE)  # start at the critics after round 1
    ema = jax.tree.map(lambda m, w: (1.0 - a).astype(w.dtype) * m + a.astype(w.dtype) * w,
                       state.critic_ema, critic["w"])
    metrics["consensus_w_ema"] = graph.disagreement(ema)
    new = TrainState(actor_params, opt, critic, dual, key, state.step + 1, central,
                     state.eval_batch, ema)
    return new, metrics


def _scan(config, graph, hp, state, length: int):
    def body(s, _):
        return iteration(config, graph, hp, s)

    return lax.scan(body, state, None, length=length)


def make_train(config: ACConfig, num_updates: int):
    """Pure ``train(graph, hp, key) -> (final TrainState, metrics dict of (num_updates,))``:
    initialisation and ``num_updates`` update rounds in one ``lax.scan``; jit / vmap it."""
    num_updates = int(num_updates)
    if num_updates < 1:
        raise ValueError(f"num_updates must be >= 1, got {num_updates}")

    def train(graph, hp, key):
        return _scan(config, graph, hp, init_state(config, hp, key), num_updates)

    return train


#: XLA options for ``fast_compile=True``: no LLVM optimisation of the generated CPU code.
#: Compiles ~3-5x faster and runs ~2-7x slower — right for tests and ``--quick`` runs.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compile_program(fn, *args, fast_compile: bool = False):
    """``fn.lower(*args).compile()`` (with :data:`FAST_COMPILE` if asked), after checking that
    the process has memory mappings left for one more program (:mod:`slamjax.caches`)."""
    check_memory_maps()
    return fn.lower(*args).compile(compiler_options=FAST_COMPILE if fast_compile else None)


@functools.lru_cache(maxsize=64)
def _batched_fns(config: ACConfig, length: int):
    init = jax.jit(jax.vmap(lambda hp, k: init_state(config, hp, k)))
    chunk = jax.jit(jax.vmap(lambda g, hp, s: _scan(config, g, hp, s, length),
                             in_axes=(None, 0, 0)), donate_argnums=(2,))
    return init, chunk


@dataclasses.dataclass
class RLResult:
    """Outcome of :func:`run`. ``metrics[name]`` has shape (H, S, U): hyperparameter settings ×
    seeds × update rounds."""

    config: ACConfig
    hparams: list
    seeds: list
    metrics: dict
    graph: Graph
    compile_time: float
    run_time: float
    random_return: float

    @property
    def num_updates(self) -> int:
        return next(iter(self.metrics.values())).shape[-1]

    @property
    def diverged_at(self) -> np.ndarray:
        """(H, S): first round whose critic or actor metrics are not finite (−1: never). After
        that round the returns are meaningless (NaN logits sample a fixed action)."""
        return first_nonfinite(self.metrics, ("td_sq", "consensus", "entropy", "return"))

    def final(self, window: int = 50, name: str = "return") -> np.ndarray:
        """Per-run mean of ``name`` over the last ``window`` rounds, shape (H, S)."""
        return np.asarray(self.metrics[name])[..., -window:].mean(axis=-1)

    def to_dict(self) -> dict:
        return {
            "algorithm": self.config.algorithm,
            "config": dataclasses.asdict(self.config),
            "hparams": [{k: float(v) for k, v in h._asdict().items()} for h in self.hparams],
            "seeds": list(self.seeds),
            "graph": graph_info(self.graph),
            "communication": comm_info(self.config, self.graph),
            "compile_time_s": self.compile_time,
            "run_time_s": self.run_time,
            "random_policy_return": self.random_return,
            "diverged_at": self.diverged_at.tolist(),
            "metrics": {k: np.asarray(v).tolist() for k, v in self.metrics.items()},
        }


def first_nonfinite(metrics: dict, names) -> np.ndarray:
    """(H, S): the first round at which any of the metrics ``names`` (each (H, S, rounds)) is
    not finite; −1 where none ever is."""
    bad = np.zeros(np.shape(metrics[names[0]]), bool)
    for k in names:
        bad |= ~np.isfinite(np.asarray(metrics[k]))
    return np.where(bad.any(-1), bad.argmax(-1), -1)


def lanes(hparams, kind, seeds, num_updates: int, chunk: int):
    """The lanes of a vmapped training run: every hyperparameter setting (one ``kind``
    NamedTuple or a sequence of them) × every seed (a count 0..k−1 or a list), setting-major.
    Returns (settings list, seeds list, stacked hyperparameters, PRNG keys, chunk sizes)."""
    hparams = [hparams] if isinstance(hparams, kind) else list(hparams)
    if not hparams:
        raise ValueError("need at least one hyperparameter setting")
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not seeds:
        raise ValueError("need at least one seed")
    num_updates = int(num_updates)
    if num_updates < 1:
        raise ValueError(f"num_updates must be >= 1, got {num_updates}")
    S = len(seeds)
    hp = jax.tree.map(lambda *v: jnp.repeat(jnp.stack(v), S), *hparams)
    keys = jnp.stack([jax.random.key(int(s)) for s in seeds] * len(hparams))
    chunk = max(1, min(int(chunk), num_updates))
    rem = num_updates % chunk
    return hparams, seeds, hp, keys, [chunk] * (num_updates // chunk) + ([rem] if rem else [])


def run(algorithm: str | ACConfig = "slam_ac", graph: Graph | None = None, *,
        hparams: ACHyperParams | Sequence[ACHyperParams] | None = None,
        seeds: int | Sequence[int] = 5, num_updates: int = 1000, chunk: int = 250,
        progress: bool = True, desc: str | None = None, fast_compile: bool = False,
        **config_kwargs) -> RLResult:
    """Train ``algorithm`` for every hyperparameter setting × seed in one vmapped program.

    ``algorithm``: a name (``slam_ac``, ``dac``, ``mdac``, ``slam_ppo``, ``dec_ppo``) plus
    ``ACConfig`` keyword arguments, or an :class:`ACConfig`. ``graph`` defaults to
    :func:`default_graph` (n). ``hparams`` defaults to :func:`make_hparams` (paper values).
    ``seeds``: a count (0..k−1) or a list; the same seeds are used for every setting (and, by
    the caller, for every algorithm), so runs are paired across algorithms.
    ``num_updates`` counts update rounds (each = one episode per environment + K iterations).
    ``fast_compile`` trades run time for compile time (:data:`FAST_COMPILE`).
    """
    config = algorithm if isinstance(algorithm, ACConfig) else ACConfig(algorithm, **config_kwargs)
    if isinstance(algorithm, ACConfig) and config_kwargs:
        config = dataclasses.replace(config, **config_kwargs)
    graph = default_graph(config.n) if graph is None else graph
    if not isinstance(graph, Graph):
        raise ValueError(f"graph must be a slamjax Graph, got {type(graph).__name__}")
    if graph.n != config.n:
        raise ValueError(f"graph has n={graph.n} agents but the config has n={config.n}")
    if hparams is None:
        hparams = [make_hparams(graph)]
    hparams, seeds, hp, keys, sizes = lanes(hparams, ACHyperParams, seeds, num_updates, chunk)
    H, S = len(hparams), len(seeds)
    chunk = sizes[0]
    desc = desc or config.display_name

    t0 = time.perf_counter()
    compiled = {}
    init, _ = _batched_fns(config, chunk)
    state = compile_program(init, hp, keys, fast_compile=fast_compile)(hp, keys)
    for L in sorted(set(sizes)):
        _, fn = _batched_fns(config, L)
        compiled[L] = compile_program(fn, graph, hp, state, fast_compile=fast_compile)
    jax.block_until_ready(state)
    compile_time = time.perf_counter() - t0

    def chunk_fn(L, st):
        return compiled[L](graph, hp, st)

    def on_chunk(st, m, done):
        r = np.asarray(m["return"])[..., -min(np.shape(m["return"])[-1], 20):].mean(axis=-1)
        return {"return": f"{r.mean():.3f}", "min": f"{r.min():.2f}", "max": f"{r.max():.2f}"}

    state, logs, run_time = drive(chunk_fn, state, sizes, desc=desc, progress=progress,
                                  unit="round", on_chunk=on_chunk)
    metrics = {}
    for k in logs[0]:  # (H·S, rounds[, extra]) per chunk -> (H, S, rounds[, extra])
        a = np.concatenate([np.asarray(m[k]) for m in logs], axis=1)
        metrics[k] = a.reshape((H, S) + a.shape[1:])
    rand = random_policy_return(config.n, jax.random.key(12345), max_steps=config.max_steps,
                                local_ratio=config.local_ratio)
    return RLResult(config, hparams, seeds, metrics, graph, compile_time, run_time, rand)
