"""Theorem-1 metrics and consensus errors (computed on the stacked variables).

* ``consensus_x`` = ‖Ax‖² = Σ_{(i,j)∈E} ‖x_i − x_j‖² (summed over the leaves of x),
* ``consensus_y`` = Σ_k ‖Ay_k‖²,
* whatever the problem's own ``metrics`` hook returns — for the quadratic family the
  stationarity ``grad_F_sq`` = ‖∇F(1x̄)‖² and the LL error ``ll_error`` = Σ_k ‖ȳ_k − y_k*(x)‖²;
* for a problem without a hook, two defaults: ``mean_f`` = (1/n) Σ_i f_i(x_i, y_i) and
  ``hypergrad_sq`` = ‖(1/n) Σ_i h_f,i(x̄, y_i)‖², the squared norm of the agents' average
  eq.-(23) hypergradient at the average UL iterate (CG with min(dim y, 20) iterations), both
  with ``batch=None`` (the exact oracle; a problem whose f or g cannot take ``None`` gets
  neither).

The disagreement is the communication object's (:meth:`slamjax.Graph.disagreement`), so the
metrics see the same graph as the algorithm.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from slamjax.comm import Graph
from slamjax.hypergrad import hypergradient
from slamjax.problem import per_agent
from slamjax.solvers import CG

__all__ = ["consensus_error", "bilevel_metrics", "default_metrics", "THEOREM1_METRICS"]

THEOREM1_METRICS = ("grad_F_sq", "consensus_x", "consensus_y", "ll_error")
"""Names of the four Theorem-1 metrics, in the order the plots and tables show them."""


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
    else:
        out.update(default_metrics(problem, x, y, data))
    return out


def default_metrics(problem, x, y, data) -> dict:
    """``mean_f`` and ``hypergrad_sq`` (module docstring) for any problem; ``{}`` when its
    functions cannot be evaluated with ``batch=None``."""
    dim = sum(math.prod(jnp.shape(a)[1:]) for a in jax.tree.leaves(y))
    solver = CG(max(1, min(dim, 20)))
    xbar = jax.tree.map(lambda a: jnp.broadcast_to(jnp.mean(a, axis=0), a.shape), x)
    try:
        fs = per_agent(lambda xi, yi, d, b: problem.f(xi, yi, d, None), x, y, data)
        hs = per_agent(lambda xi, yi, d, b: hypergradient(problem, xi, yi, d, None, solver),
                       xbar, y, data)
    except Exception:  # noqa: BLE001 — e.g. f needs a minibatch: no default metrics
        return {}
    hbar = [jnp.mean(h, axis=0) for h in jax.tree.leaves(hs)]
    return {"mean_f": jnp.mean(fs), "hypergrad_sq": sum(jnp.sum(h ** 2) for h in hbar)}
