"""Gossip (mixing-matrix) averaging for the consensus-based baselines (DAC, MDAC, Dec-PPO).

The baselines average neighbours' parameters with a doubly stochastic mixing matrix W
(Zhang et al. 2018 call its entries c_t(i, j); Chen et al. 2022 call it U). We use the
**Metropolis–Hastings weights**, which only need each agent's and its neighbours' degrees:

    W_ij = 1 / (1 + max(d_i, d_j))  for j ∈ N_i,    W_ii = 1 − Σ_{j∈N_i} W_ij,

so (W v)_i = v_i − Σ_{j∈N_i} W_ij (v_i − v_j): an O(n + |E|) ``segment_sum`` over the
graph's edge list, for every leaf of a pytree with the agent axis first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.graphs import Graph

__all__ = ["metropolis_weights", "mix", "mixing_matrix", "spectral_gap"]


def metropolis_weights(graph: Graph) -> jax.Array:
    """Weight W_ij of every directed edge (graph.senders[e] = i, graph.receivers[e] = j)."""
    deg = graph.degree
    return 1.0 / (1.0 + jnp.maximum(deg[graph.senders], deg[graph.receivers]).astype(jnp.float32))


def _mix_leaf(graph: Graph, w, v):
    if graph.num_edges == 0:
        return v
    diff = v[graph.senders] - v[graph.receivers]  # (2|E|, ...)
    wd = w.astype(v.dtype).reshape((-1,) + (1,) * (v.ndim - 1)) * diff
    return v - jax.ops.segment_sum(wd, graph.senders, num_segments=graph.n,
                                   indices_are_sorted=True)


def mix(graph: Graph, tree, steps: int = 1):
    """Apply W ``steps`` times (``steps`` static) to every leaf of ``tree``."""
    w = metropolis_weights(graph)
    one = lambda t: jax.tree.map(lambda v: _mix_leaf(graph, w, v), t)  # noqa: E731
    if steps == 1:
        return one(tree)
    return lax.fori_loop(0, int(steps), lambda _, t: one(t), tree)


def mixing_matrix(graph: Graph) -> np.ndarray:
    """Dense W (host NumPy; tests and diagnostics)."""
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
