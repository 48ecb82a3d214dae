"""The sharded simulation on JAX's multi-controller runtime (``jax.distributed``).

One Python process per host (or per accelerator) runs the *same* program; JAX's coordination
service connects them and XLA's collectives (on CPU: gloo over TCP) carry the agent coupling.
The agent axis is split over a global 1-D mesh of every process's devices (ordered by process,
so each process owns one contiguous block of agents); the communication object is the
:class:`slamjax.sharding.PartitionedGraph` of the single-process multi-device runs — ring/torus
halo exchange by ``lax.ppermute``, partitioned edges by one ``lax.all_to_all`` — so any
:class:`~slamjax.Algorithm` (SLAM, a peer from :mod:`slamjax.baselines`) runs unchanged, and
``slamjax.solve`` / ``jax.grad`` through it work on the global arrays.

Python API::

    from slamjax import distributed as dist
    info = dist.initialize()                      # before any other JAX call; env or arguments
    mesh = dist.global_mesh()                      # all processes' devices, axis "agents"
    pg = sharding.partition_graph(graph, mesh)     # every process builds the same graph
    x0, y0, data = dist.from_local(mesh, n, x0_rows, y0_rows, data_rows)   # only my agents
    state = dist.solve(slamjax.slam(problem, pg, cfg), params, data, x0, y0, key, T, mesh=mesh)
    x = dist.gather(state.x)                       # full NumPy array on every process
    if dist.is_main(): write(...)                  # process 0 writes, prints progress

* :func:`initialize` — ``jax.distributed.initialize`` from arguments or the environment
  (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; with none of them set,
  JAX's own cluster detection: SLURM, Open MPI, Kubernetes, Cloud TPU), CPU collectives set to
  gloo, and clear errors (below).
* :func:`global_mesh`, :func:`process_rows` (this process's agent rows), :func:`local_rows`
  (slice a full host tree to them), :func:`from_local` (global arrays from each process's rows
  only: ``jax.make_array_from_process_local_data``), :func:`solve`, :func:`gather`
  (``multihost_utils.process_allgather``), :func:`check_consistent` (every process got the
  same configuration), :func:`collective_bytes` (bytes moved per call, read from the compiled
  HLO) and :func:`predicted_bytes` (the formula below).
* ``slamjax run --distributed`` (see :mod:`slamjax.cli`) is the same thing as a command.

Launching on a cluster
----------------------
Start one process per host (CPU, or one process driving all GPUs of a host) or one per
accelerator (then restrict each process to its device, ``JAX_LOCAL_DEVICE_IDS``/
``CUDA_VISIBLE_DEVICES``). Every process gets the same command and arguments, plus::

    JAX_COORDINATOR_ADDRESS=host0:12355   # process 0's host; the port must be open to all
    JAX_NUM_PROCESSES=64                  # how many processes in total
    JAX_PROCESS_ID=k                      # 0 .. 64-1, distinct (0 runs the coordinator)
    slamjax run --distributed --graph torus --n 99680256 ...   # 9984², rows % 64 == 0

(or ``--coordinator``, ``--num-processes``, ``--process-id``). Under SLURM
(``srun --ntasks-per-node=1 slamjax run --distributed ...``) or ``mpirun`` the three may be left
out: JAX reads them from the scheduler. On CPU nodes, ``XLA_FLAGS=
--xla_force_host_platform_device_count=c`` gives a process c devices (c agent blocks); one
device already runs its block on XLA's intra-op threads. Which is faster depends on the host:
on this 2-core machine at n = 2²⁰, 4 devices in one process ran the ring 1.2× and the small
world 0.8× as fast as one device (``experiments/bench_distributed.py``).

Errors (never a silent hang): a coordinator that cannot be reached within ``timeout`` seconds
is a :class:`CoordinatorUnreachable` exception (the port is probed before JAX connects);
processes that do not all join within ``timeout`` (too few started, or a wrong process count)
end every waiting process with exit code :data:`EXIT_JOIN_TIMEOUT` and a message naming the
expected count (JAX itself would abort the process from C++ with a bare DEADLINE_EXCEEDED, so
a watchdog exits first); a process id outside ``0..N-1``, or a count that disagrees with the
coordinator's (``jax.process_count()``), is a ``ValueError``; processes given different
problem settings are a ``ValueError`` from :func:`check_consistent`. ``n`` not divisible by
the global device count (torus: rows) is **refused** (``ValueError``), not padded: padded
phantom agents would change the graph (a ring with extra nodes is another ring), its λ_max, the
consensus metrics and the random streams, so the result would no longer be the requested
simulation; choose n a multiple of the device count (or fewer devices).

What moves between processes per step
-------------------------------------
Only the agent coupling: every per-agent computation (gradients, the eq.-(23) solve, the
primal and dual updates) is local. SLAM exchanges x⁺ and y⁺ once per step (the product L·v⁺ of
a dual update is reused by the next primal update), i.e. d = d_x + m·d_y numbers per agent
(SLAM-U: d_x, SLAM-L: m·d_y); a gossip peer mixes each gossiped leaf once (D-SOBA: x, y, z).
With D devices in P processes (each process a contiguous block of agents), b bytes per number
(4 in float32) and d the numbers per agent of all leaves exchanged in a step:

* ring, halo exchange: each device sends its two boundary rows to its two neighbours:
  ``2·D·d·b`` bytes per step in total, of which ``2·P·d·b`` cross process boundaries
  (P ≥ 2) — independent of n;
* torus (rows × cols, split by rows): a boundary row is ``cols`` agents: ``2·D·cols·d·b``,
  of which ``2·P·cols·d·b`` between processes;
* partitioned edges (any sparse graph): device k needs the rows h_kj of device j's agents that
  have an edge into k's block; h_kj ≤ the number of edges cut between the two blocks, so the
  useful payload is ``Σ_{k≠j} h_kj·d·b ≤ 2·c·d·b`` for c cut (undirected) edges, and the
  all-to-all pads every pair to the largest halo M: ``D·(D−1)·M·d·b`` bytes moved per step
  (between processes: the pairs (k, j) in different processes).
* Logging metrics (every ``log_every`` steps, not per step) runs the edge-wise disagreement on
  the global edge list with the partitioner's own collectives (it may gather the state);
  the final :func:`gather` moves the state once. Neither is part of a step.

Paper estimate, n = 10⁸ agents on a 2-D torus over 64 hosts, one process per host. The torus
is split by rows, so its row count must be a multiple of 64: take 9984 × 9984 (= 0.997·10⁸,
the square torus ``--graph torus --n 99680256`` builds; 156 rows per host). d_x = 10, m = 2,
d_y = 10 (d = 30 numbers per agent per step), float32.

* per host and step: 2 boundary rows × 9984 agents × 30 × 4 B = 2.40 MB sent (and as much
  received), whatever n is; all hosts together 153 MB per step. On 10 Gb/s links
  (1.25 GB/s each way) ≈ 1.9 ms per step, on 25 Gb/s ≈ 0.8 ms; plus the collectives'
  latency (4 ppermutes per step; gloo over loopback measured ≈ 4 ms each on this loaded
  2-core machine, against 0.13 ms for the same ppermute between devices of one process;
  not measured on a real network);
* compute it sits next to: 1.56·10⁶ agents per host at the 3.9–4.7·10⁵ agent-steps/s measured
  for this problem on this 2-core CPU (``experiments/bench_distributed.py``, n = 2²⁰, load ≈ 10)
  is ≈ 3.3–4.0 s per step on a 2-core host, ≈ 0.2–0.3 s on a 32-core one if the per-agent work
  scales with cores (an extrapolation): communication is ≲ 1–10 % of a step, i.e. the run is
  compute-bound;
* memory: the SLAM state (x, y, their duals and Laplacian caches: 3·(10 + 20) = 90 floats)
  plus the agents' data (b, p, t: 50 floats) is 560 B per agent: 56 GB in total, 0.9 GB per
  host (plus the step's temporaries: the CG vectors of the eq.-(23) solve);
* splitting the torus into an 8 × 8 grid of blocks instead of row bands would cut the halo to
  4 sides × 1248 agents (4992 instead of 19968 agents per host) — not implemented (rows only).
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
from slamjax.sharding import AXIS

__all__ = ["ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "EXIT_JOIN_TIMEOUT",
           "CoordinatorUnreachable", "Launch", "resolve", "initialize", "is_main",
           "global_mesh", "process_rows", "check_divisible", "local_rows", "from_local",
           "solve", "compile_solve", "run", "gather", "check_consistent", "collective_bytes",
           "step_hlo", "predicted_bytes", "print0", "cli_run"]

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
#: exit code of a process whose peers did not all join within the timeout
EXIT_JOIN_TIMEOUT = 75


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


def check_divisible(n: int, mesh: Mesh, graph=None) -> None:
    """Refuse (``ValueError``) an ``n`` that the mesh cannot split evenly (torus: its rows);
    see the module docstring for why this is refused rather than padded."""
    D = int(mesh.shape[AXIS])
    rows = graph.shape[0] if graph is not None and graph.kind == "torus" and graph.shape \
        else None
    if n % D or (rows is not None and rows % D):
        what = f"a torus with {rows} rows" if rows is not None and rows % D else f"n={n} agents"
        lo, hi = (n // D) * D, -(-n // D) * D
        raise ValueError(
            f"{what} cannot be split evenly over the {D} devices of {_nproc(mesh)} "
            f"process(es): refused (not padded — phantom agents would change the graph, its "
            f"λ_max and the metrics). Use a multiple of {D}"
            + (f", e.g. n={hi}" + (f" or n={lo}" if lo else "") if rows is None else
               f" rows") + ", or another device count.")


def _nproc(mesh: Mesh) -> int:
    return len({d.process_index for d in mesh.devices.flat})


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


def solve(algorithm, params, data, x0, y0, key, num_steps: int, mesh: Mesh | None = None,
          checkpoint_every: int | None = None):
    """:func:`slamjax.sharding.solve` on the global mesh: inputs are global arrays
    (:func:`from_local`) or host values every process holds in full; returns the final
    state as global arrays (use :func:`gather` for NumPy). Every process must call it."""
    compiled, args = compile_solve(algorithm, params, data, x0, y0, key, num_steps, mesh=mesh,
                                   checkpoint_every=checkpoint_every)
    return compiled(*args)


def compile_solve(algorithm, params, data, x0, y0, key, num_steps: int,
                  mesh: Mesh | None = None, checkpoint_every: int | None = None):
    """(compiled program, placed arguments) of :func:`solve`: ``compiled(*args)`` runs it,
    ``compiled.as_text()`` is its HLO (one step's collectives sit once in the scan body)."""
    mesh = global_mesh() if mesh is None else mesh
    check_divisible(jax.tree.leaves(x0)[0].shape[0], mesh)
    args, statics = sharding.prepare_solve(algorithm, params, data, x0, y0, key, num_steps,
                                           mesh=mesh, checkpoint_every=checkpoint_every)
    return sharding._jit_iterate.lower(*args, **statics).compile(), args


def run(algorithm, params, data, x0, y0, *, num_steps: int, log_every: int, seed: int = 0,
        mesh: Mesh | None = None, progress: bool = True, desc: str = "run"):
    """:func:`slamjax.run` for one run on the global mesh: the same compiled chunk program
    (metrics every ``log_every`` steps, step t with ``fold_in(key(seed), t)``, a diverged run
    kept at its last finite state), so the numbers equal a single-process ``slamjax.run``.
    Progress is shown by process 0 only. Returns a :class:`slamjax.RunResult` whose ``state``
    is global (:func:`gather` it); the history is the same on every process."""
    import warnings

    import jax.numpy as jnp

    from slamjax.algorithm import split_static
    from slamjax.run import RunResult, _chunk, _eval, _history, drive

    mesh = global_mesh() if mesh is None else mesh
    num_steps, log_every = int(num_steps), int(log_every)
    if num_steps < 1 or log_every < 1 or num_steps % log_every:
        raise ValueError(f"log_every={log_every} must be ≥ 1 and divide num_steps={num_steps}")
    n = jax.tree.leaves(x0)[0].shape[0]
    check_divisible(n, mesh)
    params = type(params)(*(jnp.asarray(np.asarray(p)) for p in params))
    data, x0, y0 = sharding.shard_problem_inputs(mesh, data=data, x0=x0, y0=y0, n=n)
    state = algorithm.init(x0, y0, data)
    if algorithm.check is not None:
        algorithm.check(params, state, data)
    state = sharding.shard_tree(state, mesh, n)
    params = sharding.replicate(params, mesh)
    key = sharding.place(jax.random.key(int(seed)), NamedSharding(mesh, P()))
    rep = NamedSharding(mesh, P())
    carry = tuple(sharding.place(v, rep) for v in (np.int32(0), np.bool_(True), np.int32(-1)))
    carry = (state,) + carry
    dyn, static = split_static(algorithm)
    kw = dict(static=static, log_every=log_every, batch=(False, False))
    t0 = time.perf_counter()
    prog = _chunk.lower(dyn, params, data, carry, key, nlogs=1, **kw).compile()
    first = jax.device_get(_eval(dyn, data, state, static=static, batch=(False, False)))
    compile_time = time.perf_counter() - t0
    logs = [{k: np.asarray(v, dtype=float)[..., None] for k, v in first.items()}]

    def on_chunk(c, mets, done):
        logs.append({k: np.asarray(v) for k, v in mets.items()})
        return True if not bool(np.asarray(c[2])) else None

    carry, _, run_time = drive(lambda _, c: prog(dyn, params, data, c, key), carry,
                               [1] * (num_steps // log_every), desc=desc,
                               progress=progress and is_main(), per_unit=log_every,
                               on_chunk=on_chunk)
    state, _, alive, div = carry
    history = _history(logs, counters_from=first)
    steps = np.arange(len(logs)) * log_every
    diverged = None if bool(np.asarray(alive)) else int(np.asarray(div))
    if diverged is not None:
        keep = diverged // log_every
        history = {k: v[..., :keep] for k, v in history.items()}
        steps = steps[:keep]
        if is_main():
            warnings.warn(f"{desc}: non-finite values by step {diverged}; stopped at the last "
                          f"finite state", RuntimeWarning, stacklevel=2)
    return RunResult(state=state, history=history, steps=steps, compile_time=compile_time,
                     run_time=run_time, num_steps=diverged if diverged is not None
                     else int(steps[-1]), diverged_at=diverged)


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


# ----------------------------------------------------------------------------------------
# the command: slamjax run --distributed
# ----------------------------------------------------------------------------------------
def cli_run(args) -> int:
    """``slamjax run --distributed``: the quadratic problem of ``slamjax run`` with the agents
    split over every process's devices. Every process builds the same problem from the seed
    and feeds its own agents' rows; process 0 prints the progress and the table and writes
    ``<out>/<name>.json`` (+ .png) once."""
    launch = initialize(args.coordinator, args.num_processes, args.process_id,
                        timeout=args.dist_timeout)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import slamjax as sj
    from slamjax.problems.quadratic import make_quadratic
    from slamjax.run import write_text

    mesh = global_mesh()
    variants = list(sj.VARIANTS) if args.variant == "all" else [args.variant]
    solver = sj.make_solver(args.solver, **({"maxiter": args.cg_iters} if args.solver == "cg"
                                            else {"K": args.neumann_k, "eta": args.neumann_eta}
                                            if args.solver == "neumann" else {}))
    configs = [sj.SLAMConfig(variant=v, solver=solver) for v in variants]
    extra = {"p": args.er_p} if (args.er_p is not None and args.graph.startswith("er")) else {}
    graph = sj.make_graph(args.graph, args.n, seed=args.seed, mixing=args.mixing, **extra)
    check_divisible(args.n, mesh, graph)
    skip = ("process_id", "coordinator", "no_progress")
    check_consistent({k: v for k, v in vars(args).items() if k not in skip}
                     | {"num_processes": jax.process_count()})
    dtype = jnp.float64 if args.x64 else jnp.float32
    problem, data, x0, y0 = make_quadratic(
        args.n, args.dx, args.dy, args.m, seed=args.seed, noise=args.noise, dtype=dtype,
        homogeneous=not args.heterogeneous_hessian)
    x0, y0, data = from_local(mesh, args.n, *local_rows((x0, y0, data), args.n, mesh))
    pg = sharding.partition_graph(graph, mesh)
    params = sj.SLAMParams.create(args.alpha, args.beta, args.rho, args.gamma)
    procs = jax.process_count()
    print0(f"slamjax run --distributed: {procs} process(es), {mesh.size} devices "
           f"({jax.local_device_count()} here), coordinator {launch.coordinator}; {pg!r}; "
           f"quadratic d_x={args.dx}, d_y={args.dy}, m={args.m}, noise σ={args.noise}; "
           f"T={args.steps}; {args.n // mesh.size} agents per device")
    results, xbar = {}, {}
    for cfg in configs:
        res = run(sj.slam(problem, pg, cfg), params, data, x0, y0, num_steps=args.steps,
                  log_every=args.log_every, seed=args.seed, mesh=mesh,
                  progress=not args.no_progress, desc=cfg.variant)
        results[cfg.variant] = res
        xbar[cfg.variant] = gather(res.state.x).mean(axis=0).tolist()  # all processes join
    per_agent = {"slam": args.dx + args.m * args.dy, "slam_l": args.m * args.dy,
                 "slam_u": args.dx}
    comm = {v: predicted_bytes(pg, per_agent[v], 8 if args.x64 else 4)
            for v in results} if pg.scheme in ("halo", "edges") else {}
    if not is_main():
        return 1 if any(r.diverged_at is not None for r in results.values()) else 0
    names = ("grad_F_sq", "consensus_x", "consensus_y", "ll_error")
    head = f"{'variant':8s} {'step':>6s} " + " ".join(f"{m:>12s}" for m in names) + \
        f" {'agent-steps/s':>14s} {'compile s':>9s}"
    print(f"\nfinal metrics (T={args.steps})\n{head}\n" + "-" * len(head))
    for v, res in results.items():
        fin = res.final()
        print(f"{v:8s} {int(res.steps[-1]):6d} " + " ".join(f"{fin[m]:12.3e}" for m in names)
              + f" {res.steps_per_sec * args.n:14.3e} {res.compile_time:9.2f}"
              + (f"  DIVERGED by step {res.diverged_at}" if res.diverged_at is not None
                 else ""))
    from pathlib import Path

    out = Path(args.out)
    meta = {"command": "slamjax " + " ".join(sys.argv[1:]),
            "config": {k: v for k, v in vars(args).items() if k != "process_id"},
            "distributed": {"processes": procs, "devices": mesh.size,
                            "scheme": pg.scheme, "bytes_per_step": comm},
            "graph": {"kind": graph.kind, "n": graph.n, "edges": graph.num_edges,
                      "lam_max": graph.lam_max},
            "backend": jax.default_backend(), "jax_version": jax.__version__}
    payload = {**meta, "variants": {v: {**r.to_dict(), "x_mean": xbar[v]}
                                    for v, r in results.items()}}
    path = write_text(out / f"{args.name}.json", json.dumps(payload, indent=1, default=str))
    print(f"\nwrote {path}", end="")
    if not args.no_plot:
        from slamjax.plotting import plot_theorem1

        png = plot_theorem1({v: (r.steps, r.history) for v, r in results.items()},
                            out / f"{args.name}.png",
                            title=f"{graph.kind} graph, n={graph.n}, T={args.steps}, "
                                  f"{procs} processes")
        print(f" and {png}", end="")
    print(flush=True)
    return 1 if any(r.diverged_at is not None for r in results.values()) else 0
