"""Communication graphs: the one object through which agents are coupled.

A :class:`Graph` is the *communication object* of every algorithm (SLAM, the peers in
:mod:`slamjax.baselines`, the RL critics, the metrics and the multi-device runs): nothing else
in the library touches another agent's row. Its four operations, for any pytree whose leaves
carry the agent axis first:

* ``graph.laplacian(v)``      — L·v, L = AᵀA (SLAM's eqs. (5a)–(4d));
* ``graph.mix(v, steps=1)``   — W·v with the doubly-stochastic Metropolis–Hastings matrix
  W_ij = 1/(1 + max(d_i, d_j)) on edges, W_ii = 1 − Σ_j W_ij (gossip: DSGD, DAC, MDAC, …);
* ``graph.disagreement(v)``   — ‖A v‖² = Σ_{(i,j)∈E} ‖v_i − v_j‖², edge by edge (≥ 0);
* ``graph.messages(v)``       — scalars sent when every agent sends ``v_i`` to each neighbour
  once (2|E|·size(v_i)): what one exchange costs on a real network.

Implementations (the ``mixing`` mode, chosen by :func:`with_mixing`) are the sparse
``segment_sum`` path, the ring/torus stencil, the O(n) complete graph and a dense n×n matrix;
:class:`slamjax.sharding.PartitionedGraph` is the multi-device implementation (halo exchange or
partitioned edges). A fault model (dropped links, time-varying edges) is a further subclass.

A :class:`Graph` is a JAX pytree: its edge arrays are leaves (so a graph is passed to jitted
functions as an argument, never baked in as a constant), and its kind, size, λ_max(L) and mixing
mode are static metadata.

``laplacian_matvec(graph, x)`` computes ``L x`` with ``L = AᵀA`` (A the |E|×n incidence matrix)
for every leaf of a pytree whose leaves carry the agent axis first:

* ``"sparse"``  — ``deg ⊙ x − segment_sum(x[receivers], senders)``: O(n + |E|) work and memory;
* ``"stencil"`` — ring / torus only: ``jnp.roll`` neighbours, no gathers at all;
* ``"complete"``— complete graph: ``n x − Σ_j x_j``, O(n);
* ``"dense"``   — ``L @ x`` with a materialised n×n Laplacian (tiny n and benchmarks only).

Constructors: :func:`erdos_renyi`, :func:`ring`, :func:`torus`, :func:`star`, :func:`complete`,
:func:`path`, :func:`small_world`, :func:`from_networkx`, :func:`from_edges` and
:func:`make_graph` (by name). Every constructor checks connectivity: a disconnected graph is a
``ValueError`` that says how many components it has.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

__all__ = [
    "Graph",
    "GRAPH_KINDS",
    "MIXING_MODES",
    "complete",
    "empty",
    "erdos_renyi",
    "from_edges",
    "from_networkx",
    "laplacian_matvec",
    "laplacian_dense",
    "make_graph",
    "metropolis_weights",
    "mixing_matrix",
    "spectral_gap",
    "path",
    "ring",
    "small_world",
    "star",
    "torus",
    "with_mixing",
]

MIXING_MODES = ("auto", "sparse", "stencil", "complete", "dense")
DENSE_MAX_N = 4096  # a dense n×n Laplacian beyond this is refused (memory, and it is slow)


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
        return _leaf_matvec(self, x)

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
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(self.n))
        g.add_edges_from(map(tuple, self.edges().tolist()))
        return g


# ----------------------------------------------------------------------------------------
# Laplacian–vector products
# ----------------------------------------------------------------------------------------
def _leaf_matvec(graph: Graph, x: jax.Array) -> jax.Array:
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


# ----------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------
def _canonical_edges(edges: np.ndarray, n: int) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"edge endpoints must lie in [0, {n}); got range "
                         f"[{edges.min()}, {edges.max()}]")
    edges = edges[edges[:, 0] != edges[:, 1]]
    edges = np.sort(edges, axis=1)
    if edges.size:
        edges = np.unique(edges, axis=0)
    return edges


def _check_connected(edges: np.ndarray, n: int, name: str) -> None:
    if n == 1:
        return
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    ncomp, _ = connected_components(adj, directed=False)
    if ncomp > 1:
        raise ValueError(
            f"{name} graph on n={n} agents is disconnected ({ncomp} connected components); "
            "SLAM needs a connected graph (assumption A2). For Erdős–Rényi use a larger p "
            f"(p ≥ 2·ln(n)/n ≈ {min(1.0, 2 * math.log(max(n, 2)) / n):.3g}) or another seed, "
            "or use ring/torus/small_world, which are connected by construction.")


def _lam_max(edges: np.ndarray, degree: np.ndarray, n: int) -> float:
    """Largest Laplacian eigenvalue: exact for n ≤ 2048, Lanczos (scipy eigsh) above."""
    if n == 1 or len(edges) == 0:
        return 0.0
    if n <= 2048:
        L = np.zeros((n, n))
        L[edges[:, 0], edges[:, 1]] = -1.0
        L[edges[:, 1], edges[:, 0]] = -1.0
        L[np.arange(n), np.arange(n)] = degree
        return float(np.linalg.eigvalsh(L)[-1])
    from scipy.sparse.linalg import eigsh

    rows = np.concatenate([edges[:, 0], edges[:, 1], np.arange(n)])
    cols = np.concatenate([edges[:, 1], edges[:, 0], np.arange(n)])
    vals = np.concatenate([-np.ones(2 * len(edges)), degree.astype(float)])
    L = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    try:
        val = eigsh(L, k=1, which="LA", return_eigenvectors=False, tol=1e-6, maxiter=5000)[0]
        return float(val) * (1 + 1e-6)
    except Exception:  # pragma: no cover - eigsh failure: fall back to the Gershgorin-type bound
        return float(np.max(degree[edges[:, 0]] + degree[edges[:, 1]]))


def from_edges(edges, n: int, *, kind: str = "custom", shape=None, lam_max: float | None = None,
               mixing: str = "auto") -> Graph:
    """Build a :class:`Graph` from an (E, 2) array of undirected edges on nodes ``0..n-1``."""
    n = int(n)
    if n < 1:
        raise ValueError(f"a graph needs n ≥ 1 agents, got n={n}")
    if mixing not in MIXING_MODES:
        raise ValueError(f"unknown mixing mode {mixing!r}; choose one of {MIXING_MODES}")
    e = _canonical_edges(edges, n)
    _check_connected(e, n, kind)
    degree = np.bincount(e.ravel(), minlength=n).astype(np.int32)
    # both directions, sorted by sender so segment_sum can use indices_are_sorted=True
    s = np.concatenate([e[:, 0], e[:, 1]])
    r = np.concatenate([e[:, 1], e[:, 0]])
    order = np.lexsort((r, s))
    s, r = s[order].astype(np.int32), r[order].astype(np.int32)
    if lam_max is None:
        lam_max = _lam_max(e, degree, n)
    g = Graph(jnp.asarray(s), jnp.asarray(r), jnp.asarray(degree), None, n=n, num_edges=len(e),
              kind=kind, shape=shape, lam_max=lam_max, mixing="sparse")
    return with_mixing(g, mixing)


def with_mixing(graph: Graph, mixing: str) -> Graph:
    """Return the same graph with another Laplacian-product implementation.

    ``"auto"`` picks the stencil for ring/torus, the O(n) formula for the complete graph and
    the sparse ``segment_sum`` path otherwise.
    """
    if mixing not in MIXING_MODES:
        raise ValueError(f"unknown mixing mode {mixing!r}; choose one of {MIXING_MODES}")
    stencil_ok = (graph.kind == "ring" and graph.n >= 3) or (
        graph.kind == "torus" and graph.shape is not None and min(graph.shape) >= 3)
    if mixing == "auto":
        mixing = "stencil" if stencil_ok else ("complete" if graph.kind == "complete" else "sparse")
    if mixing == "stencil" and not stencil_ok:
        raise ValueError(f"the stencil path needs a ring with n ≥ 3 or a torus with both sides "
                         f"≥ 3; this graph is {graph!r}")
    if mixing == "complete" and graph.kind != "complete":
        raise ValueError("mixing='complete' is only valid for the complete graph")
    dense_L = None
    if mixing == "dense":
        if graph.n > DENSE_MAX_N:
            raise ValueError(f"dense mixing needs an n×n matrix; refused for n={graph.n} > "
                             f"{DENSE_MAX_N} (use 'sparse')")
        dense_L = jnp.asarray(laplacian_dense(graph), dtype=jnp.float32)
    return Graph(graph.senders, graph.receivers, graph.degree, dense_L, n=graph.n,
                 num_edges=graph.num_edges, kind=graph.kind, shape=graph.shape,
                 lam_max=graph.lam_max, mixing=mixing)


def ring(n: int, *, mixing: str = "auto") -> Graph:
    """Cycle graph C_n (n ≥ 3; n = 2 is a single edge, n = 1 a lone agent)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"a graph needs n ≥ 1 agents, got n={n}")
    i = np.arange(n)
    edges = np.stack([i, (i + 1) % n], axis=1) if n >= 2 else np.zeros((0, 2), np.int64)
    lam = 0.0 if n == 1 else (2.0 if n == 2 else 2.0 - 2.0 * math.cos(2 * math.pi * (n // 2) / n))
    return from_edges(edges, n, kind="ring" if n >= 3 else "path", lam_max=lam, mixing=mixing)


def path(n: int, *, mixing: str = "auto") -> Graph:
    """Path graph P_n."""
    i = np.arange(int(n) - 1)
    return from_edges(np.stack([i, i + 1], axis=1), n, kind="path", mixing=mixing)


def torus(rows: int, cols: int | None = None, *, mixing: str = "auto") -> Graph:
    """2-D periodic grid (torus) with ``rows × cols`` agents (cols defaults to rows)."""
    rows = int(rows)
    cols = rows if cols is None else int(cols)
    if rows < 3 or cols < 3:
        raise ValueError(f"torus needs rows, cols ≥ 3 (got {rows}×{cols}); use grid via "
                         "from_networkx for smaller sizes")
    idx = np.arange(rows * cols).reshape(rows, cols)
    right = np.stack([idx.ravel(), np.roll(idx, -1, axis=1).ravel()], axis=1)
    down = np.stack([idx.ravel(), np.roll(idx, -1, axis=0).ravel()], axis=1)
    lam = (2 - 2 * math.cos(2 * math.pi * (rows // 2) / rows)) + (
        2 - 2 * math.cos(2 * math.pi * (cols // 2) / cols))
    return from_edges(np.concatenate([right, down]), rows * cols, kind="torus",
                      shape=(rows, cols), lam_max=lam, mixing=mixing)


def star(n: int, *, mixing: str = "auto") -> Graph:
    """Star: agent 0 is the hub."""
    n = int(n)
    leaves = np.arange(1, n)
    edges = np.stack([np.zeros_like(leaves), leaves], axis=1)
    return from_edges(edges, n, kind="star", lam_max=float(n) if n > 1 else 0.0, mixing=mixing)


def complete(n: int, *, mixing: str = "auto") -> Graph:
    """Complete graph K_n (λ_max(L) = n)."""
    n = int(n)
    if n > 20000 and mixing in ("auto", "complete"):
        # O(n²) edges would not fit; the O(n) product does not need them.
        return Graph(jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.int32),
                     jnp.full((n,), n - 1, jnp.int32), None, n=n, num_edges=n * (n - 1) // 2,
                     kind="complete", shape=None, lam_max=float(n), mixing="complete")
    i, j = np.triu_indices(n, k=1)
    return from_edges(np.stack([i, j], axis=1), n, kind="complete",
                      lam_max=float(n) if n > 1 else 0.0, mixing=mixing)


def _sample_gnp_edges(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Exact G(n, p) edge set: |E| ~ Binomial(n(n−1)/2, p), then |E| distinct uniform pairs."""
    total = n * (n - 1) // 2
    if p >= 1.0:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1)
    if n <= 4096:  # small: flip every coin
        i, j = np.triu_indices(n, k=1)
        keep = rng.random(len(i)) < p
        return np.stack([i[keep], j[keep]], axis=1)
    m = int(rng.binomial(total, p))
    found = np.zeros((0, 2), np.int64)
    while len(found) < m:
        need = m - len(found)
        a = rng.integers(0, n, size=int(need * 1.1) + 16)
        b = rng.integers(0, n, size=len(a))
        cand = np.sort(np.stack([a, b], axis=1), axis=1)
        cand = cand[cand[:, 0] != cand[:, 1]]
        found = np.unique(np.concatenate([found, cand]), axis=0)
    if len(found) > m:
        found = found[rng.permutation(len(found))[:m]]
    return found


def erdos_renyi(n: int, p: float | None = None, *, mean_degree: float | None = None,
                seed: int = 0, mixing: str = "auto") -> Graph:
    """Seeded Erdős–Rényi G(n, p).

    Give ``p`` or ``mean_degree`` (p = mean_degree/(n−1)); with neither,
    ``p = min(1, 2·ln(n)/n)``, above the connectivity threshold ln(n)/n so that the graph is
    connected with high probability. A disconnected draw is an error (never a silent run).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"a graph needs n ≥ 1 agents, got n={n}")
    if p is not None and mean_degree is not None:
        raise ValueError("give p or mean_degree, not both")
    if n == 1:
        return from_edges(np.zeros((0, 2)), 1, kind="erdos_renyi", mixing=mixing)
    if mean_degree is not None:
        p = float(mean_degree) / (n - 1)
    if p is None:
        p = min(1.0, 2.0 * math.log(n) / n) if n > 2 else 1.0
    if not (0.0 < p <= 1.0) or not math.isfinite(p):
        raise ValueError(f"Erdős–Rényi edge probability must lie in (0, 1], got p={p}")
    rng = np.random.default_rng(seed)
    edges = _sample_gnp_edges(n, p, rng)
    return from_edges(edges, n, kind="erdos_renyi", mixing=mixing)


def small_world(n: int, k: int = 4, p: float = 0.1, *, seed: int = 0,
                mixing: str = "auto") -> Graph:
    """Newman–Watts small world: a ring lattice (each agent linked to its k nearest neighbours)
    plus, for each lattice edge, a random shortcut with probability p. Always connected; mean
    degree ≈ k(1 + p). Built in NumPy so n = 10⁶ takes about a second."""
    n = int(n)
    if k < 2 or k % 2:
        raise ValueError(f"small_world needs an even k ≥ 2, got k={k}")
    if n <= k:
        return complete(n, mixing=mixing)
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    lattice = np.concatenate([np.stack([i, (i + s) % n], axis=1) for s in range(1, k // 2 + 1)])
    mask = rng.random(len(lattice)) < p
    shortcuts = np.stack([lattice[mask, 0], rng.integers(0, n, size=int(mask.sum()))], axis=1)
    return from_edges(np.concatenate([lattice, shortcuts]), n, kind="small_world", mixing=mixing)


def from_networkx(g, *, mixing: str = "auto") -> Graph:
    """Build from a ``networkx.Graph``; nodes are relabelled 0..n−1 in iteration order."""
    import networkx as nx

    if g.is_directed():
        raise ValueError("SLAM needs an undirected communication graph (got a directed one)")
    g = nx.convert_node_labels_to_integers(g)
    edges = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    return from_edges(edges, g.number_of_nodes(), kind="networkx", mixing=mixing)


def empty(n: int) -> Graph:
    """n agents and no edges: the *no-communication* control of a comparison (L = 0, W = I,
    no messages). The only graph that is allowed to be disconnected."""
    n = int(n)
    if n < 1:
        raise ValueError(f"a graph needs n ≥ 1 agents, got n={n}")
    z = jnp.zeros((0,), jnp.int32)
    return Graph(z, z, jnp.zeros((n,), jnp.int32), None, n=n, num_edges=0, kind="empty",
                 shape=None, lam_max=0.0, mixing="sparse")


GRAPH_KINDS = ("erdos_renyi", "ring", "torus", "star", "complete", "path", "small_world")


def make_graph(kind: str, n: int, *, seed: int = 0, mixing: str = "auto", **kwargs) -> Graph:
    """Build a graph by name (CLI and sweeps). ``torus`` needs n to be a perfect square or a
    ``rows`` keyword."""
    if kind in ("er", "erdos_renyi", "erdos-renyi"):
        return erdos_renyi(n, seed=seed, mixing=mixing, **kwargs)
    if kind == "ring":
        return ring(n, mixing=mixing)
    if kind == "torus":
        rows = kwargs.get("rows") or math.isqrt(n)
        if rows * (n // rows) != n:
            raise ValueError(f"torus: n={n} is not rows×cols (give a perfect square or rows=)")
        return torus(rows, n // rows, mixing=mixing)
    if kind == "star":
        return star(n, mixing=mixing)
    if kind == "complete":
        return complete(n, mixing=mixing)
    if kind == "path":
        return path(n, mixing=mixing)
    if kind in ("small_world", "small-world"):
        return small_world(n, seed=seed, mixing=mixing, **kwargs)
    raise ValueError(f"unknown graph kind {kind!r}; choose one of {GRAPH_KINDS}")
