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

``optimizer="adam"``: the same gossip with Adam-normalised local steps. Every agent keeps its
own Adam moments (optax's ``scale_by_adam``: b1 = 0.9, b2 = 0.999, eps = 1e-8) for x and for
y, fed with the stochastic gradient above, and steps along the resulting direction::

    d_i = Adam_i(∇ℓ_i(x_i, y_i; ξ_i)),     x ← W x − η_x d_{x,i},     y ← W y − η_y d_{y,i}

The moments stay on their agent (never gossiped, so the message counts are those of SGD)
and live in the state (``DSGDState.opt``, agent axis first). With n = 1 (W = 1) this is
exactly ``optax.adam(η)`` on the loss: the centralized Adam oracle of the meta-learning
Table 2 (issue 12) is this method with n = 1 and one minibatch of 32·n (the n agents'
batches pooled), run through the same runner and step-size grids as the decentralized
methods. ``optimizer="sgd"`` (default) is the update above, unchanged
(``DSGDState.opt`` is ``None``, so the state has the same leaves as before the option).

Before this module the experiment used W = I − L/(1 + d_max); the Metropolis W is the
library-wide choice (same on regular graphs; at most a slightly larger weight on low-degree
edges otherwise).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from slamjax.algorithm import Algorithm, register
from slamjax.baselines import _oracle as O
from slamjax.comm import Graph
from slamjax.consensus import ConsensusHP, gossip
from slamjax.problem import DATA_AXES, BilevelProblem

__all__ = ["DSGDParams", "DSGDState", "OPTIMIZERS", "dsgd"]


class DSGDParams(NamedTuple):
    """Step sizes η_x, η_y (traced)."""

    lr_x: Any
    lr_y: Any
    DOMAIN = "≥ 0"

    @classmethod
    def create(cls, lr_x, lr_y, dtype=None) -> "DSGDParams":
        """Steps η_x, η_y (step sizes, not inverses); numbers or schedules."""
        return cls(O.number(lr_x, dtype), O.number(lr_y, dtype))


class DSGDState(NamedTuple):
    """Iterates (agent axis first), step counter and, for ``optimizer="adam"``, the agents'
    Adam states of the pair (x, y) (``optax.ScaleByAdamState`` with an agent axis; ``None``
    for SGD)."""

    x: Any
    y: Any
    step: Any
    opt: Any = None


OPTIMIZERS = ("sgd", "adam")
"""The local step rules of :func:`dsgd`."""


class _Options(NamedTuple):
    """Static options (hashable). No ``consensus`` field: both levels are gossiped, which is
    the default of the shared metrics."""

    loss: str = "g"
    optimizer: str = "sgd"


_ADAM = optax.scale_by_adam()  # b1 = 0.9, b2 = 0.999, eps = 1e-8 (optax.adam's defaults)


def dsgd(problem: BilevelProblem, comm: Graph, loss: str = "g",
         optimizer: str = "sgd") -> Algorithm:
    """Decentralized SGD on ``problem.g`` (``loss="g"``) or ``problem.f`` (``"f"``) over
    ``comm``; params :class:`DSGDParams`. ``optimizer``: ``"sgd"`` (plain local steps) or
    ``"adam"`` (per-agent Adam-normalised local steps; centralized Adam when n = 1).
    Metrics: disagreement of x and y plus the problem's metrics evaluated as if both levels
    were in consensus."""
    if loss not in ("g", "f"):
        raise ValueError(f"loss must be 'g' or 'f', got {loss!r}")
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ValueError(f"dsgd: optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    return O.build(problem, comm, _Options(loss, optimizer), _init, _kernel, "dsgd", DSGDParams)


def _init(static, comm, x0, y0, data=None) -> DSGDState:
    _, opt = static.value
    adam = jax.vmap(_ADAM.init)((x0, y0)) if opt.optimizer == "adam" else None
    return DSGDState(x0, y0, jnp.zeros((), jnp.int32), adam)


def _kernel(static, key, state: DSGDState, params: DSGDParams, data, comm):
    problem, opt = static.value
    n = comm.n
    fn = problem.g if opt.loss == "g" else problem.f
    batch = O.sample(problem, key, data, n)
    gx, gy = jax.vmap(jax.grad(fn, argnums=(0, 1)), in_axes=(0, 0, DATA_AXES, 0))(
        state.x, state.y, data, batch)
    adam = state.opt
    if opt.optimizer == "adam":  # each agent normalises its own gradient (moments local)
        (gx, gy), adam = jax.vmap(_ADAM.update)((gx, gy), state.opt)
    x, _ = gossip().update(gx, (), state.x, comm, ConsensusHP(params.lr_x))
    y, _ = gossip().update(gy, (), state.y, comm, ConsensusHP(params.lr_y))
    return DSGDState(x, y, state.step + 1, adam), O.counts(comm, (state.x, state.y), 1, problem)


register("dsgd", lambda problem, comm, **kw: dsgd(problem, comm, **kw),
         lambda lr_x=0.01, lr_y=0.02, dtype=None: DSGDParams.create(lr_x, lr_y, dtype),
         "decentralized SGD on one loss, Metropolis gossip on x and y "
         "(optimizer='adam': per-agent Adam steps, centralized Adam at n = 1)")
