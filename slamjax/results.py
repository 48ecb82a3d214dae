"""The one result type of every run (:func:`slamjax.run` and both actor-critic trainers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from slamjax.io import check_output_file, write_json

__all__ = ["RunResult"]


@dataclasses.dataclass
class RunResult:
    """Outcome of a run.

    ``history[name]`` has shape (num_logs,), with leading axes (grid points,) if a grid and
    (seeds,) if seeds were given — e.g. (G, S, num_logs) — and a non-scalar metric's own axes
    after the log axis (:attr:`time_axis`). ``steps`` is the step count at each log (the trainers count update rounds).
    ``state`` is the last finite state (same leading axes). ``diverged_at``: ``None`` if every
    lane stayed finite; else, for a single run, the step by which it diverged, and for a
    batched run an int array over the lanes (−1 = finite). ``messages`` / ``minibatches``
    histories (when the algorithm reports them) are cumulative counts since step 0.
    ``meta``: what the caller adds (a trainer's configuration, graph, controls, …).
    """

    state: Any
    history: dict
    steps: np.ndarray
    compile_time: float
    run_time: float
    num_steps: int
    diverged_at: Any = None
    grid: list | None = None
    seeds: list | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def steps_per_sec(self) -> float:
        """Steps run per second of run time (compilation excluded)."""
        return self.num_steps / self.run_time if self.run_time > 0 else float("nan")

    @property
    def metrics(self) -> dict:
        """The history (the trainers' name for it)."""
        return self.history

    @property
    def time_axis(self) -> int:
        """The axis of ``history`` arrays that counts the logs (after the lane axes)."""
        return int(self.grid is not None) + int(self.seeds is not None)

    def final(self) -> dict:
        """Last logged value of every metric (mean over lanes and a metric's own axes)."""
        out = {}
        for k, v in self.history.items():
            a = np.asarray(v, dtype=float)
            out[k] = float(np.mean(np.take(a, -1, axis=self.time_axis))) if a.size else \
                float("nan")
        return out

    def window_mean(self, name: str, window: int = 1) -> np.ndarray:
        """Per lane, the mean of ``name`` over its last ``window`` logs: shape (G, S, ...)."""
        a = np.asarray(self.history[name])
        idx = [slice(None)] * a.ndim
        idx[self.time_axis] = slice(-int(window), None)
        return a[tuple(idx)].mean(axis=self.time_axis)

    def lane_diverged(self) -> np.ndarray:
        """Per lane, the step by which it diverged (−1: finite), with the lanes' shape."""
        lead = tuple(d for d, on in ((len(self.grid or ()), self.grid is not None),
                                     (len(self.seeds or ()), self.seeds is not None)) if on)
        if self.diverged_at is None:
            return np.full(lead, -1, np.int64)
        return np.broadcast_to(np.asarray(self.diverged_at), lead)

    def to_dict(self) -> dict:
        """Everything as JSON-able values (``meta`` first)."""
        div = self.diverged_at
        return {
            **self.meta,
            "steps": np.asarray(self.steps).tolist(),
            "history": {k: np.asarray(v).tolist() for k, v in self.history.items()},
            "final": self.final(),
            "grid": self.grid,
            "seeds": self.seeds,
            "compile_time_s": self.compile_time,
            "run_time_s": self.run_time,
            "steps_per_sec": self.steps_per_sec,
            "num_steps": self.num_steps,
            "final_step": int(self.steps[-1]) if len(self.steps) else None,
            "diverged_at": np.asarray(div).tolist() if div is not None else None,
        }

    def save_json(self, path, **meta) -> Path:
        """Write :meth:`to_dict` (and ``meta``) as strict JSON to the file ``path`` (NaN of a
        diverged lane is ``null``; ``diverged_at`` says which). A bad path (a directory, a
        path under a file, an unwritable place) is a ``ValueError`` naming it before anything
        is written; the file is replaced atomically."""
        path = check_output_file(path, "save_json: path")
        return write_json(path, {**meta, **self.to_dict()})
