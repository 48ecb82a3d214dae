"""The communication object: the one thing through which agents are coupled.

A :class:`Graph` is the communication object of every algorithm (SLAM, the peers in
:mod:`slamjax.baselines`, the RL critics, the metrics and the multi-device runs): nothing else
in the library touches another agent's row. Its four operations, for any pytree whose leaves
carry the agent axis first:

* ``graph.laplacian(v)``      — L·v, L = AᵀA (SLAM's eqs. (5a)–(4d));
* ``graph.mix(v, steps=1)``   — W·v with the doubly-stochastic Metropolis–Hastings matrix
  W_ij = 1/(1 + max(d_i, d_j)) on edges, W_ii = 1 − Σ_j W_ij (gossip: DSGD, DAC, MDAC, …);
* ``graph.disagreement(v)``   — ‖A v‖² = Σ_{(i,j)∈E} ‖v_i − v_j‖², edge by edge (≥ 0);
* ``graph.messages(v)``       — scalars sent when every agent sends ``v_i`` to each neighbour
  once (2|E|·size(v_i)): what one exchange costs on a real network.

Implementations of L·v (the ``mixing`` mode): ``"sparse"`` — ``deg ⊙ x −
segment_sum(x[receivers], senders)``, O(n + |E|); ``"stencil"`` — ring/torus ``jnp.roll``
neighbours, no gathers; ``"complete"`` — ``n x − Σ_j x_j``, O(n); ``"dense"`` — a materialised
n×n Laplacian (tiny n). :class:`slamjax.sharding.PartitionedGraph` is the multi-device
implementation and :class:`slamjax.faults.FaultyGraph` the faulty-network one (subclasses).

A :class:`Graph` is a JAX pytree: its edge arrays are leaves (so a graph is passed to jitted
functions as an argument, never baked in as a constant), and its kind, size, λ_max(L) and mixing
mode are static metadata. Constructors live in :mod:`slamjax.graphs`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Graph", "MIXING_MODES", "DENSE_MAX_N", "leaf_laplacian", "laplacian_matvec",
           "metropolis_weights", "mixing_matrix", "spectral_gap", "laplacian_dense"]

MIXING_MODES = ("auto", "sparse", "stencil", "complete", "dense")
"""Implementations of L·v (:func:`slamjax.graphs.with_mixing`)."""
DENSE_MAX_N = 4096
"""A dense n×n Laplacian beyond this n is refused (memory, and it is slow)."""


@jax.tree_util.register_pytree_node_class
class Graph:
    """An undirected, connected communication graph on ``n`` agents.

    Leaves (traced): ``senders``/``receivers`` (int32, both directions of every edge, length
    2|E|), ``degree`` (n,), and ``dense_L`` (n×n, only in ``"dense"`` mode, else ``None``).
    Static: ``n``, ``num_edges``, ``kind``, ``shape`` (torus rows/cols), ``lam_max`` (largest
    Laplacian eigenvalue, used by the stability check) and ``mixing``.
    """

    def __init__(self, senders, receivers, degree, dense_L, *, n, num_edges, kind, shape,
                 lam_max, mixing):
        self.senders = senders
        self.receivers = receivers
        self.degree = degree
        self.dense_L = dense_L
        self.n = int(n)
        self.num_edges = int(num_edges)
        self.kind = kind
        self.shape = shape
        self.lam_max = float(lam_max)
        self.mixing = mixing

    # -- pytree protocol -------------------------------------------------------------------
    def tree_flatten(self):
        children = (self.senders, self.receivers, self.degree, self.dense_L)
        aux = (self.n, self.num_edges, self.kind, self.shape, self.lam_max, self.mixing)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        n, num_edges, kind, shape, lam_max, mixing = aux
        return cls(*children, n=n, num_edges=num_edges, kind=kind, shape=shape,
                   lam_max=lam_max, mixing=mixing)

    def __repr__(self) -> str:
        extra = f", shape={self.shape}" if self.shape else ""
        return (f"Graph(kind={self.kind!r}, n={self.n}, edges={self.num_edges}, "
                f"lam_max={self.lam_max:.4g}, mixing={self.mixing!r}{extra})")

    @property
    def mean_degree(self) -> float:
        """2|E|/n."""
        return 2.0 * self.num_edges / self.n

    def edges(self) -> np.ndarray:
        """The |E|×2 array of undirected edges (i < j), on the host."""
        s = np.asarray(self.senders)
        r = np.asarray(self.receivers)
        keep = s < r
        return np.stack([s[keep], r[keep]], axis=1)

    def _matvec_leaf(self, x: jax.Array) -> jax.Array:
        """L·x for one leaf (agent axis first). Overridden by the agent-partitioned graphs of
        :mod:`slamjax.sharding` (halo exchange / partitioned edges across devices)."""
        return leaf_laplacian(self, x)

    # -- the communication interface ------------------------------------------------------
    def laplacian(self, tree: Any) -> Any:
        """L·v for every leaf of ``tree`` (agent axis first)."""
        return jax.tree.map(self._matvec_leaf, tree)

    @property
    def regular_degree(self) -> int | None:
        """The common degree of a ring, torus or complete graph (``None`` otherwise)."""
        if self.kind == "ring" and self.n >= 3:
            return 2
        if self.kind == "torus":
            return 4
        if self.kind == "complete":
            return self.n - 1
        return None

    def mix(self, tree: Any, steps: int = 1) -> Any:
        """W·v (``steps`` times, static) with the Metropolis–Hastings weights.

        On a regular graph of degree d, W = I − L/(d + 1), computed with :meth:`laplacian`
        (stencil, O(n) complete graph, or the partitioned product); otherwise an O(n + |E|)
        ``segment_sum`` of weighted differences: (W v)_i = v_i − Σ_{j∈N_i} W_ij (v_i − v_j).
        """
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"mix: steps must be ≥ 0, got {steps}")
        if steps == 0 or self.n == 1:
            return tree
        d = self.regular_degree
        if d is not None:
            one = lambda t: jax.tree.map(  # noqa: E731
                lambda v: v - self._matvec_leaf(v) * jnp.asarray(1.0 / (d + 1), v.dtype), t)
        else:
            w = metropolis_weights(self)
            one = lambda t: jax.tree.map(lambda v: _mix_leaf(self, w, v), t)  # noqa: E731
        if steps == 1:
            return one(tree)
        return jax.lax.fori_loop(0, steps, lambda _, t: one(t), tree)

    def disagreement(self, tree: Any) -> jax.Array:
        """‖A v‖² = Σ_{(i,j)∈E} ‖v_i − v_j‖² (= ⟨v, L v⟩), summed over the leaves of ``tree``,
        computed edge by edge so that it is never negative."""
        return sum(_leaf_disagreement(self, leaf) for leaf in jax.tree.leaves(tree))

    def messages(self, tree: Any) -> int:
        """Scalars sent when every agent sends its row of ``tree`` to each neighbour once:
        2|E| · (numbers per agent). A Python int (shapes are static)."""
        per_agent = sum(int(np.prod(np.shape(leaf)[1:], dtype=np.int64))
                        for leaf in jax.tree.leaves(tree))
        return 2 * self.num_edges * per_agent

    def to_networkx(self):
        """The graph as a ``networkx.Graph`` (needs networkx)."""
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(self.n))
        g.add_edges_from(map(tuple, self.edges().tolist()))
        return g


# ----------------------------------------------------------------------------------------
# Laplacian–vector products
# ----------------------------------------------------------------------------------------
def leaf_laplacian(graph: Graph, x: jax.Array) -> jax.Array:
    """L·x for one leaf (agent axis first) in the graph's mixing mode."""
    if jnp.ndim(x) == 0 or x.shape[0] != graph.n:
        raise ValueError(
            f"laplacian_matvec: leaf of shape {jnp.shape(x)} needs the leading (agent) axis with "
            f"size n={graph.n}")
    mode = graph.mixing
    if mode == "stencil":
        if graph.kind == "ring":
            return 2.0 * x - jnp.roll(x, 1, axis=0) - jnp.roll(x, -1, axis=0)
        rows, cols = graph.shape
        z = x.reshape((rows, cols) + x.shape[1:])
        out = (4.0 * z - jnp.roll(z, 1, 0) - jnp.roll(z, -1, 0)
               - jnp.roll(z, 1, 1) - jnp.roll(z, -1, 1))
        return out.reshape(x.shape)
    if mode == "complete":
        return graph.n * x - jnp.sum(x, axis=0, keepdims=True)
    if mode == "dense":
        flat = x.reshape(graph.n, -1)
        return (graph.dense_L.astype(x.dtype) @ flat).reshape(x.shape)
    # sparse: (L x)_i = deg_i x_i - sum_{j ~ i} x_j
    neigh = jax.ops.segment_sum(x[graph.receivers], graph.senders, num_segments=graph.n,
                                indices_are_sorted=True)
    deg = graph.degree.astype(x.dtype).reshape((graph.n,) + (1,) * (x.ndim - 1))
    return deg * x - neigh


def laplacian_matvec(graph: Graph, tree: Any) -> Any:
    """``L x`` for every leaf of ``tree`` (agent axis first). O(n + |E|) except in dense mode.
    Same as ``graph.laplacian(tree)``."""
    return graph.laplacian(tree)


def _leaf_disagreement(graph: Graph, v: jax.Array) -> jax.Array:
    if graph.mixing == "stencil":
        if graph.kind == "ring":
            return jnp.sum((v - jnp.roll(v, 1, axis=0)) ** 2)
        z = v.reshape(graph.shape + v.shape[1:])
        return jnp.sum((z - jnp.roll(z, 1, 0)) ** 2) + jnp.sum((z - jnp.roll(z, 1, 1)) ** 2)
    if graph.mixing == "complete":
        return graph.n * jnp.sum((v - jnp.mean(v, axis=0)) ** 2)
    if graph.mixing == "dense":
        return jnp.maximum(jnp.vdot(v, graph._matvec_leaf(v)), 0.0)
    # both directions of every edge are stored: halve the sum
    return 0.5 * jnp.sum((v[graph.senders] - v[graph.receivers]) ** 2)


# ----------------------------------------------------------------------------------------
# Metropolis–Hastings gossip
# ----------------------------------------------------------------------------------------
def metropolis_weights(graph: Graph) -> jax.Array:
    """Weight W_ij = 1/(1 + max(d_i, d_j)) of every directed edge (senders[e] = i,
    receivers[e] = j)."""
    deg = graph.degree
    dtype = jnp.result_type(float)  # float64 under jax_enable_x64, else float32
    return 1.0 / (1.0 + jnp.maximum(deg[graph.senders], deg[graph.receivers]).astype(dtype))


def _mix_leaf(graph: Graph, w, v):
    if graph.senders.shape[0] == 0:
        return v
    diff = v[graph.senders] - v[graph.receivers]  # (2|E|, ...)
    wd = w.astype(v.dtype).reshape((-1,) + (1,) * (v.ndim - 1)) * diff
    return v - jax.ops.segment_sum(wd, graph.senders, num_segments=graph.n,
                                   indices_are_sorted=True)


def mixing_matrix(graph: Graph) -> np.ndarray:
    """Dense Metropolis W (host NumPy; tests and diagnostics)."""
    W = np.zeros((graph.n, graph.n))
    w = np.asarray(metropolis_weights(graph), dtype=float)
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    W[s, r] = w
    W[np.arange(graph.n), np.arange(graph.n)] = 1.0 - W.sum(axis=1)
    return W


def spectral_gap(graph: Graph) -> float:
    """1 − |λ₂(W)|: the per-round contraction of disagreement by one mixing step."""
    ev = np.sort(np.abs(np.linalg.eigvalsh(mixing_matrix(graph))))[::-1]
    return float(1.0 - (ev[1] if len(ev) > 1 else 0.0))


def laplacian_dense(graph: Graph) -> np.ndarray:
    """The dense n×n Laplacian (host NumPy, for tests and tiny graphs)."""
    L = np.zeros((graph.n, graph.n))
    e = graph.edges()
    np.add.at(L, (e[:, 0], e[:, 1]), -1.0)
    np.add.at(L, (e[:, 1], e[:, 0]), -1.0)
    L[np.arange(graph.n), np.arange(graph.n)] = np.asarray(graph.degree, dtype=float)
    return L
