"""Checkpoints of the driver's carry and clean stops on Ctrl-C / SIGTERM.

A checkpoint is two files in a directory, both written atomically (:mod:`slamjax.io`):
``checkpoint.npz`` (every array of the carry — state, step counters, alive flags, divergence
steps — and the logs so far, bit for bit; PRNG keys as their raw data) and
``checkpoint.json`` (where the run stands, the lane layout, and a **fingerprint** of what was
run: algorithm, params, data, start point, settings and the state's structure, each hashed).
The JSON is written last and names the hash of the ``.npz``, so a pair is consistent or
refused. Resuming a run whose fingerprint differs is refused, naming the parts that differ.

NumPy's ``.npz`` instead of orbax-checkpoint: the carry is one small pytree on one host (a
global array on a mesh is gathered first), it must come back bit for bit, and orbax would pull
tensorstore and its asynchronous machinery into the base install for no gain here.

:func:`deferred_interrupts` turns the first Ctrl-C (or SIGTERM) into a flag that the driver
reads between chunks — it then saves a checkpoint and the partial results and raises
:class:`Interrupted`; a second Ctrl-C interrupts at once. A signal that arrives while XLA
compiles is only recorded, so it never lands inside the compiler.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import json
import re
import signal
import threading
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.io import write_bytes, write_json

__all__ = ["Interrupted", "CheckpointMismatch", "Checkpointing", "fingerprint", "describe",
           "save", "load", "save_carry", "restore_carry", "deferred_interrupts",
           "interrupt_requested"]

FORMAT = 1
"""Version of the checkpoint layout."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM at a chunk boundary: ``result`` holds what was
    computed (a :class:`~slamjax.RunResult`), ``checkpoint`` the directory to resume from
    (``None`` when the run had none)."""

    def __init__(self, message: str, result=None, checkpoint=None):
        super().__init__(message)
        self.result = result
        self.checkpoint = checkpoint


class CheckpointMismatch(ValueError):
    """A checkpoint written by a different run (another fingerprint)."""


# ----------------------------------------------------------------------------------------
# fingerprints
# ----------------------------------------------------------------------------------------
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")


def describe(obj) -> str:
    """A stable text for a static object (memory addresses removed)."""
    return _ADDRESS.sub("", repr(obj))


def _digest(tree) -> str:
    h = hashlib.sha256()
    leaves, treedef = jax.tree.flatten(tree)
    h.update(describe(treedef).encode())
    for leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            a = leaf
            if jnp.issubdtype(jnp.result_type(a), jax.dtypes.prng_key):
                a = jax.random.key_data(a)
            a = np.asarray(jax.device_get(a))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(describe(leaf).encode())
    return h.hexdigest()[:16]


def fingerprint(**parts) -> dict[str, str]:
    """One short hash per named part (arrays by value, static parts by their text)."""
    return {name: _digest(value) for name, value in parts.items()}


# ----------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------
def _to_host(tree) -> tuple[dict, list]:
    arrays, kinds = {}, []
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        kind = "array"
        if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
            kind = "key:" + str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arrays[f"c{i}"] = np.asarray(jax.device_get(leaf))
        kinds.append(kind)
    return arrays, kinds


def save(directory, carry, logs: list, meta: dict) -> Path:
    """Write the checkpoint of ``carry`` (a pytree) and ``logs`` (a list of dicts of host
    arrays) into ``directory`` with ``meta`` (JSON-able). Returns the directory."""
    directory = Path(directory)
    arrays, kinds = _to_host(carry)
    for k, log in enumerate(logs):
        for name, v in log.items():
            arrays[f"log{k}:{name}"] = np.asarray(v)
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    write_bytes(directory / "checkpoint.npz", blob)
    write_json(directory / "checkpoint.json",
               {**meta, "format": FORMAT, "kinds": kinds, "logs": len(logs),
                "npz_sha256": hashlib.sha256(blob).hexdigest()})
    return directory


def load(directory, like, expected: dict | None = None):
    """(carry shaped like ``like``, logs, meta) from ``directory``; ``CheckpointMismatch``
    when its fingerprint differs from ``expected`` (naming the parts) or the files do not
    belong together; ``FileNotFoundError`` when there is none."""
    directory = Path(directory)
    meta_path, npz_path = directory / "checkpoint.json", directory / "checkpoint.npz"
    if not meta_path.exists() or not npz_path.exists():
        raise FileNotFoundError(f"no checkpoint in {directory} (expected checkpoint.json and "
                                "checkpoint.npz)")
    meta = json.loads(meta_path.read_text())
    blob = npz_path.read_bytes()
    if meta.get("format") != FORMAT or hashlib.sha256(blob).hexdigest() != meta.get("npz_sha256"):
        raise CheckpointMismatch(f"{directory}: checkpoint.npz does not match checkpoint.json "
                                 "(written by another run or another slamjax version)")
    if expected is not None:
        saved = meta.get("fingerprint", {})
        differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        if differ:
            raise CheckpointMismatch(
                f"the checkpoint in {directory} is from another run: {', '.join(differ)} "
                f"differ{'s' if len(differ) == 1 else ''}. Resume with exactly the same "
                "arguments, or start afresh (resume=False, or another checkpoint directory)")
    with np.load(_io.BytesIO(blob)) as f:
        leaves = []
        for i, (kind, ref) in enumerate(zip(meta["kinds"], jax.tree.leaves(like))):
            a = f[f"c{i}"]
            if kind.startswith("key:"):
                leaves.append(jax.random.wrap_key_data(jnp.asarray(a), impl=kind[4:]))
            else:
                leaves.append(jnp.asarray(a, dtype=jnp.result_type(ref)))
        logs = [{} for _ in range(meta["logs"])]
        for name in f.files:
            if name.startswith("log"):
                k, key = name[3:].split(":", 1)
                logs[int(k)][key] = f[name]
    return jax.tree.unflatten(jax.tree.structure(like), leaves), logs, meta


# ----------------------------------------------------------------------------------------
# clean stops
# ----------------------------------------------------------------------------------------
_REQUESTED = threading.Event()


def interrupt_requested() -> bool:
    """True after a first Ctrl-C / SIGTERM inside :func:`deferred_interrupts`."""
    return _REQUESTED.is_set()


@contextlib.contextmanager
def deferred_interrupts():
    """While active (main thread only), the first SIGINT or SIGTERM only sets a flag
    (:func:`interrupt_requested`); a second SIGINT raises ``KeyboardInterrupt`` at once. The
    previous handlers are restored on exit. Elsewhere (a thread) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _REQUESTED.clear()

    def first(signum, frame):
        if _REQUESTED.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        _REQUESTED.set()

    old = {s: signal.signal(s, first) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _REQUESTED.clear()


def meta_json(**fields) -> dict[str, Any]:
    """JSON-able metadata of a checkpoint (arrays and tuples made lists)."""
    return json.loads(json.dumps(fields, default=lambda o: np.asarray(o).tolist()))


# ----------------------------------------------------------------------------------------
# the driver's carry
# ----------------------------------------------------------------------------------------
class Checkpointing(NamedTuple):
    """Where and how often :func:`execute` saves its carry (see :mod:`slamjax.checkpoint`):
    ``directory`` (``None``: never), ``every`` (steps between saves; ``None``: every chunk),
    ``resume`` (continue from the checkpoint there, if any) and the run's ``fingerprint``."""

    directory: Any = None
    every: int | None = None
    resume: bool = False
    fingerprint: dict = {}


def save_carry(ck: Checkpointing, carry, logs, chunks: int, done: int, sizes, lanes) -> None:
    """Save the driver's carry after ``chunks`` chunks (``done`` steps) with its logs."""
    save(ck.directory, carry, logs, meta_json(
        chunks=chunks, done=done, sizes=sizes, grid=lanes.grid, seeds=lanes.seeds,
        fingerprint=ck.fingerprint))


def restore_carry(ck: Checkpointing, carry, sizes):
    """(carry, logs, chunks done, steps done) from the checkpoint, or ``None`` (none yet)."""
    if ck.directory is None or not ck.resume:
        return None
    try:
        carry, logs, meta = load(ck.directory, carry, ck.fingerprint)
    except FileNotFoundError:
        return None
    if [tuple(x) for x in meta["sizes"]] != [tuple(x) for x in sizes]:
        raise CheckpointMismatch(f"the checkpoint in {ck.directory} was written with "
                                      f"other chunks ({meta['sizes']} vs {sizes})")
    return carry, logs, int(meta["chunks"]), int(meta["done"])
