"""D-SOBA — single-loop decentralized stochastic bilevel optimization (the SOBA family on a
graph), as in Kong, Zhu, Chen, Yuan, "Decentralized Bilevel Optimization over Graphs: Loopless
Algorithmic Update and Transient Iteration Complexity" (2024), built on SOBA (Dagréou et al.,
NeurIPS 2022).

Per step, every agent evaluates the three directions at its current (x, y, z)::

    d_y = ∇_y g_i(x, y),   d_z = ∇²_yy g_i(x, y) z − ∇_y f_i(x, y),
    d_x = ∇_x f_i(x, y) − ∇²_xy g_i(x, y) z,          m ← (1 − θ) m + θ d_x
    y ← W y − η_y d_y,     z ← W z − η_z d_z,     x ← W x − η_x m

with W the graph's Metropolis matrix (:meth:`slamjax.Graph.mix`); z ≈ [∇²_yy g]⁻¹∇_y f is
tracked by one step of a linear recursion instead of an inner solve. θ = 1 (default) is plain
D-SOBA; θ < 1 is the moving average of the paper's D-SOBA variant (m starts at 0).

Choices where the papers leave room: g-terms use one minibatch, f-terms a second one (two
per agent and step, as SLAM); all three exchanges happen every step (|x| + 2|y| scalars per
agent-edge direction); z starts at 0. With constant steps and heterogeneous agents the
fixed point carries the usual DGD-type bias O(η) (no gradient tracking): see
:mod:`slamjax.baselines.dsoba_gt` for the tracked version.

``consensus="upper"`` (the SLAM-U setting, e.g. ANIL heads that stay on their agent): only x
is gossiped; y and z are updated locally, y ← y − η_y d_y and z ← z − η_z d_z, so z solves each
agent's own system and only |x| scalars cross each agent-edge direction. The metrics then
use the problem's closed forms without LL consensus. ``"both"`` (default) is the above.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slamjax.algorithm import register
from slamjax.baselines import _oracle as O
from slamjax.consensus import ConsensusHP, gossip, local

__all__ = ["DSOBAParams", "DSOBAState", "dsoba"]


class DSOBAParams(NamedTuple):
    """Traced step sizes η_x, η_y, η_z and moving-average weight θ ∈ (0, 1]."""

    lr_x: Any
    lr_y: Any
    lr_z: Any
    theta: Any = 1.0
    DOMAIN = "≥ 0"

    @classmethod
    def create(cls, lr_x, lr_y, lr_z, theta=1.0, dtype=None) -> "DSOBAParams":
        """D-SOBA's steps η_x, η_y, η_z (step sizes, not inverses) and θ ∈ (0, 1] (1: no
        moving average); numbers or schedules (:mod:`slamjax.schedules`)."""
        return cls(*(O.number(v, dtype) for v in (lr_x, lr_y, lr_z, theta)))


class DSOBAState(NamedTuple):
    """Iterates x, y, z ≈ [∇²_yy g]⁻¹∇_y f, the moving average m of d_x, the step."""

    x: Any
    y: Any
    z: Any
    m: Any
    step: Any


class _Options(NamedTuple):
    consensus: str = "both"


def dsoba(problem, comm, consensus: str = "both"):
    """D-SOBA over ``comm``; params :class:`DSOBAParams`. ``consensus``: ``"both"`` (gossip
    x, y, z) or ``"upper"`` (gossip x only; y and z stay local)."""
    O.check_consensus("dsoba", consensus)
    return O.build(problem, comm, _Options(consensus), _init, _kernel, "dsoba", DSOBAParams)


def _init(static, comm, x0, y0, data=None):
    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    return DSOBAState(x0, y0, zeros(y0), zeros(x0), jnp.zeros((), jnp.int32))


def _kernel(static, key, s: DSOBAState, p: DSOBAParams, data, comm):
    problem, opt = static.value
    both = opt.consensus == "both"
    kg, kf = jax.random.split(key)
    bg, bf = O.sample(problem, kg, data, comm.n), O.sample(problem, kf, data, comm.n)
    dx, dy, dz = O.directions(problem, s.x, s.y, s.z, data, bg, bf)
    m = O.lin((1.0 - p.theta, s.m), (p.theta, dx))
    ll = gossip() if both else local()
    y, _ = ll.update(dy, (), s.y, comm, ConsensusHP(p.lr_y))
    z, _ = ll.update(dz, (), s.z, comm, ConsensusHP(p.lr_z))
    x, _ = gossip().update(m, (), s.x, comm, ConsensusHP(p.lr_x))
    info = O.counts(comm, (s.x, s.y, s.z) if both else (s.x,), 2, problem)
    return DSOBAState(x, y, z, m, s.step + 1), info


register("dsoba", lambda problem, comm, **kw: dsoba(problem, comm, **kw),
         lambda lr_x=0.02, lr_y=0.04, lr_z=0.04, theta=1.0, dtype=None:
         DSOBAParams.create(lr_x, lr_y, lr_z, theta, dtype),
         "D-SOBA (Kong et al. 2024): single loop, gossip on x, y, z "
         "(consensus='upper': on x only)")
