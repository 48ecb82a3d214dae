"""Theorem-1 metrics and consensus errors (computed on the stacked variables).

* ``consensus_x`` = ‖Ax‖² = ⟨x, Lx⟩ (summed over the leaves of x),
* ``consensus_y`` = Σ_k ‖Ay_k‖² = ⟨y, Ly⟩,
* whatever the problem's own ``metrics`` hook returns — for the quadratic family the
  stationarity ``grad_F_sq`` = ‖∇F(1x̄)‖² and the LL error ``ll_error`` = Σ_k ‖ȳ_k − y_k*(x)‖².
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slamjax.graphs import Graph, laplacian_matvec

__all__ = ["consensus_error", "evaluate", "THEOREM1_METRICS"]

THEOREM1_METRICS = ("grad_F_sq", "consensus_x", "consensus_y", "ll_error")


def _leaf_disagreement(graph: Graph, v: jax.Array) -> jax.Array:
    """Σ_{(i,j)∈E} ‖v_i − v_j‖² computed edge by edge (never negative, unlike ⟨v, Lv⟩)."""
    if graph.mixing == "stencil":
        if graph.kind == "ring":
            return jnp.sum((v - jnp.roll(v, 1, axis=0)) ** 2)
        z = v.reshape(graph.shape + v.shape[1:])
        return jnp.sum((z - jnp.roll(z, 1, 0)) ** 2) + jnp.sum((z - jnp.roll(z, 1, 1)) ** 2)
    if graph.mixing == "complete":
        return graph.n * jnp.sum((v - jnp.mean(v, axis=0)) ** 2)
    if graph.mixing == "dense":
        return jnp.maximum(jnp.vdot(v, laplacian_matvec(graph, v)), 0.0)
    # both directions of every edge are stored: halve the sum
    return 0.5 * jnp.sum((v[graph.senders] - v[graph.receivers]) ** 2)


def consensus_error(graph: Graph, tree) -> jax.Array:
    """‖A v‖² = Σ_{(i,j)∈E} ‖v_i − v_j‖² (= ⟨v, L v⟩), summed over the leaves of ``tree``."""
    return sum(_leaf_disagreement(graph, leaf) for leaf in jax.tree.leaves(tree))


def evaluate(problem, config, graph: Graph, state, data) -> dict:
    """All metrics of a state as a dict of scalars (jit-able)."""
    cx, cy = config.level_consensus(state.x, state.y)
    out = {"consensus_x": consensus_error(graph, state.x),
           "consensus_y": consensus_error(graph, state.y)}
    if problem.metrics is not None:
        out.update(problem.metrics(state.x, state.y, data, cx, cy))
    return out
