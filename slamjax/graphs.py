"""Communication graphs: constructors of the :class:`~slamjax.comm.Graph` communication object.

:func:`erdos_renyi`, :func:`ring`, :func:`torus`, :func:`star`, :func:`complete`, :func:`path`,
:func:`small_world`, :func:`from_networkx`, :func:`from_edges`, :func:`empty` (the
no-communication control) and :func:`make_graph` (by name). Every constructor checks
connectivity: a disconnected graph is a ``ValueError`` that says how many components it has.
:func:`with_mixing` picks the implementation of L·v (:mod:`slamjax.comm`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from slamjax.comm import (DENSE_MAX_N, MIXING_MODES, Graph, laplacian_dense, laplacian_matvec,
                          metropolis_weights, mixing_matrix, spectral_gap)

__all__ = [
    "Graph", "GRAPH_KINDS", "MIXING_MODES", "complete", "empty", "erdos_renyi", "from_edges",
    "from_networkx", "laplacian_matvec", "laplacian_dense", "make_graph", "metropolis_weights",
    "mixing_matrix", "spectral_gap", "path", "ring", "small_world", "star", "torus",
    "with_mixing", "DENSE_MAX_N",
]


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
"""Names :func:`make_graph` accepts."""


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
