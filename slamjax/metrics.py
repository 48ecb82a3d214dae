"""Theorem-1 metrics and consensus errors (computed on the stacked variables).

* ``consensus_x`` = ‖Ax‖² = Σ_{(i,j)∈E} ‖x_i − x_j‖² (summed over the leaves of x),
* ``consensus_y`` = Σ_k ‖Ay_k‖²,
* whatever the problem's own ``metrics`` hook returns — for the quadratic family the
  stationarity ``grad_F_sq`` = ‖∇F(1x̄)‖² and the LL error ``ll_error`` = Σ_k ‖ȳ_k − y_k*(x)‖².

The disagreement is the communication object's (:meth:`slamjax.Graph.disagreement`), so the
metrics see the same graph as the algorithm.
"""

from __future__ import annotations

import jax

from slamjax.graphs import Graph

__all__ = ["consensus_error", "bilevel_metrics", "THEOREM1_METRICS"]

THEOREM1_METRICS = ("grad_F_sq", "consensus_x", "consensus_y", "ll_error")


def consensus_error(graph: Graph, tree) -> jax.Array:
    """‖A v‖² = Σ_{(i,j)∈E} ‖v_i − v_j‖² (= ⟨v, L v⟩), summed over the leaves of ``tree``."""
    return graph.disagreement(tree)


def bilevel_metrics(problem, comm: Graph, x, y, data, consensus_x: bool,
                    consensus_y: bool) -> dict:
    """Disagreement of x and y on ``comm`` plus the problem's own ``metrics`` hook (which is
    told which levels are asked to agree: its closed forms depend on it)."""
    out = {"consensus_x": comm.disagreement(x), "consensus_y": comm.disagreement(y)}
    if problem.metrics is not None:
        out.update(problem.metrics(x, y, data, consensus_x, consensus_y))
    return out
