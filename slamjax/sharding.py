"""Multi-device SLAM: the agent axis sharded over devices.

Everything per agent (h_g, the eq.-(23) solve, the primal and dual updates) is independent
across agents, so sharding the leading (agent) axis of the state and of ``data.agents`` over a
1-D device mesh lets XLA's SPMD partitioner run it without any communication. The only
coupling between agents is the Laplacian product L·v of eqs. (5a)–(4d); a
:class:`PartitionedGraph` computes it inside ``jax.shard_map`` with explicit communication:

* ``scheme="halo"`` — ring and torus (stencil mixing): each device owns a contiguous block of
  agents (torus: a block of rows) and exchanges one boundary row (torus: one row of the grid)
  with each of its two neighbouring devices by ``lax.ppermute``. Communication per product:
  2·d numbers per device (torus: 2·cols·d), independent of n.
* ``scheme="edges"`` — any other sparse graph: every directed edge lives on the device that
  owns its sender (the sender-sorted edge list is cut into contiguous per-device chunks). Each
  device sends the rows of its agents that other devices need (their "halo") with one
  ``lax.all_to_all`` of a padded (devices × M) buffer, then runs its local ``segment_sum``.
  Communication ∝ the number of cut edges (M = the largest halo between two devices), not n.
* ``scheme="gspmd"`` — complete graph (Σ_j x_j is an all-reduce) and dense mixing: the
  partitioner's own collectives.

The partitioned graph is a :class:`slamjax.graphs.Graph` — the multi-device implementation of
the communication object (same n, λ_max, mixing, global edge arrays for the metrics) — so any
algorithm built on it (``slamjax.slam(problem, pg, config)``, a peer from
:mod:`slamjax.baselines`) runs sharded through ``slamjax.solve`` and ``slamjax.run`` with
``placement=slamjax.placement.Sharded(mesh)``; :func:`shard_problem_inputs` places the state
and data. Results equal the
single-device run up to float round-off (the test suite checks ≤ 1e-6 relative in float32).

The same code runs on a mesh that spans several processes (:mod:`slamjax.distributed`):
:func:`place` then builds each global array from the slices a process's own devices hold.

Limits: n must be divisible by the number of devices (torus: the number of rows);
``SLAMConfig.agent_block`` (a ``lax.map`` over agent blocks) is not shard-aware — leave it
``None`` on a mesh. Tested with forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``); nothing here is CPU-specific.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from slamjax.comm import Graph, leaf_laplacian
from slamjax.problem import ProblemData

__all__ = ["AXIS", "PartitionedGraph", "agent_mesh", "partition_graph", "halo_counts", "place",
           "shard_agents", "replicate", "shard_tree", "shard_problem_inputs"]

AXIS = "agents"
"""Name of the mesh axis that carries the agents."""


def agent_mesh(num_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh (axis ``"agents"``) over the first ``num_devices`` devices (default: all)."""
    devs = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devs):
            raise ValueError(f"num_devices={num_devices} but {len(devs)} device(s) available "
                             "(on CPU, force more with "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=N)")
        devs = devs[:num_devices]
    return Mesh(np.asarray(devs), (AXIS,))


def _ndev(mesh: Mesh) -> int:
    return int(mesh.shape[AXIS])


def place(a, sharding: NamedSharding):
    """``a`` placed with ``sharding``. On a mesh that spans several processes
    (``jax.distributed``) ``a`` is a host value that every process holds in full (the same
    everywhere); each process copies only the slices its own devices own
    (``jax.make_array_from_callback``). An array that already has ``sharding`` is returned
    as is."""
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    if sharding.is_fully_addressable:
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return jax.device_put(a, sharding)    # global -> global: a resharding program
    host = np.asarray(a) if not jnp.issubdtype(jnp.result_type(a), jax.dtypes.prng_key) \
        else None
    if host is None:  # a typed PRNG key: place its raw data, wrap it again
        data = place(jax.random.key_data(a), NamedSharding(sharding.mesh, P()))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_agents(tree, mesh: Mesh):
    """Place every leaf of ``tree`` (agent axis first) sharded along that axis."""
    sh = NamedSharding(mesh, P(AXIS))
    return jax.tree.map(lambda a: place(a, sh), tree)


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` replicated on all devices of ``mesh``."""
    sh = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: place(a, sh), tree)


# ----------------------------------------------------------------------------------------
# the partitioned graph
# ----------------------------------------------------------------------------------------
@jax.tree_util.register_pytree_node_class
class PartitionedGraph(Graph):
    """A :class:`Graph` whose Laplacian product runs sharded over ``mesh`` (see module doc).

    Extra leaves (``scheme="edges"`` only; ``None`` otherwise), leading axis = devices:
    ``send_idx`` (D, D·M): row j·M + t of device k's block is the local index of the t-th of
    its agents that device j needs; ``loc_senders``/``loc_receivers`` (D, E_max): the local
    edge list of each device, receivers indexing [own rows; received halo rows; a zero row];
    ``loc_weights`` (D, E_max): the Metropolis weight of each local edge (0 on padding), so that
    gossip (:meth:`mix`) on an irregular graph also runs on the partitioned edges.
    """

    def __init__(self, senders, receivers, degree, dense_L, send_idx=None, loc_senders=None,
                 loc_receivers=None, loc_weights=None, *, n, num_edges, kind, shape, lam_max,
                 mixing, mesh=None, scheme="gspmd", halo=0):
        super().__init__(senders, receivers, degree, dense_L, n=n, num_edges=num_edges,
                         kind=kind, shape=shape, lam_max=lam_max, mixing=mixing)
        self.send_idx = send_idx
        self.loc_senders = loc_senders
        self.loc_receivers = loc_receivers
        self.loc_weights = loc_weights
        self.mesh = mesh
        self.scheme = scheme
        self.halo = int(halo)

    def tree_flatten(self):
        children, aux = super().tree_flatten()
        return (children + (self.send_idx, self.loc_senders, self.loc_receivers,
                            self.loc_weights),
                aux + (self.mesh, self.scheme, self.halo))

    @classmethod
    def tree_unflatten(cls, aux, children):
        n, num_edges, kind, shape, lam_max, mixing, mesh, scheme, halo = aux
        return cls(*children, n=n, num_edges=num_edges, kind=kind, shape=shape,
                   lam_max=lam_max, mixing=mixing, mesh=mesh, scheme=scheme, halo=halo)

    def __repr__(self) -> str:
        return (f"PartitionedGraph(kind={self.kind!r}, n={self.n}, edges={self.num_edges}, "
                f"devices={_ndev(self.mesh)}, scheme={self.scheme!r}, mixing={self.mixing!r}"
                + (f", halo={self.halo}" if self.scheme == "edges" else "") + ")")

    def _matvec_leaf(self, x: jax.Array) -> jax.Array:
        if x.shape[0] != self.n:
            raise ValueError(f"laplacian_matvec: leaf has leading (agent) axis {x.shape[0]}, "
                             f"graph has n={self.n}")
        if self.scheme == "halo":
            fn = _ring_local if self.kind == "ring" else partial(_torus_local, cols=self.shape[1])
            return jax.shard_map(fn, mesh=self.mesh, in_specs=P(AXIS), out_specs=P(AXIS))(x)
        if self.scheme == "edges":
            D = _ndev(self.mesh)
            fn = partial(_edges_local, num_devices=D)
            deg = self.degree.astype(x.dtype)
            return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(AXIS),) * 5,
                                 out_specs=P(AXIS))(x, deg, self.send_idx, self.loc_senders,
                                                    self.loc_receivers)
        return leaf_laplacian(self, x)

    def mix(self, tree: Any, steps: int = 1) -> Any:
        """W·v as :meth:`Graph.mix`; on an irregular graph with partitioned edges the
        Metropolis differences are summed on the device that owns each edge (halo rows by the
        same all-to-all as the Laplacian product) instead of by the partitioner's gathers."""
        if self.scheme != "edges" or self.regular_degree is not None or self.n == 1 \
                or int(steps) <= 0 or self.loc_weights is None:
            return super().mix(tree, steps)
        fn = partial(_edges_local, num_devices=_ndev(self.mesh), weights=True)
        sm = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(AXIS),) * 5, out_specs=P(AXIS))

        def one(t):
            return jax.tree.map(lambda v: sm(v, self.loc_weights, self.send_idx,
                                             self.loc_senders, self.loc_receivers), t)
        if int(steps) == 1:
            return one(tree)
        return jax.lax.fori_loop(0, int(steps), lambda _, t: one(t), tree)


def _shift_rows(x, D):
    """(row before this block, row after it) from the neighbouring devices (periodic)."""
    prev = lax.ppermute(x[-1:], AXIS, perm=[(j, (j + 1) % D) for j in range(D)])
    nxt = lax.ppermute(x[:1], AXIS, perm=[(j, (j - 1) % D) for j in range(D)])
    return prev, nxt


def _ring_local(x):
    D = lax.axis_size(AXIS)
    prev, nxt = _shift_rows(x, D)
    x_m1 = jnp.concatenate([prev, x[:-1]], axis=0)   # = roll(x, 1) on the global ring
    x_p1 = jnp.concatenate([x[1:], nxt], axis=0)     # = roll(x, -1)
    return 2.0 * x - x_m1 - x_p1


def _torus_local(x, cols):
    D = lax.axis_size(AXIS)
    z = x.reshape((x.shape[0] // cols, cols) + x.shape[1:])
    prev, nxt = _shift_rows(z, D)
    out = (4.0 * z - jnp.concatenate([prev, z[:-1]], axis=0)
           - jnp.concatenate([z[1:], nxt], axis=0)
           - jnp.roll(z, 1, 1) - jnp.roll(z, -1, 1))
    return out.reshape(x.shape)


def _edges_local(x, deg, send_idx, loc_s, loc_r, *, num_devices, weights=False):
    """Local L·x (``deg`` the degrees of this block) or, with ``weights=True``, local W·x
    (``deg`` then holds this device's edge weights, as the sparse gossip of :meth:`slamjax.Graph.mix`)."""
    nl = x.shape[0]
    buf = x[send_idx[0]]                                  # (D·M, ...) rows others need
    recv = lax.all_to_all(buf, AXIS, 0, 0, tiled=True)    # block s = rows from device s
    ext = jnp.concatenate([x, recv, jnp.zeros((1,) + x.shape[1:], x.dtype)], axis=0)
    if weights:
        w = deg[0].astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        diff = x[loc_s[0]] - ext[loc_r[0]]                # padding edges have weight 0
        return x - jax.ops.segment_sum(w * diff, loc_s[0], num_segments=nl,
                                       indices_are_sorted=True)
    neigh = jax.ops.segment_sum(ext[loc_r[0]], loc_s[0], num_segments=nl,
                                indices_are_sorted=True)
    return deg.reshape((nl,) + (1,) * (x.ndim - 1)) * x - neigh


def partition_graph(graph: Graph, mesh: Mesh) -> PartitionedGraph:
    """The same graph with its Laplacian product partitioned over ``mesh`` (see module doc).

    Ring/torus with stencil mixing → halo exchange; other sparse graphs → edges partitioned
    with their sender agents plus one all-to-all of halo rows; complete/dense → GSPMD.
    """
    if isinstance(graph, PartitionedGraph):
        raise ValueError("graph is already partitioned")
    D = _ndev(mesh)
    n = graph.n
    base = dict(n=n, num_edges=graph.num_edges, kind=graph.kind, shape=graph.shape,
                lam_max=graph.lam_max, mixing=graph.mixing, mesh=mesh)
    rep = NamedSharding(mesh, P())
    sh = NamedSharding(mesh, P(AXIS))
    put = place
    common = (put(graph.senders, rep), put(graph.receivers, rep))
    if n % D:
        raise ValueError(f"partition_graph: n={n} agents are not divisible by the {D} devices")
    if graph.mixing == "stencil":
        if graph.kind == "torus" and graph.shape[0] % D:
            raise ValueError(f"partition_graph: a torus is split by rows; rows={graph.shape[0]}"
                             f" not divisible by {D} devices")
        if (n // D) < 1 or (graph.kind == "torus" and graph.shape[0] // D < 1):
            raise ValueError("partition_graph: fewer agents (rows) than devices")
        return PartitionedGraph(*common, put(graph.degree, sh), None, scheme="halo", **base)
    if graph.mixing in ("complete", "dense"):
        dl = None if graph.dense_L is None else put(graph.dense_L, rep)
        return PartitionedGraph(*common, put(graph.degree, sh), dl, scheme="gspmd", **base)

    # "edges": directed edges sorted by sender, owned by the sender's device
    s = np.asarray(graph.senders).astype(np.int64)
    r = np.asarray(graph.receivers).astype(np.int64)
    nl = n // D
    owner_r = r // nl
    bounds = np.searchsorted(s, np.arange(D + 1) * nl)
    halo = _halo_lists(s, r, n, D)
    M = max([1] + [len(h) for row in halo for h in row])
    E_max = max(1, int(np.max(np.diff(bounds))))
    send_idx = np.zeros((D, D * M), np.int32)        # device j sends to k: send_idx[j, k*M + t]
    loc_s = np.full((D, E_max), nl - 1, np.int32)    # padding: last row += zero row
    loc_r = np.full((D, E_max), nl + D * M, np.int32)
    wdt = np.float64 if jax.config.jax_enable_x64 else np.float32   # as metropolis_weights
    loc_w = np.zeros((D, E_max), wdt)
    deg = np.asarray(graph.degree).astype(wdt)
    w_all = wdt(1.0) / (wdt(1.0) + np.maximum(deg[s], deg[r]))
    for k in range(D):
        for j in range(D):
            need = halo[k][j]
            send_idx[j, k * M:k * M + len(need)] = need - j * nl
        sk, rk = s[bounds[k]:bounds[k + 1]], r[bounds[k]:bounds[k + 1]]
        local = np.empty(len(rk), np.int64)
        own = owner_r[bounds[k]:bounds[k + 1]] == k
        local[own] = rk[own] - k * nl
        for j in range(D):
            sel = owner_r[bounds[k]:bounds[k + 1]] == j
            if j == k or not sel.any():
                continue
            local[sel] = nl + j * M + np.searchsorted(halo[k][j], rk[sel])
        loc_s[k, :len(sk)] = sk - k * nl
        loc_r[k, :len(sk)] = local
        loc_w[k, :len(sk)] = w_all[bounds[k]:bounds[k + 1]]
    return PartitionedGraph(*common, put(graph.degree, sh), None,
                            put(send_idx, sh), put(loc_s, sh), put(loc_r, sh),
                            put(loc_w, sh), scheme="edges", halo=M, **base)


def _halo_lists(s, r, n, D):
    """halo[k][j]: the sorted agents owned by device j that device k needs (an edge from one
    of k's agents to them); s, r: sender-sorted directed edges."""
    nl = n // D
    bounds = np.searchsorted(s, np.arange(D + 1) * nl)
    halo = [[np.zeros(0, np.int64)] * D for _ in range(D)]
    for k in range(D):
        rk = r[bounds[k]:bounds[k + 1]]
        ok = rk // nl
        for j in range(D):
            if j != k:
                halo[k][j] = np.unique(rk[ok == j])
    return halo


def halo_counts(graph: Graph, num_devices: int) -> np.ndarray:
    """(D, D) matrix: entry [k, j] = how many of device j's agents device k needs per
    exchange with the partitioned-edges scheme (agents split in D contiguous blocks)."""
    s = np.asarray(graph.senders).astype(np.int64)
    r = np.asarray(graph.receivers).astype(np.int64)
    D = int(num_devices)
    if graph.n % D:
        raise ValueError(f"halo_counts: n={graph.n} not divisible by {D} devices")
    return np.asarray([[len(h) for h in row] for row in _halo_lists(s, r, graph.n, D)])


def shard_tree(tree, mesh: Mesh, n: int):
    """Place ``tree`` on ``mesh``: leaves with leading axis ``n`` (agent axis) sharded,
    everything else (step counters, shared data, scalars) replicated."""
    sh, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    return jax.tree.map(lambda a: place(a, sh if (jnp.ndim(a) and jnp.shape(a)[0] == n)
                                        else rep), tree)


def shard_problem_inputs(mesh: Mesh, state=None, data: ProblemData | None = None,
                         x0=None, y0=None, n: int | None = None):
    """Place run inputs on ``mesh``: the agent-first leaves of a state (any algorithm's), of
    ``data.agents``, x0 and y0 sharded; shared data and counters replicated. Returns the
    arguments given, in order (``None`` ones skipped)."""
    if n is None:
        src = x0 if x0 is not None else (state.x if state is not None else None)
        n = jnp.shape(jax.tree.leaves(src)[0])[0] if src is not None else None
    out = []
    if state is not None:
        out.append(shard_tree(state, mesh, n))
    if data is not None:
        out.append(ProblemData(shared=replicate(data.shared, mesh),
                               agents=shard_agents(data.agents, mesh)))
    for v in (x0, y0):
        if v is not None:
            out.append(shard_agents(v, mesh))
    return out[0] if len(out) == 1 else tuple(out)
