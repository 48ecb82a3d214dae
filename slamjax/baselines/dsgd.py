"""Decentralized SGD on one objective — the gossip reference of the meta-learning experiment.

Every agent takes a stochastic gradient step on its own loss and averages with its neighbours
through the communication object's doubly-stochastic mixing matrix W (Metropolis–Hastings,
:meth:`slamjax.Graph.mix`), for *both* variables, with no bilevel structure::

    x ← W x − η_x ∇_x ℓ_i(x_i, y_i; ξ_i),     y ← W y − η_y ∇_y ℓ_i(x_i, y_i; ξ_i)

(DGD / decentralized SGD of Nedić & Ozdaglar 2009 and Lian et al., NeurIPS 2017; the gradient
is taken at the agent's own iterate before mixing). ``loss="g"`` trains on the LL loss
(for ANIL: body and head trained jointly on the training loss, the classical non-meta
baseline of the paper's Fig. 8), ``loss="f"`` on the UL loss. One minibatch per agent and
step (``problem.sample``), one exchange of x and of y per step.

Before this module the experiment used W = I − L/(1 + d_max); the Metropolis W is the
library-wide choice (same on regular graphs; at most a slightly larger weight on low-degree
edges otherwise).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slamjax.algorithm import Algorithm, register
from slamjax.baselines import _oracle as O
from slamjax.graphs import Graph
from slamjax.problem import DATA_AXES, BilevelProblem

__all__ = ["DSGDParams", "DSGDState", "dsgd"]


class DSGDParams(NamedTuple):
    """Step sizes η_x, η_y (traced)."""

    lr_x: Any
    lr_y: Any

    @classmethod
    def create(cls, lr_x, lr_y, dtype=None):
        return cls(jnp.asarray(lr_x, dtype=dtype), jnp.asarray(lr_y, dtype=dtype))


class DSGDState(NamedTuple):
    x: Any
    y: Any
    step: Any


def dsgd(problem: BilevelProblem, comm: Graph, loss: str = "g") -> Algorithm:
    """Decentralized SGD on ``problem.g`` (``loss="g"``) or ``problem.f`` (``"f"``) over
    ``comm``; params :class:`DSGDParams`. Metrics: disagreement of x and y plus the problem's
    metrics evaluated as if both levels were in consensus."""
    if loss not in ("g", "f"):
        raise ValueError(f"loss must be 'g' or 'f', got {loss!r}")
    return O.build(problem, comm, loss, _init, _step, "dsgd")


def _init(static, comm, x0, y0, data=None) -> DSGDState:
    return DSGDState(x0, y0, jnp.zeros((), jnp.int32))


def _step(static, comm, key, state: DSGDState, params: DSGDParams, data):
    problem, loss = static.value
    n = comm.n
    fn = problem.g if loss == "g" else problem.f
    batch = O.sample(problem, key, data, n)
    gx, gy = jax.vmap(jax.grad(fn, argnums=(0, 1)), in_axes=(0, 0, DATA_AXES, 0))(
        state.x, state.y, data, batch)
    x = O.axpy(-params.lr_x, gx, comm.mix(state.x))
    y = O.axpy(-params.lr_y, gy, comm.mix(state.y))
    return DSGDState(x, y, state.step + 1), O.counts(comm, (state.x, state.y), 1, problem)


register("dsgd", lambda problem, comm, **kw: dsgd(problem, comm, **kw),
         lambda lr_x=0.01, lr_y=0.02, dtype=None: DSGDParams.create(lr_x, lr_y, dtype),
         "decentralized SGD on one loss, Metropolis gossip on x and y")
