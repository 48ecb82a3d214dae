"""D-SOBA with gradient tracking on all three directions — the SPARKLE / MA-DSBO-GT family
(Zhu et al., "SPARKLE: a unified single-loop primal-dual framework for decentralized bilevel
optimization", NeurIPS 2024; Chen et al., "Decentralized stochastic bilevel optimization with
improved per-iteration complexity", ICML 2023).

Each agent keeps, for v ∈ {x, y, z}, a tracker s_v of the network-average direction::

    d^k   = directions at (x^k, y^k, z^k)        (as in :mod:`slamjax.baselines.dsoba`)
    s_v^k = W s_v^{k−1} + d_v^k − d_v^{k−1}      (s^{−1} = d^{−1} = 0, so s^0 = d^0)
    v^{k+1} = W v^k − η_v s_v^k

Because mean(s_v^k) = mean(d_v^k) at every k, the fixed point has every agent's tracker equal
to the *average* direction: the data-heterogeneity bias of plain D-SOBA disappears, and since
z is in consensus with Σ_i (∇²_yy g_i z − ∇_y f_i) = 0, z solves the network-summed system, so
even agent-specific LL Hessians give the true hypergradient of problem (2).

Choices: gradient tracking in the "combine-then-adapt" form above with the trackers
exchanged alongside the iterates (6 exchanges per step: x, y, z and their trackers); no moving
average (the SPARKLE variants differ mainly in which of the three directions are tracked;
tracking all three is the most robust choice); two minibatches per agent and step.

``consensus="upper"`` (the SLAM-U setting, e.g. ANIL heads that stay on their agent): only x
and its tracker s_x are exchanged; y and z are updated locally with their own directions,
y ← y − η_y d_y and z ← z − η_z d_z (no tracking or mixing: s_y = d_y, s_z = d_z), so z solves
each agent's own system. The metrics then use the problem's closed forms without LL
consensus. ``"both"`` (default) is the above.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slamjax.algorithm import register
from slamjax.baselines import _oracle as O
from slamjax.consensus import ConsensusHP, TrackingState, local, tracking

__all__ = ["DSOBAGTParams", "DSOBAGTState", "dsoba_gt"]


class DSOBAGTParams(NamedTuple):
    """Traced steps η_x, η_y, η_z."""

    lr_x: Any
    lr_y: Any
    lr_z: Any
    DOMAIN = "≥ 0"

    @classmethod
    def create(cls, lr_x, lr_y, lr_z, dtype=None) -> "DSOBAGTParams":
        """Steps η_x, η_y, η_z (step sizes, not inverses); numbers or schedules."""
        return cls(*(O.number(v, dtype) for v in (lr_x, lr_y, lr_z)))


class DSOBAGTState(NamedTuple):
    """Iterates x, y, z, the trackers s = (s_x, s_y, s_z), the last directions, the step."""

    x: Any
    y: Any
    z: Any
    s: Any       # trackers (s_x, s_y, s_z)
    d_prev: Any  # last directions (d_x, d_y, d_z)
    step: Any


class _Options(NamedTuple):
    consensus: str = "both"


def dsoba_gt(problem, comm, consensus: str = "both"):
    """D-SOBA with gradient tracking over ``comm``; params :class:`DSOBAGTParams`.
    ``consensus``: ``"both"`` (track and gossip x, y, z) or ``"upper"`` (x and its tracker
    only; y and z follow their local directions)."""
    O.check_consensus("dsoba_gt", consensus)
    return O.build(problem, comm, _Options(consensus), _init, _kernel, "dsoba_gt",
                   DSOBAGTParams)


def _init(static, comm, x0, y0, data=None):
    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    trio = (zeros(x0), zeros(y0), zeros(y0))
    return DSOBAGTState(x0, y0, zeros(y0), trio, trio, jnp.zeros((), jnp.int32))


def _kernel(static, key, st: DSOBAGTState, p: DSOBAGTParams, data, comm):
    problem, opt = static.value
    kg, kf = jax.random.split(key)
    bg, bf = O.sample(problem, kg, data, comm.n), O.sample(problem, kf, data, comm.n)
    d = O.directions(problem, st.x, st.y, st.z, data, bg, bf)            # (d_x, d_y, d_z)
    lrs = (p.lr_x, p.lr_y, p.lr_z)
    old = (st.x, st.y, st.z)
    both = opt.consensus == "both"
    tracked = 3 if both else 1  # "upper": track x only; y, z step along their own directions
    new, s = [], []
    for k in range(3):
        if k < tracked:
            v, ts = tracking().update(d[k], TrackingState(st.s[k], st.d_prev[k]), old[k],
                                      comm, ConsensusHP(lrs[k]))
            s.append(ts.tracker)
        else:
            v, _ = local().update(d[k], (), old[k], comm, ConsensusHP(lrs[k]))
            s.append(d[k])
        new.append(v)
    exchanged = old + tuple(st.s) if both else (st.x, st.s[0])
    info = O.counts(comm, exchanged, 2, problem)
    return DSOBAGTState(*new, tuple(s), d, st.step + 1), info


register("dsoba_gt", lambda problem, comm, **kw: dsoba_gt(problem, comm, **kw),
         lambda lr_x=0.02, lr_y=0.04, lr_z=0.04, dtype=None:
         DSOBAGTParams.create(lr_x, lr_y, lr_z, dtype),
         "D-SOBA with gradient tracking on x, y, z (SPARKLE / MA-DSBO-GT family; "
         "consensus='upper': on x only)")
