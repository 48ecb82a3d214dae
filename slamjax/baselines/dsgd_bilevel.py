"""Decentralized stochastic bilevel gradient descent with an inner loop — the naive reference
(the double-loop scheme of e.g. Yang, Zhang & Wang, "Decentralized gossip-based stochastic
bilevel optimization over communication networks", NeurIPS 2022, without their tracking).

Per (outer) step::

    repeat K_in times:  y ← W y − η_y ∇_y g_i(x, y; ξ)        (a fresh minibatch each time)
    h_f = eq. (23) at (x, y⁺) with the agent's own Hessian (the same local surrogate as SLAM)
    x ← W (x − η_x h_f)

W is the Metropolis matrix (:meth:`slamjax.Graph.mix`). Choices: "adapt then combine" for x
(as the design notes specify), "combine then adapt" for y; the linear system of eq. (23) is
solved by the configured solver (default CG(10)) from zero every step. Costs per step: K_in
exchanges of y and one of x; K_in + 1 minibatches per agent. With constant steps the fixed
point has the DGD heterogeneity bias, plus SLAM's local-Hessian bias when the LL Hessians
differ across agents.

``consensus="upper"`` (the SLAM-U setting, e.g. ANIL heads that stay on their agent): only x
is gossiped; the inner loop is local gradient descent, y ← y − η_y ∇_y g_i(x, y; ξ), so each
agent's surrogate (23) is then its exact local hypergradient. Costs one exchange of x per
step; the metrics use the problem's closed forms without LL consensus. ``"both"`` (default)
is the above.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from slamjax.algorithm import register
from slamjax.baselines import _oracle as O
from slamjax.consensus import ConsensusHP, gossip, local
from slamjax.hypergrad import CG, hypergradient, lower_grad
from slamjax.problem import DATA_AXES

__all__ = ["DSGDBilevelParams", "DSGDBilevelState", "dsgd_bilevel"]


class DSGDBilevelParams(NamedTuple):
    """Traced steps η_x (outer) and η_y (inner LL loop)."""

    lr_x: Any
    lr_y: Any
    DOMAIN = "≥ 0"

    @classmethod
    def create(cls, lr_x, lr_y, dtype=None) -> "DSGDBilevelParams":
        """Steps η_x (outer) and η_y (inner loop); numbers or schedules."""
        return cls(O.number(lr_x, dtype), O.number(lr_y, dtype))


class DSGDBilevelState(NamedTuple):
    """Iterates x, y (agent axis first) and the step counter."""

    x: Any
    y: Any
    step: Any


class _Options(NamedTuple):
    inner_steps: int
    solver: Any
    consensus: str = "both"


def dsgd_bilevel(problem, comm, inner_steps: int = 5, solver=CG(10), consensus: str = "both"):
    """The naive double-loop reference over ``comm``; params :class:`DSGDBilevelParams`.
    ``consensus``: ``"both"`` (gossip x and, in the inner loop, y) or ``"upper"`` (x only;
    the inner loop is local)."""
    if isinstance(inner_steps, bool) or int(inner_steps) < 1:
        raise ValueError(f"inner_steps must be an integer ≥ 1, got {inner_steps!r}")
    if not callable(getattr(solver, "solve", None)):
        raise ValueError(f"solver must be a linear solver such as CG, Neumann or Exact, got "
                         f"{solver!r}")
    O.check_consensus("dsgd_bilevel", consensus)
    return O.build(problem, comm, _Options(int(inner_steps), solver, consensus), _init,
                   _kernel, "dsgd_bilevel", DSGDBilevelParams)


def _init(static, comm, x0, y0, data=None):
    return DSGDBilevelState(x0, y0, jnp.zeros((), jnp.int32))


def _kernel(static, key, st, p, data, comm):
    problem, opt = static.value
    n = comm.n
    both = opt.consensus == "both"
    keys = jax.random.split(key, opt.inner_steps + 1)
    vgrad = jax.vmap(lambda x, y, d, b: lower_grad(problem, x, y, d, b),
                     in_axes=(0, 0, DATA_AXES, 0))
    ll = gossip() if both else local()

    def inner(y, k):
        b = O.sample(problem, k, data, n)
        return ll.update(vgrad(st.x, y, data, b), (), y, comm, ConsensusHP(p.lr_y))[0], None

    y, _ = lax.scan(inner, st.y, keys[:-1])
    bf = O.sample(problem, keys[-1], data, n)
    h_f = jax.vmap(lambda x, y, d, b: hypergradient(problem, x, y, d, b, opt.solver),
                   in_axes=(0, 0, DATA_AXES, 0))(st.x, y, data, bf)
    x, _ = gossip("atc").update(h_f, (), st.x, comm, ConsensusHP(p.lr_x))
    sent = (opt.inner_steps * comm.messages(st.y) if both else 0) + comm.messages(st.x)
    mb = 0.0 if problem.sample is None else float((opt.inner_steps + 1) * n)
    info = {"messages": jnp.asarray(float(sent), jnp.float32),
            "minibatches": jnp.asarray(mb, jnp.float32)}
    return DSGDBilevelState(x, y, st.step + 1), info


register("dsgd_bilevel", lambda problem, comm, **kw: dsgd_bilevel(problem, comm, **kw),
         lambda lr_x=0.02, lr_y=0.04, dtype=None: DSGDBilevelParams.create(lr_x, lr_y, dtype),
         "decentralized SGD with an inner LL loop and eq.-(23) hypergradients "
         "(consensus='upper': gossip on x only)")
