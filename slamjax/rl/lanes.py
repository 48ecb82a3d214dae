"""Both actor-critic trainers on the one host driver (:func:`slamjax.driver.execute`).

A trainer provides a pure ``init(config, hp, key) -> state`` and one update round
``iteration(config, graph, hp, state) -> (state, metrics)`` (its own PRNG stream lives in the
state, so the driver's per-step key is unused and a lane's numbers do not depend on how the
rounds are chunked). This module

* lays out the lanes: every hyperparameter setting × every seed, setting-major, flattened into
  the driver's one vmapped axis (settings are its grid axis, so every history is
  (settings, seeds, rounds[, metric axes]));
* compiles the vmapped init once per (configuration, shapes) in a bounded program cache
  (emptied by :func:`slamjax.clear_caches`; the memory-map check of :mod:`slamjax.caches` runs
  before each compile) and runs it;
* hands the rounds to the driver (one program per chunk size, ``log_every=1``, no step-0 log,
  donated state) and returns its :class:`~slamjax.RunResult`.

``fast_compile=True`` compiles the init and the driver's chunks without LLVM optimisation
(:data:`FAST_COMPILE`): compiles ~3-5x faster and runs ~2-7x slower — right for tests and
``--quick`` runs. ``checkpoint=DIR`` / ``resume=True`` checkpoint and resume the rounds as
:func:`slamjax.run` does (:mod:`slamjax.checkpoint`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.algorithm import Static, from_kernel
from slamjax.caches import ProgramCache
from slamjax.checks import signature
from slamjax.comm import Graph, spectral_gap
from slamjax.checkpoint import Checkpointing, describe, fingerprint
from slamjax.driver import Lanes, execute
from slamjax.results import RunResult

__all__ = ["FAST_COMPILE", "graph_info", "hparam_lanes", "init_lanes",
           "round_kernel", "run_rounds", "check_graph", "first_nonfinite_round"]

FAST_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0}
"""XLA options for ``fast_compile=True``: no LLVM optimisation of the generated CPU code.
Compiles ~3-5x faster and runs ~2-7x slower — right for tests and ``--quick`` runs."""

_INITS = ProgramCache(maxsize=16)
"""Compiled vmapped init programs, keyed on (init, configuration, fast_compile, signature)."""


def graph_info(graph: Graph) -> dict:
    """What a comparison must state about its graph: kind, n, edges, λ_max(L) and the spectral
    gap 1 − |λ₂(W)| of the Metropolis matrix (0 for the empty graph: no mixing at all)."""
    return {"kind": graph.kind, "n": graph.n, "num_edges": graph.num_edges,
            "edges": graph.edges().tolist(), "lam_max": graph.lam_max,
            "spectral_gap": spectral_gap(graph) if graph.n > 1 else 1.0}


def check_graph(graph, n: int, what: str = "n") -> Graph:
    """``graph`` if it is a :class:`~slamjax.Graph` on ``n`` agents, else a ValueError."""
    if not isinstance(graph, Graph):
        raise ValueError(f"graph must be a slamjax Graph, got {type(graph).__name__}")
    if graph.n != n:
        raise ValueError(f"graph has n={graph.n} agents but the config has {what}={n}")
    return graph


def hparam_lanes(hparams, kind, seeds):
    """The lanes of a vmapped training run: every hyperparameter setting (one ``kind``
    NamedTuple or a sequence of them) × every seed (a count 0..k−1 or a list), setting-major.
    Returns (settings list, seeds list, stacked hyperparameters, PRNG keys), the last two with
    one leading lane axis of H·S."""
    hparams = [hparams] if isinstance(hparams, kind) else list(hparams)
    if not hparams:
        raise ValueError("need at least one hyperparameter setting")
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not seeds:
        raise ValueError("need at least one seed")
    S = len(seeds)
    hp = jax.tree.map(lambda *v: jnp.repeat(jnp.stack(v), S), *hparams)
    keys = jnp.stack([jax.random.key(int(s)) for s in seeds] * len(hparams))
    return hparams, [int(s) for s in seeds], hp, keys


def init_lanes(init: Callable, config, hp, keys, *, fast_compile: bool = False):
    """``vmap(init(config, ·, ·))`` over the lanes of ``hp`` and ``keys``, compiled once per
    (init, configuration, shapes, ``fast_compile``) and run."""
    fn = jax.jit(jax.vmap(lambda h, k: init(config, h, k)))
    program = _INITS.get((init, config, bool(fast_compile), signature((hp, keys))),
                         lambda: fn.lower(hp, keys).compile(
                             compiler_options=FAST_COMPILE if fast_compile else None))
    return program(hp, keys)


def _setting(hp) -> dict:
    return {k: float(v) for k, v in hp._asdict().items()}


def round_kernel(iteration, config, key, state, hp, data, comm):
    """One update round ``iteration(config, comm, hp, state)`` as a driver kernel (the
    arguments before ``key`` are :class:`~slamjax.Static`). The round's PRNG stream is the
    state's own, so ``key`` is unused."""
    del key, data
    return iteration.value(config.value, comm, hp, state)


def run_rounds(iteration: Callable, init: Callable, config, graph: Graph, hp, state, keys, *,
               hparams: Sequence, seeds: Sequence, num_rounds: int, chunk: int,
               progress: bool, desc: str, fast_compile: bool, compile_started: float,
               meta: dict, checkpoint=None, checkpoint_every: int | None = None,
               resume: bool = False) -> RunResult:
    """``num_rounds`` rounds of ``iteration(config, graph, hp, state) -> (state, metrics)``
    (a module-level function) on every lane, by the driver.

    The driver caches its compiled programs on the kernel (:func:`round_kernel` with
    ``iteration`` and the hashed configuration), the compiler options and the shapes.
    ``compile_started``: when the init's compile started (it counts as compile time).
    ``meta`` goes into the result's ``meta``."""
    step = jax.tree_util.Partial(round_kernel, Static(iteration), Static(config))
    algorithm = from_kernel(init, step, graph)
    lanes = Lanes([_setting(h) for h in hparams], list(seeds))
    per_chunk = max(1, min(int(chunk), num_rounds))
    ck = Checkpointing()
    if checkpoint is not None:
        ck = Checkpointing(checkpoint, checkpoint_every, bool(resume), fingerprint(
            config=describe(config), hparams=hp, seeds=list(seeds), graph=graph,
            settings=dict(num_rounds=num_rounds, chunk=per_chunk, iteration=describe(
                iteration))))
    result = execute(algorithm, hp, None, state, keys, num_steps=num_rounds, log_every=1,
                     lanes=lanes, params_batched=True, initial_log=False, progress=progress,
                     desc=desc, unit="round", logs_per_chunk=per_chunk, donate=True,
                     compile_started=compile_started, checkpointing=ck,
                     compiler_options=FAST_COMPILE if fast_compile else None)
    result.meta.update(meta)
    return result


def first_nonfinite_round(result: RunResult) -> np.ndarray:
    """(H, S): the index of the first logged round whose state or metrics were not finite
    (the driver's ``diverged_at`` counts the rounds done when it saw it, so this is
    ``diverged_at − 1``); −1 where the lane stayed finite. From that round on the lane's
    returns are meaningless (the driver logs NaN after it)."""
    div = result.lane_diverged()
    return np.where(div >= 0, div - 1, -1)
