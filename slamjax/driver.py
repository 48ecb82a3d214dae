"""The one host driver: lanes (seeds × a grid), compiled chunks, progress, divergence, history.

* :func:`run` — the people-facing run of an :class:`~slamjax.Algorithm` from (x0, y0):
  ``seeds=[...]`` and ``grid=...`` (a dict of value lists, crossed, or a list of points)
  become vmapped lanes of **one** compiled program; metrics every ``log_every`` steps (the
  last block may be shorter); one progress bar; NaN/Inf detection per lane (a diverged lane
  keeps its last finite state and is marked with the step of divergence, the others go on);
  an optional early-stop callback; a :class:`~slamjax.RunResult` (JSON via ``save_json``).
  ``placement=`` runs it on a device mesh or over several processes
  (:mod:`slamjax.placement`).
* :func:`execute` — the host loop itself over already built lanes; the actor-critic trainers
  (:mod:`slamjax.rl`) call it with their own init and step.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax import checkpoint as ckpt
from slamjax.algorithm import COUNTERS, Algorithm, evaluate, merge_static, split_static
from slamjax.caches import ProgramCache
from slamjax.checks import all_finite, check_inputs, eager_checks, signature
from slamjax.lanes import (Lanes, as_arrays, grid_points, lane_keys, lane_states,
                           reshape_lanes, stack_points, with_point)
from slamjax.loop import check_algorithm, check_seed, step_body
from slamjax.results import RunResult
from slamjax.schedules import at

__all__ = ["DivergenceWarning", "Lanes", "run", "execute", "grid_points",
           "compiled_programs", "progress_bar", "drive", "log_sizes"]


class DivergenceWarning(RuntimeWarning):
    """A run (or a lane of a batched run) produced NaN/Inf and was stopped."""


# ----------------------------------------------------------------------------------------
# the compiled chunk: nlogs × (log_every steps, metrics) for one lane, vmapped over lanes
# ----------------------------------------------------------------------------------------
def _lane_chunk(alg, params, data, carry, key, log_every, nlogs):
    body = step_body(alg, params, data, key)

    def one_log(c, _):
        state, t, alive, div = c
        (new, t2), infos = lax.scan(body, (state, t), None, length=log_every)
        mets = evaluate(alg, new, data)
        for k, v in dict(infos).items():
            mets[k] = jnp.sum(v, axis=0) if k in COUNTERS else v[-1]
        ok = all_finite(new) & all_finite({k: v for k, v in mets.items()
                                           if k not in COUNTERS})
        keep = alive & ok
        state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
        div = jnp.where(alive & ~ok, t2, div)
        nan = lambda v: jnp.where(alive, v, jnp.full_like(v, jnp.nan))  # noqa: E731
        mets = {k: nan(jnp.asarray(v, jnp.result_type(float))) for k, v in mets.items()}
        return (state, t2, keep, div), mets

    return lax.scan(one_log, carry, None, length=nlogs)


def _vmapped(fn, batched_params: bool, lanes: bool):
    if not lanes:
        return fn
    return jax.vmap(fn, in_axes=(0 if batched_params else None, 0, 0))


def _chunk_impl(dyn, params, data, carry, key, *, static, pstatic, log_every, nlogs, batch):
    alg = merge_static(dyn, static)

    def lane(p, k, c):  # params: array leaves traced, callables (schedules) static
        return _lane_chunk(alg, merge_static(p, pstatic), data, c, k, log_every, nlogs)

    return _vmapped(lane, *batch)(params, key, carry)


_STATICS = ("static", "pstatic", "log_every", "nlogs", "batch")
_chunk = jax.jit(_chunk_impl, static_argnames=_STATICS)
_chunk_donating = jax.jit(_chunk_impl, static_argnames=_STATICS, donate_argnames=("carry",))

#: compiled chunk programs, keyed on the static arguments and the abstract signature of the
#: traced ones (shape, dtype, weak type, sharding): a new run with other numbers — other
#: hyperparameters, data values, seeds — reuses the program; compile time is measured apart.
#: Bounded (least recently used out): each live program holds memory mappings
#: (:mod:`slamjax.caches`); ``slamjax.clear_caches()`` empties it.
_PROGRAMS = ProgramCache(maxsize=32)


def _compiled(fn, args, statics, options=None):
    key = (fn, tuple(sorted(statics.items())), signature(args),
           tuple(sorted((options or {}).items())))
    return _PROGRAMS.get(key, lambda: fn.lower(*args, **statics).compile(
        compiler_options=options))


def compiled_programs() -> int:
    """How many chunk programs the driver has compiled in this process (a run with new
    numbers but the same shapes and static configuration adds none)."""
    return _PROGRAMS.compiles


def _eval_impl(dyn, data, state, *, static, batch):
    alg = merge_static(dyn, static)
    return _vmapped(lambda p, k, s: evaluate(alg, s, data), *batch)(None, None, state)


_eval = jax.jit(_eval_impl, static_argnames=("static", "batch"))


# ----------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------
def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "step"):
    """The library's one progress display (tqdm; ``None`` when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=True, dynamic_ncols=True)


def drive(chunk_fn: Callable, carry, sizes: Sequence, *, desc: str, progress: bool = True,
          unit: str = "step", units: Callable = lambda size: size,
          on_chunk: Callable[[Any, Any, int], dict | bool | None] | None = None,
          done: int = 0):
    """Host loop over compiled chunks: ``carry, out = chunk_fn(size, carry)`` for each size.

    ``units(size)`` is the progress a chunk makes (``done``: units already made, e.g. by a
    resumed run); ``on_chunk(carry, out, done)`` sees every chunk's output after it ran; it
    may return a dict (shown beside the progress bar) or ``True`` to stop early. Returns
    (carry, outputs, wall seconds)."""
    bar = progress_bar(done + sum(units(s) for s in sizes), desc, progress, unit)
    if bar is not None and done:
        bar.update(done)
    outs, t0 = [], time.perf_counter()
    try:
        for size in sizes:
            carry, out = chunk_fn(size, carry)
            out = jax.device_get(out)
            outs.append(out)
            done += units(size)
            note = on_chunk(carry, out, done) if on_chunk is not None else None
            if bar is not None:
                bar.update(units(size))
                if isinstance(note, dict):
                    bar.set_postfix(note, refresh=False)
            if note is True:
                break
    finally:
        if bar is not None:
            bar.close()
    jax.block_until_ready(carry)
    return carry, outs, time.perf_counter() - t0


def log_sizes(num_steps: int, log_every: int, logs_per_chunk: int | None = None,
              updates: int = 20) -> list[tuple[int, int]]:
    """Chunks as (logs, steps per log): about ``updates`` progress updates, preferring a
    divisor of the number of full logs (one chunk size compiled); a last, shorter block when
    ``log_every`` does not divide ``num_steps``."""
    full, rem = divmod(num_steps, log_every)
    sizes = []
    if full:
        per = logs_per_chunk or _chunk_logs(full, updates)
        per = min(per, full)
        sizes = [(per, log_every)] * (full // per) + ([(full % per, log_every)]
                                                      if full % per else [])
    if rem:
        sizes.append((1, rem))
    return sizes


def _chunk_logs(num_logs: int, updates: int = 20) -> int:
    target = max(1, math.ceil(num_logs / updates))
    for d in range(target, min(num_logs, 4 * target) + 1):
        if num_logs % d == 0:
            return d
    return target


def _history(logs, time_axis: int, counters_from=None) -> dict:
    """Logs (dicts of arrays whose axis ``time_axis`` counts logs) concatenated; counters
    (per-interval sums) made cumulative; keys missing from the first log (info entries of the
    step-0 log) start at 0."""
    if not logs:
        return {}
    keys = list(logs[0]) + [k for lg in logs[1:2] for k in lg if k not in logs[0]]

    def get(lg, k):
        if k in lg:
            return np.asarray(lg[k], dtype=float)
        like = np.asarray(logs[1][k], dtype=float)
        shape = list(like.shape)
        shape[time_axis] = 1
        return np.zeros(shape)

    hist = {k: np.concatenate([get(lg, k) for lg in logs], axis=time_axis) for k in keys}
    for k in COUNTERS:  # per-interval sums -> cumulative counts (float64 on the host)
        if k in hist:
            hist[k] = np.cumsum(np.nan_to_num(hist[k]), axis=time_axis)
    return hist


# ----------------------------------------------------------------------------------------
# the host loop over lanes
# ----------------------------------------------------------------------------------------
def _diverged(div, alive, lanes: Lanes):
    """``None`` if every lane stayed finite; else the step of divergence (one lane) or the
    array of them over the lanes (−1: finite)."""
    if lanes.count is None:
        return None if bool(alive) else int(div)
    div = np.asarray(div)
    return div.reshape(lanes.shape) if (div >= 0).any() else None


def _warn_divergence(diverged, lanes: Lanes, name: str, last_finite: int = 0) -> None:
    if lanes.count is None:
        warnings.warn(f"{name}: non-finite values (NaN/Inf) by step {diverged}; stopped. "
                      f"Returning the last finite state (step {last_finite}) and the history "
                      "before it. Reduce the step sizes or the penalty (for SLAM: 1/alpha, "
                      "1/beta or rho).", DivergenceWarning, stacklevel=4)
        return
    flat = np.asarray(diverged).reshape(-1)
    bad = np.nonzero(flat >= 0)[0]
    where = [lanes.label(i) + f" at step {flat[i]}" for i in bad]
    warnings.warn(f"{name}: {bad.size} of {flat.size} lanes diverged (NaN/Inf) and were "
                  f"frozen at their last finite state: " + "; ".join(where[:8])
                  + (" …" if len(where) > 8 else ""), DivergenceWarning, stacklevel=4)


def _assemble(carry, logs, sizes, lanes, *, initial_log, time_axis, desc, is_main,
              compile_time, run_time, meta=None) -> RunResult:
    state, _, alive, div = carry
    history = reshape_lanes(_history(logs, time_axis), lanes)
    steps = _log_steps(logs, sizes, initial_log)
    diverged = _diverged(div, alive, lanes)
    if diverged is not None and is_main:
        last = [int(t) for t in steps if t < diverged] if lanes.count is None else [0]
        _warn_divergence(diverged, lanes, desc, last[-1] if last else 0)
    ran = int(steps[-1]) if len(steps) else 0
    if lanes.count is None and diverged is not None:
        keep = int(np.searchsorted(steps, diverged))  # logs strictly before the divergent one
        history = {k: v[:keep] for k, v in history.items()}
        steps = steps[:keep]
        ran = diverged
    return RunResult(state=reshape_lanes(state, lanes), history=history, steps=steps,
                     compile_time=compile_time, run_time=run_time, num_steps=ran,
                     diverged_at=diverged, grid=lanes.grid, seeds=lanes.seeds,
                     meta=dict(meta or {}))


def execute(algorithm: Algorithm, params, data, state, keys, *, num_steps: int,
            log_every: int, lanes: Lanes = Lanes(), params_batched: bool = False,
            initial_log: bool = True, progress: bool = True, desc: str = "run",
            unit: str = "step", logs_per_chunk: int | None = None,
            callback: Callable | None = None, donate: bool = False,
            is_main: bool = True, compile_started: float | None = None,
            checkpointing: ckpt.Checkpointing = ckpt.Checkpointing(),
            compiler_options: dict | None = None) -> RunResult:
    """Run ``algorithm.step`` on every lane of ``state`` (leading lane axis when ``lanes``
    has one; ``keys`` one per lane; ``params`` with a lane axis iff ``params_batched``) for
    ``num_steps`` steps, logging ``algorithm.metrics`` and the step's ``info`` every
    ``log_every`` steps. ``initial_log``: also log the metrics of the start state (step 0).
    ``callback(steps, history)`` after every chunk: ``True`` stops, an int sets the total
    number of steps (rounded up to a log). ``donate``: the state's buffers are reused.
    ``is_main``: this process prints progress and warnings (several processes).
    ``checkpointing``: save the carry at chunk boundaries and resume from it; the first
    Ctrl-C or SIGTERM stops at the next chunk boundary, saves, and raises
    :class:`slamjax.checkpoint.Interrupted` carrying the partial result.
    ``compiler_options``: XLA options of the chunk programs (part of the cache key)."""
    batch = (params_batched, lanes.count is not None)
    lead = () if lanes.count is None else (lanes.count,)
    carry = (state, jnp.zeros(lead, jnp.int32), jnp.ones(lead, bool),
             jnp.full(lead, -1, jnp.int32))
    dyn, static = split_static(algorithm)
    params, pstatic = split_static(params)
    sizes = log_sizes(num_steps, log_every, logs_per_chunk)
    fn = _chunk_donating if donate else _chunk
    t0 = time.perf_counter() if compile_started is None else compile_started
    ck = checkpointing
    time_axis = 1 if lanes.count is not None else 0
    assemble = partial(_assemble, sizes=sizes, lanes=lanes, initial_log=initial_log,
                       time_axis=time_axis, desc=desc, is_main=is_main)

    def get(size):
        return _compiled(fn, (dyn, params, data, carry, keys),
                         dict(static=static, pstatic=pstatic, log_every=size[1],
                              nlogs=size[0], batch=batch), compiler_options)

    with ckpt.deferred_interrupts():
        for size in dict.fromkeys(sizes):
            get(size)
        restored = ckpt.restore_carry(ck, carry, sizes)
        if restored is None:
            logs, start, done0 = [], 0, 0
            if initial_log:
                first = jax.device_get(_eval(dyn, data, state, static=static, batch=batch))
                logs.append({k: np.expand_dims(np.asarray(v, dtype=float), time_axis)
                             for k, v in first.items()})
        else:
            carry, logs, start, done0 = restored
        compile_time = time.perf_counter() - t0
        state_of = {"saved": done0, "chunks": start}
        on_chunk = _chunk_hook(logs, sizes, lanes, ck, state_of, callback, assemble,
                               initial_log, time_axis, compile_time, num_steps)
        if ckpt.interrupt_requested():
            on_chunk(carry, None, done0)
        carry, _, run_time = drive(lambda size, c: get(size)(dyn, params, data, c, keys),
                                   carry, sizes[start:], desc=desc,
                                   progress=progress and is_main, unit=unit,
                                   units=lambda size: size[0] * size[1], on_chunk=on_chunk,
                                   done=done0)
        if ck.directory is not None and state_of.get("done", done0) != state_of["saved"]:
            ckpt.save_carry(ck, carry, logs, state_of["chunks"], state_of["done"], sizes, lanes)
    result = assemble(carry, logs, compile_time=compile_time, run_time=run_time)
    result.meta.update(log_every=log_every, last_block=num_steps % log_every or log_every)
    return result


def _chunk_hook(logs, sizes, lanes, ck, progress, callback, assemble, initial_log,
                time_axis, compile_time, num_steps):
    """The driver's ``on_chunk``: record the logs, checkpoint, stop on an interrupt, run the
    user's callback, and say when to stop."""
    total = [num_steps]

    def on_chunk(c, mets, done):
        if mets is not None:
            logs.append({k: np.asarray(v) for k, v in mets.items()})
            progress["chunks"] += 1
        progress["done"] = done
        if ck.directory is not None and (ck.every is None
                                         or done - progress["saved"] >= ck.every):
            ckpt.save_carry(ck, c, logs, progress["chunks"], done, sizes, lanes)
            progress["saved"] = done
        if ckpt.interrupt_requested():
            if ck.directory is not None and progress["saved"] != done:
                ckpt.save_carry(ck, c, logs, progress["chunks"], done, sizes, lanes)
            where = f"; resume from {ck.directory}" if ck.directory is not None else ""
            raise ckpt.Interrupted(f"interrupted after {done} of {num_steps} steps{where}",
                                   assemble(c, list(logs), compile_time=compile_time,
                                            run_time=float("nan")), ck.directory)
        if not np.asarray(c[2]).any():
            return True
        if callback is not None:
            hist = reshape_lanes(_history(logs, time_axis), lanes)
            ans = callback(_log_steps(logs, sizes, initial_log), hist)
            if ans is True:
                return True
            if ans is not None and ans is not False:
                total[0] = min(total[0], int(ans))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lanes
            note = {k: f"{np.nanmean(np.asarray(v, dtype=float)):.2e}"
                    for k, v in mets.items() if k not in COUNTERS and np.ndim(v) <= 2}
        return True if done >= total[0] else note

    return on_chunk


def _log_steps(logs, sizes, initial_log: bool) -> np.ndarray:
    """Step count at each log so far (the initial log at step 0)."""
    per_log = [e for n, e in sizes for _ in range(n)]
    chunks = len(logs) - int(initial_log)
    done = sum(n for n, _ in sizes[:chunks])
    steps = np.cumsum([0] + per_log[:done]) if initial_log else np.cumsum(per_log[:done])
    return np.asarray(steps, dtype=np.int64)


# ----------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------
def _check_steps(num_steps, log_every) -> tuple[int, int]:
    for name, v in (("num_steps", num_steps), ("log_every", log_every)):
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
    return int(num_steps), int(log_every)


def _lane_params_and_keys(params, points, seed, seed_list):
    """Params stacked over grid points and repeated over seeds, and one key per lane
    (flattened grid-major)."""
    G, S = (len(points) if points else None), (len(seed_list) if seed_list else None)
    if G is not None:
        params = stack_points(params, points)
        if S is not None:
            params = jax.tree.map(lambda a: a if callable(a) else jnp.repeat(a, S, axis=0),
                                  params)
    keys = lane_keys(seed, seed_list)
    if G is not None:
        keys = jnp.broadcast_to(keys, (G,) + keys.shape).reshape((G * (S or 1),))
    return params, keys


def _checks(algorithm, params, points, data, x0, y0, one_state) -> None:
    """All input checks once; the algorithm's parameter check once per grid point; the start
    state must be finite (the driver's "last finite state" starts there)."""
    for i, p in enumerate(points or [{}]):
        if i == 0:
            eager_checks(algorithm, with_point(params, p), data, x0, y0, one_state)
        elif algorithm.check is not None:
            algorithm.check(at(with_point(params, p), 0), one_state, data)
    if not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(one_state)
               if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
               and getattr(leaf, "is_fully_addressable", True)):
        raise ValueError("the initial state built by the algorithm's init from x0, y0 has "
                         "NaN/Inf entries although x0, y0 and the data are finite (overflow?): "
                         "rescale x0, y0 or the data")


def run(algorithm: Algorithm, params, data, x0, y0, *, num_steps: int = 1000,
        log_every: int = 10, seed: int = 0, seeds: Sequence[int] | None = None,
        grid: dict | Sequence[dict] | None = None, batched_init: bool = False,
        progress: bool = True, desc: str | None = None, logs_per_chunk: int | None = None,
        callback: Callable[[np.ndarray, dict], Any] | None = None,
        placement=None, checkpoint=None, checkpoint_every: int | None = None,
        resume: bool = False) -> RunResult:
    """Run ``algorithm`` for ``num_steps`` steps, logging its metrics every ``log_every``
    (when ``log_every`` does not divide ``num_steps`` the last block is shorter).

    ``seeds=[...]`` runs every seed and ``grid`` every hyperparameter point (a dict
    ``{"rho": [...], "alpha": [...]}`` is crossed; a list of dicts is taken as given; a
    schedule's numbers are named ``"field.number"``) as lanes of one vmapped, compiled
    program: histories get leading axes (grid, seeds). The same seed always gives the same
    numbers, whatever the chunking or the other lanes. ``batched_init=True``: x0 and y0 carry
    a leading axis of ``len(seeds)`` (one start per seed). ``callback(steps, history)`` runs
    after every chunk on the host: return ``True`` to stop, an int to set the total number of
    steps to run (rounded up to a log), else None. ``placement``: a
    :class:`slamjax.placement.Sharded` runs one lane with the agent axis sharded over a
    device mesh (one process or several).

    ``checkpoint=DIR`` saves the carry at chunk boundaries (every ``checkpoint_every`` steps,
    default every chunk) and at the end; ``resume=True`` continues from the checkpoint in
    DIR if there is one (refused, naming what differs, when it was written by another run):
    the result is bit for bit the uninterrupted run's. The first Ctrl-C (or SIGTERM) stops at
    the next chunk boundary, saves, and raises :class:`slamjax.checkpoint.Interrupted`
    (a ``KeyboardInterrupt``) whose ``result`` holds the partial run; a second one stops at
    once.
    """
    check_algorithm(algorithm)
    num_steps, log_every = _check_steps(num_steps, log_every)
    if not hasattr(params, "_fields"):
        raise TypeError(f"params must be the algorithm's NamedTuple of hyperparameters (e.g. "
                        f"slamjax.SLAMParams), got {type(params).__name__}")
    params = as_arrays(params)
    points = grid_points(params, grid)
    seed_list = None if seeds is None else [check_seed(s, "seeds entry") for s in seeds]
    if seed_list is not None and not seed_list:
        raise ValueError("seeds is empty")
    if batched_init and seed_list is None:
        raise ValueError("batched_init=True needs seeds=[...] (one x0, y0 per seed)")
    lanes = Lanes(points, seed_list)
    if placement is not None and lanes.count is not None:
        raise ValueError("run(placement=...) runs one lane: leave seeds and grid out (run "
                         "each seed or grid point in its own call)")
    check_inputs(data, x0, y0)
    if placement is not None:
        data, x0, y0 = placement.place_inputs(data, x0, y0)
    state, one_state = lane_states(algorithm, data, x0, y0, seed_list, batched_init, lanes)
    _checks(algorithm, params, points, data, x0, y0, one_state)
    params, keys = _lane_params_and_keys(params, points, seed, seed_list)
    is_main = True
    if placement is not None:
        if checkpoint is not None:
            raise ValueError("run(checkpoint=...) is not supported with a placement yet: "
                             "checkpoint single-device runs")
        state, params, keys = placement.place_state(state), placement.replicate(params), \
            placement.replicate(keys)
        is_main = placement.is_main
    ck = ckpt.Checkpointing()
    if checkpoint is not None:
        ck = ckpt.Checkpointing(checkpoint, checkpoint_every, bool(resume), ckpt.fingerprint(
            algorithm=algorithm, params=params, data=data, x0=x0, y0=y0, state=jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), state),
            settings=dict(num_steps=num_steps, log_every=log_every, seed=seed,
                          seeds=seed_list, grid=points, batched_init=batched_init,
                          logs_per_chunk=logs_per_chunk)))
    return execute(algorithm, params, data, state, keys, num_steps=num_steps,
                   log_every=log_every, lanes=lanes, params_batched=points is not None,
                   progress=progress, desc=desc or "run", logs_per_chunk=logs_per_chunk,
                   callback=callback, is_main=is_main, checkpointing=ck)
