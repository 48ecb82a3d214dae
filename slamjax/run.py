"""The runner: ``lax.scan`` over steps inside jit-compiled chunks, a host loop over chunks.

The host loop is where people-facing things happen — a progress bar, NaN/Inf detection (stop,
report the step, keep the last finite state and everything logged before it) — while the inner
loop stays a single compiled program with no host round-trips. Metrics are logged every
``log_every`` steps (and at step 0). ``seeds=[...]`` vmaps whole runs over random seeds in one
compiled program.

For a pure, differentiable end-to-end function use :func:`slamjax.slam.scan_steps` (or
:func:`solve`), which has no host loop at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.graphs import Graph
from slamjax.metrics import evaluate
from slamjax.problem import BilevelProblem, ProblemData
from slamjax.slam import SLAMConfig, SLAMParams, SLAMState, init, scan_steps, step, validate

__all__ = ["RunResult", "run", "solve", "DivergenceWarning"]


class DivergenceWarning(RuntimeWarning):
    """A run produced NaN/Inf and was stopped."""


@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`run`.

    ``history[name]`` has shape (num_logs,) — or (num_seeds, num_logs) with ``seeds`` — and
    ``steps`` the iteration index of each log. ``state`` is the last finite state.
    """

    state: SLAMState
    history: dict
    steps: np.ndarray
    compile_time: float
    run_time: float
    num_steps: int
    diverged_at: int | None = None

    @property
    def steps_per_sec(self) -> float:
        return self.num_steps / self.run_time if self.run_time > 0 else float("nan")

    def final(self) -> dict:
        """Last logged value of every metric (mean over seeds when batched)."""
        return {k: float(np.mean(np.asarray(v)[..., -1])) for k, v in self.history.items()}

    def to_dict(self) -> dict:
        return {
            "steps": self.steps.tolist(),
            "history": {k: np.asarray(v).tolist() for k, v in self.history.items()},
            "final": self.final(),
            "compile_time_s": self.compile_time,
            "run_time_s": self.run_time,
            "steps_per_sec": self.steps_per_sec,
            "num_steps": self.num_steps,
            "diverged_at": self.diverged_at,
        }

    def save_json(self, path, **meta) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**meta, **self.to_dict()}, indent=1, default=_jsonable))
        return path


def _jsonable(o):
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if dataclasses.is_dataclass(o):
        return {"type": type(o).__name__, **dataclasses.asdict(o)}
    return repr(o)


# ----------------------------------------------------------------------------------------
def solve(problem: BilevelProblem, graph: Graph, params: SLAMParams, data: ProblemData, x0, y0,
          key, num_steps: int, config: SLAMConfig = SLAMConfig(),
          checkpoint_every: int | None = None) -> SLAMState:
    """Pure end-to-end solve: ``num_steps`` SLAM iterations from (x0, y0). Differentiable with
    respect to ``params``, ``data``, ``x0`` and ``y0`` (``jax.grad`` / ``jax.jvp``)."""
    state = init(x0, y0)
    validate(problem, config, graph, params, state, data)  # shapes always; numbers if concrete
    return scan_steps(problem, config, graph, params, state, data, key, num_steps,
                      checkpoint_every)


def _chunk_impl(state, params, graph, data, key, *, problem, config, log_every, nlogs):
    def one_log(s, _):
        s = scan_steps(problem, config, graph, params, s, data, key, log_every)
        return s, evaluate(problem, config, graph, s, data)

    return jax.lax.scan(one_log, state, None, length=nlogs)


_chunk = jax.jit(_chunk_impl, static_argnames=("problem", "config", "log_every", "nlogs"))


def _chunk_seeds_impl(state, params, graph, data, keys, *, problem, config, log_every, nlogs):
    fn = partial(_chunk_impl, problem=problem, config=config, log_every=log_every, nlogs=nlogs)
    return jax.vmap(fn, in_axes=(0, None, None, None, 0))(state, params, graph, data, keys)


_chunk_seeds = jax.jit(_chunk_seeds_impl,
                       static_argnames=("problem", "config", "log_every", "nlogs"))
_eval = jax.jit(evaluate, static_argnames=("problem", "config"))
_eval_seeds = jax.jit(jax.vmap(evaluate, in_axes=(None, None, None, 0, None)),
                      static_argnums=(0, 1))


def run(problem: BilevelProblem, graph: Graph, params: SLAMParams, data: ProblemData, x0, y0,
        *, config: SLAMConfig = SLAMConfig(), num_steps: int = 1000, log_every: int = 10,
        seed: int = 0, seeds: Sequence[int] | None = None, progress: bool = True,
        desc: str | None = None, logs_per_chunk: int | None = None) -> RunResult:
    """Run SLAM for ``num_steps`` iterations, logging metrics every ``log_every`` steps.

    ``seeds`` (a list) runs all seeds in one vmapped program; the histories then get a leading
    seed axis. The same seed always gives the same numbers, whatever the chunking.
    """
    num_steps, log_every = int(num_steps), int(log_every)
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    if log_every < 1 or num_steps % log_every:
        raise ValueError(f"log_every={log_every} must be ≥ 1 and divide num_steps={num_steps}")
    if not isinstance(params, SLAMParams):
        raise TypeError("params must be slamjax.SLAMParams(alpha, beta, rho, gamma)")
    params = SLAMParams(*(jnp.asarray(p) for p in params))
    state = init(x0, y0)
    validate(problem, config, graph, params, state, data)

    batched = seeds is not None
    if batched:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds is empty")
        key = jax.vmap(jax.random.key)(jnp.asarray(seeds, dtype=jnp.uint32))
        state = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(seeds),) + a.shape), state)
        chunk_fn, eval_fn = _chunk_seeds, _eval_seeds
    else:
        key = jax.random.key(int(seed))
        chunk_fn, eval_fn = _chunk, _eval

    num_logs = num_steps // log_every
    per_chunk = min(logs_per_chunk or _chunk_logs(num_logs), num_logs)
    statics = dict(problem=problem, config=config, log_every=log_every)

    t0 = time.perf_counter()
    compiled = {}

    def get(nlogs):
        if nlogs not in compiled:
            compiled[nlogs] = chunk_fn.lower(state, params, graph, data, key, nlogs=nlogs,
                                             **statics).compile()
        return compiled[nlogs]

    get(per_chunk)
    if num_logs % per_chunk:
        get(num_logs % per_chunk)
    first = jax.device_get(eval_fn(problem, config, graph, state, data))
    compile_time = time.perf_counter() - t0

    logs = [{k: np.asarray(v)[..., None] for k, v in first.items()}]
    steps_logged = [0]
    diverged_at = None
    bar = _progress_bar(num_steps, desc or f"{config.variant} n={graph.n}", progress)
    t1 = time.perf_counter()
    done = 0
    while done < num_logs:
        nlogs = min(per_chunk, num_logs - done)
        new_state, mets = get(nlogs)(state, params, graph, data, key)
        mets = jax.device_get(mets)
        finite = np.ones(nlogs, bool)
        for v in mets.values():
            v = np.asarray(v)
            finite &= np.isfinite(v).reshape(-1, nlogs).all(0) if batched else np.isfinite(v)
        state_ok = all(bool(jnp.isfinite(l).all()) for l in jax.tree.leaves(
            (new_state.x, new_state.y)))
        if not (finite.all() and state_ok):
            bad = int(np.argmin(finite)) if not finite.all() else nlogs - 1
            diverged_at = (done + bad + 1) * log_every
            keep = {k: np.asarray(v)[..., :bad] for k, v in mets.items()}
            logs.append(keep)
            steps_logged += [(done + j + 1) * log_every for j in range(bad)]
            warnings.warn(f"{desc or config.variant}: non-finite values (NaN/Inf) by step "
                          f"{diverged_at}; stopped. Returning the last finite state (step "
                          f"{done * log_every}) and the history before it. Reduce the step "
                          "sizes 1/alpha, 1/beta or the penalty rho.", DivergenceWarning,
                          stacklevel=2)
            break
        state = new_state
        logs.append({k: np.asarray(v) for k, v in mets.items()})
        steps_logged += [(done + j + 1) * log_every for j in range(nlogs)]
        done += nlogs
        if bar is not None:
            bar.update(nlogs * log_every)
            bar.set_postfix({k: f"{float(np.mean(np.asarray(v)[..., -1])):.2e}"
                             for k, v in mets.items()}, refresh=False)
    jax.block_until_ready(state)
    run_time = time.perf_counter() - t1
    if bar is not None:
        bar.close()
    history = {k: np.concatenate([l[k] for l in logs], axis=-1) for k in first}
    ran = done * log_every if diverged_at is None else diverged_at
    return RunResult(state=state, history=history, steps=np.asarray(steps_logged),
                     compile_time=compile_time, run_time=run_time, num_steps=ran,
                     diverged_at=diverged_at)


def _chunk_logs(num_logs: int, updates: int = 20) -> int:
    """Logs per compiled chunk: about ``updates`` progress updates, preferring a divisor of
    ``num_logs`` so that a single chunk size is compiled."""
    target = max(1, math.ceil(num_logs / updates))
    for d in range(target, min(num_logs, 4 * target) + 1):
        if num_logs % d == 0:
            return d
    return target


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)
