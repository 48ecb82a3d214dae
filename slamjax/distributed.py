"""The sharded simulation on JAX's multi-controller runtime (``jax.distributed``).

One Python process per host (or per accelerator) runs the *same* program; JAX's coordination
service connects them and XLA's collectives (on CPU: gloo over TCP) carry the agent coupling.
The agent axis is split over a global 1-D mesh of every process's devices (ordered by process,
so each process owns one contiguous block of agents); the communication object is the
:class:`slamjax.sharding.PartitionedGraph` of the single-process multi-device runs (ring/torus
halo exchange by ``lax.ppermute``, partitioned edges by one ``lax.all_to_all``), so any
:class:`~slamjax.Algorithm` runs unchanged through the driver with :func:`placement`::

    from slamjax import distributed as dist
    dist.initialize()                              # before any other JAX call; env or arguments
    mesh = dist.global_mesh()                      # all processes' devices, axis "agents"
    pg = sharding.partition_graph(graph, mesh)     # every process builds the same graph
    x0, y0, data = dist.from_local(mesh, n, x0_rows, y0_rows, data_rows)   # only my agents
    state = slamjax.solve(slamjax.slam(problem, pg, cfg), params, data, x0, y0, key, T,
                          placement=dist.placement(mesh))
    x = dist.gather(state.x)                       # full NumPy array on every process

:func:`initialize` joins from arguments or ``$JAX_COORDINATOR_ADDRESS``,
``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID`` (or JAX's cluster detection: SLURM, Open MPI,
Kubernetes, Cloud TPU) with bounded, clear start-up errors; :func:`collective_bytes` reads the
bytes a compiled step moves from its HLO and :func:`predicted_bytes` gives the formula.
``slamjax run --distributed`` is the same as a command. How to launch on a cluster, the
start-up errors and the communication volume per step (with a 10⁸-agent estimate) are in
``docs/distributed.md``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import zlib
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from slamjax import sharding
from slamjax.placement import Sharded, check_divisible
from slamjax.sharding import AXIS

__all__ = ["ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "EXIT_JOIN_TIMEOUT",
           "CoordinatorUnreachable", "Launch", "resolve", "initialize", "is_main",
           "global_mesh", "process_rows", "check_divisible", "local_rows", "from_local",
           "placement", "compile_solve", "gather", "check_consistent", "collective_bytes",
           "step_hlo", "predicted_bytes", "print0"]

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
"""Environment variable with process 0's ``host:port``."""
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
"""Environment variable with the number of processes."""
ENV_PROCESS_ID = "JAX_PROCESS_ID"
"""Environment variable with this process's id (0 … N−1)."""
EXIT_JOIN_TIMEOUT = 75
"""Exit code of a process whose peers did not all join within the timeout."""


class CoordinatorUnreachable(TimeoutError):
    """The coordinator's address did not accept a connection within the timeout."""


class Launch(NamedTuple):
    """Where this process stands: coordinator ``host:port``, process count, own id."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None


# ----------------------------------------------------------------------------------------
# start-up
# ----------------------------------------------------------------------------------------
def _int_env(env, name):
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not an integer") from None


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, env=None) -> Launch:
    """Arguments first, then ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``,
    ``$JAX_PROCESS_ID``. All three ``None`` is allowed (JAX's cluster detection then fills them
    in); a partial or invalid set is a ``ValueError`` naming what is missing."""
    env = os.environ if env is None else env
    c = coordinator or env.get(ENV_COORDINATOR) or None
    n = num_processes if num_processes is not None else _int_env(env, ENV_NUM_PROCESSES)
    k = process_id if process_id is not None else _int_env(env, ENV_PROCESS_ID)
    given = {"--coordinator / $" + ENV_COORDINATOR: c,
             "--num-processes / $" + ENV_NUM_PROCESSES: n,
             "--process-id / $" + ENV_PROCESS_ID: k}
    if all(v is None for v in given.values()):
        return Launch(None, None, None)
    if n == 1 and k in (None, 0):   # one process: nothing to join, no coordinator needed
        return Launch(c, 1, 0)
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError("distributed launch: missing " + ", ".join(missing) + " (give all "
                         "three, or none of them under SLURM / Open MPI / Kubernetes, where "
                         "JAX detects them)")
    host, sep, port = c.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"distributed launch: coordinator address {c!r} must be host:port "
                         "(e.g. 10.0.0.1:12355), with a port in 1..65535")
    if n < 1:
        raise ValueError(f"distributed launch: the number of processes must be ≥ 1, got {n}")
    if not 0 <= k < n:
        raise ValueError(f"distributed launch: process id {k} is outside 0..{n - 1} "
                         f"({n} processes); give each process a distinct id in that range")
    return Launch(c, int(n), int(k))


def probe(address: str, timeout: float) -> float:
    """Seconds until ``address`` (host:port) accepted a TCP connection, retrying until
    ``timeout``; :class:`CoordinatorUnreachable` if it never did."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    t0 = time.monotonic()
    last = None
    while True:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            break
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, left)):
                return time.monotonic() - t0
        except OSError as e:  # refused / unreachable / DNS: the coordinator may start later
            last = e
            time.sleep(min(0.2, max(left, 0)))
    raise CoordinatorUnreachable(
        f"slamjax.distributed: the coordinator {address} did not accept a connection within "
        f"{timeout:g} s ({last}). Start process 0 (it runs the coordinator) with the same "
        f"address, check host and port (open to every host, not firewalled), or raise the "
        f"timeout.")


def _backends_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: float = 120.0,
               local_device_ids=None, cpu_collectives: str = "gloo") -> Launch:
    """Join the multi-controller runtime; call it once per process, before any other JAX
    computation. Returns the :class:`Launch` (with the values JAX settled on).

    ``timeout`` bounds the start-up: a process other than 0 first probes the coordinator's
    port (:class:`CoordinatorUnreachable` after ``timeout`` s); then every process waits at most
    ``timeout`` s for all ``num_processes`` to join, after which a watchdog prints what was
    expected and ends the process with exit code :data:`EXIT_JOIN_TIMEOUT` (JAX's own
    behaviour at its deadline is an abort from C++). A second call with the same values is a
    no-op; with other values a ``ValueError``."""
    launch = resolve(coordinator, num_processes, process_id)
    if jax.distributed.is_initialized():
        have = Launch(launch.coordinator, jax.process_count(), jax.process_index())
        if launch.num_processes not in (None, have.num_processes) or \
                launch.process_id not in (None, have.process_id):
            raise ValueError(f"jax.distributed is already initialized as process "
                             f"{have.process_id} of {have.num_processes}; asked for {launch}")
        return have
    if _backends_started():
        raise RuntimeError("slamjax.distributed.initialize must run before any JAX "
                           "computation in this process (JAX's backends are already "
                           "started); call it first thing, before building graphs or data")
    if launch.num_processes == 1:
        return Launch(launch.coordinator, 1, 0)   # one process: nothing to join
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    t0 = time.monotonic()
    if launch.coordinator is not None and launch.process_id != 0:
        probe(launch.coordinator, timeout)
    done = threading.Event()
    who = (f"process {launch.process_id} of {launch.num_processes}"
           if launch.process_id is not None else "this process")

    def watchdog():
        if done.wait(max(1.0, timeout - (time.monotonic() - t0))):
            return
        sys.stderr.write(
            f"\nslamjax.distributed: error: {who}: not all processes joined the coordinator "
            f"{launch.coordinator or '(auto-detected)'} within {timeout:g} s. Expected "
            f"{launch.num_processes or 'the detected number of'} processes with distinct ids; "
            f"check that every one was started with the same coordinator and process count, "
            f"or raise the timeout. Exiting with code {EXIT_JOIN_TIMEOUT}.\n")
        sys.stderr.flush()
        os._exit(EXIT_JOIN_TIMEOUT)

    threading.Thread(target=watchdog, daemon=True, name="slamjax-join-watchdog").start()
    try:
        jax.distributed.initialize(
            launch.coordinator, launch.num_processes, launch.process_id,
            local_device_ids=local_device_ids,
            # JAX's own deadline a little after ours, so the watchdog speaks first
            initialization_timeout=int(timeout) + 10)
        count = jax.process_count()   # starts the backend: the topology exchange
    except ValueError as e:
        if launch.coordinator is None and "should be defined" in str(e):
            raise ValueError(
                "distributed launch: no coordinator address, process count or process id "
                "given, and JAX detected no cluster (SLURM, Open MPI, Kubernetes, Cloud TPU) "
                f"to read them from ({e}). Pass --coordinator/--num-processes/--process-id "
                f"or set ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}; "
                f"{ENV_NUM_PROCESSES}=1 runs a single process") from None
        raise
    finally:
        done.set()
    if launch.num_processes is not None and count != launch.num_processes:
        raise ValueError(f"process count mismatch: this process was started with "
                         f"num_processes={launch.num_processes}, the coordinator runs "
                         f"{count}; give every process the same count")
    return Launch(launch.coordinator, count, jax.process_index())


def is_main() -> bool:
    """True on process 0 (the one that prints and writes)."""
    return jax.process_index() == 0


def print0(*args, **kw) -> None:
    """``print`` on process 0 only (flushed)."""
    if is_main():
        print(*args, **kw, flush=True)


# ----------------------------------------------------------------------------------------
# mesh and data
# ----------------------------------------------------------------------------------------
def global_mesh(devices=None) -> Mesh:
    """A 1-D mesh (axis ``"agents"``) over every process's devices, ordered by process then
    device id, so that each process owns one contiguous block of agents."""
    devs = sorted(jax.devices() if devices is None else devices,
                  key=lambda d: (d.process_index, d.id))
    return sharding.agent_mesh(devices=devs)


def process_rows(n: int, mesh: Mesh) -> slice:
    """The contiguous agent rows ``start:stop`` that this process's devices own."""
    check_divisible(n, mesh)
    D = int(mesh.shape[AXIS])
    nl = n // D
    mine = [k for k, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if not mine:
        return slice(0, 0)
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError("this process's devices are not contiguous on the mesh (build it with "
                         "slamjax.distributed.global_mesh)")
    return slice(mine[0] * nl, (mine[-1] + 1) * nl)


def local_rows(tree, n: int, mesh: Mesh):
    """This process's rows of every leaf whose leading axis is ``n`` (host NumPy slices; other
    leaves unchanged) — for building local data from a generator that makes all agents."""
    from slamjax.problem import ProblemData

    rows = process_rows(n, mesh)
    cut = lambda t: jax.tree.map(  # noqa: E731
        lambda a: np.asarray(a)[rows] if np.ndim(a) and np.shape(a)[0] == n else a, t)
    is_data = lambda t: isinstance(t, ProblemData)  # noqa: E731
    return jax.tree.map(lambda t: ProblemData(shared=t.shared, agents=cut(t.agents))
                        if is_data(t) else cut(t), tree, is_leaf=is_data)


def from_local(mesh: Mesh, n: int, *trees):
    """Global arrays from each process's own rows: in every tree, leaves whose leading axis is
    this process's row count become agent-sharded global arrays of leading axis ``n``
    (``jax.make_array_from_process_local_data``); a :class:`~slamjax.ProblemData` keeps its
    ``shared`` part replicated (it must be the same on every process). Returns the trees."""
    from slamjax.problem import ProblemData

    rows = process_rows(n, mesh)
    nl = rows.stop - rows.start
    sh, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())

    def one(a):
        a = np.asarray(a)
        if a.ndim and a.shape[0] == nl:
            return jax.make_array_from_process_local_data(sh, a, (n,) + a.shape[1:])
        return sharding.place(a, rep)

    out = []
    for t in trees:
        if isinstance(t, ProblemData):
            out.append(ProblemData(shared=sharding.replicate(t.shared, mesh),
                                   agents=jax.tree.map(one, t.agents)))
        else:
            out.append(jax.tree.map(one, t))
    return out[0] if len(out) == 1 else tuple(out)


def placement(mesh: Mesh | None = None) -> Sharded:
    """The driver's placement over the global mesh (every process's devices): pass it to
    :func:`slamjax.run` / :func:`slamjax.solve` (every process must make the same call)."""
    return Sharded(global_mesh() if mesh is None else mesh)


def compile_solve(algorithm, params, data, x0, y0, key, num_steps: int,
                  mesh: Mesh | None = None, checkpoint_every: int | None = None):
    """(compiled program, placed arguments) of ``slamjax.solve(..., placement=placement(mesh))``:
    ``compiled(*args)`` runs it, ``compiled.as_text()`` is its HLO (one step's collectives sit
    once in the scan body)."""
    prog, args, statics = placement(mesh).prepare_solve(
        algorithm, params, data, x0, y0, key, num_steps, checkpoint_every=checkpoint_every)
    return prog.lower(*args, **statics).compile(), args


def gather(tree):
    """Full NumPy copies of every leaf on every process (``process_allgather``): process 0
    writes them. A collective: every process must call it."""
    from jax.experimental import multihost_utils

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                a = jax.random.key_data(a)
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, tree)


def check_consistent(settings: dict) -> None:
    """``ValueError`` unless every process passes the same ``settings`` (a JSON-able dict):
    processes launched with different n, graph or seed would silently compute nonsense."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    blob = json.dumps(settings, sort_keys=True, default=str)
    h = np.asarray([zlib.crc32(blob.encode())], np.int64)
    every = np.asarray(multihost_utils.process_allgather(h)).reshape(-1)
    if np.any(every != every[0]):
        bad = [i for i, v in enumerate(every) if v != every[0]]
        raise ValueError(f"processes disagree on the settings: process(es) {bad} differ from "
                         f"process 0 (this is process {jax.process_index()}: {blob}); start "
                         f"every process with the same arguments")


# ----------------------------------------------------------------------------------------
# communication volume: measured from the compiled program, and the formula
# ----------------------------------------------------------------------------------------
_DT = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "s8": 1, "u8": 1, "s32": 4, "u32": 4,
       "s64": 8, "u64": 8, "pred": 1}
_OP = re.compile(r"=\s*(.*?)\s+(collective-permute|all-to-all|all-reduce|all-gather|"
                 r"reduce-scatter)(?:-start)?\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def _groups(line: str, key: str):
    m = re.search(key + r"=\{(\{[\d,\s]*\}(?:,\s*\{[\d,\s]*\})*)\}", line)
    if not m:
        return None
    return [[int(v) for v in g.split(",") if v.strip()]
            for g in re.findall(r"\{([\d,\s]*)\}", m.group(1))]


def collective_bytes(hlo_text: str, process_of) -> dict:
    """Bytes one execution of a compiled SPMD program moves between devices, read from its
    HLO (``jitted.lower(...).compile().as_text()``). ``process_of[k]``: the process of the
    k-th device of the mesh. Returns ``{"total", "inter_process", "ops": {kind: count}}``.

    collective-permute: operand bytes × source→target pairs with source ≠ target;
    all-to-all: each device sends 1/G of its operand to each of the G−1 others of its group;
    all-reduce / all-gather / reduce-scatter: operand bytes × (G−1) per device (the volume of
    a ring algorithm, counted once). Ops inside loops are counted once (the programs measured
    here have no collective inside a loop: the check is the formula it is compared with)."""
    total = inter = 0
    ops: dict = {}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m or "-done" in line.split("=")[0]:
            continue
        result, kind = m.groups()   # result: one shape or a tuple of shapes (all summed)
        size = sum(_DT.get(dt, 4) * int(np.prod([int(v) for v in dims.split(",") if v] or [1]))
                   for dt, dims in _SHAPE.findall(result))
        ops[kind] = ops.get(kind, 0) + 1
        if kind == "collective-permute":
            pairs = _groups(line, "source_target_pairs") or []
            for s, t in pairs:
                if s != t:
                    total += size
                    inter += size if process_of[s] != process_of[t] else 0
            continue
        groups = _groups(line, "replica_groups") or [list(range(len(process_of)))]
        for g in groups:
            G = len(g)
            # all-to-all: the result (one array or a tuple of G arrays) is G chunks, one from
            # each member; all-gather: likewise
            chunk = size // G if kind in ("all-to-all", "all-gather") else size
            for a in g:
                for b in g:
                    if a != b:
                        total += chunk
                        inter += chunk if process_of[a] != process_of[b] else 0
    return {"total": int(total), "inter_process": int(inter), "ops": ops}


def step_hlo(algorithm, state, params, data, key) -> str:
    """The compiled HLO text of one ``algorithm.step`` on these (global) arrays: the program
    whose collectives :func:`collective_bytes` counts."""
    from slamjax.algorithm import merge_static, split_static

    dyn, static = split_static(algorithm)

    def one(dyn, state, params, data, key):
        return merge_static(dyn, static).step(key, state, params, data)[0]

    return jax.jit(one).lower(dyn, state, params, data, key).compile().as_text()


def predicted_bytes(pg, numbers_per_agent: int, itemsize: int = 4) -> dict:
    """Bytes per exchange of ``numbers_per_agent`` numbers per agent over the partitioned
    graph ``pg`` (see the module docstring): ``total`` between devices, ``inter_process``
    between processes, and for partitioned edges the ``useful`` (unpadded) payload."""
    mesh = pg.mesh
    D = int(mesh.shape[AXIS])
    proc = [d.process_index for d in mesh.devices.flat]
    if D == 1:
        return {"total": 0, "inter_process": 0, "useful": 0}
    row = numbers_per_agent * itemsize * (pg.shape[1] if pg.kind == "torus" else 1)
    if pg.scheme == "halo":
        pairs = [(k, (k + 1) % D) for k in range(D)] + [(k, (k - 1) % D) for k in range(D)]
        pairs = [(s, t) for s, t in pairs if s != t]
        return {"total": len(pairs) * row,
                "inter_process": sum(row for s, t in pairs if proc[s] != proc[t]),
                "useful": len(pairs) * row}
    if pg.scheme == "edges":
        h = sharding.halo_counts(pg, D)
        M = pg.halo
        off = [(k, j) for k in range(D) for j in range(D) if k != j]
        return {"total": len(off) * M * row,
                "inter_process": sum(M * row for k, j in off if proc[k] != proc[j]),
                "useful": int(sum(h[k][j] for k, j in off)) * row}
    raise ValueError(f"predicted_bytes: no formula for scheme {pg.scheme!r} (GSPMD collectives)")
