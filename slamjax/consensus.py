"""Consensus transforms: how the leaves of a decentralized variable reach agreement.

One object per rule, shaped like an optax transformation, used by SLAM, bias-free SLAM, the
peers in :mod:`slamjax.baselines` and both actor-critic trainers::

    rule = consensus.primal_dual()                      # or gossip(), local(), central(), ...
    state = rule.init(params, comm)
    params, state = rule.update(grads, state, params, comm, ConsensusHP(lr, rho, gamma))

``params`` (the variable, agent axis first on every leaf) and ``grads`` (its descent
direction, same tree) are pytrees; ``comm`` is the communication object
(:class:`~slamjax.Graph` or a faulty/partitioned one); ``hp`` holds traced numbers (the step
size and, for the primal–dual rule, ρ and γ). Unlike optax, ``update`` returns the new
*variable*: SLAM's dual step needs L·v⁺, the product of the updated variable.
``rule.messages(comm, params)`` is the number of scalars one update sends (a Python int).
``init`` takes ``comm`` because a rule may cache a communication product (SLAM's L·v); a rule
that caches nothing (every rule but ``primal_dual(cache=True)``) accepts ``comm=None``.

Rules (all per leaf, every exchange through ``comm``):

* :func:`primal_dual` — SLAM's eqs. (5a)/(5b) and (4b)/(4d), duals stored as u = Aᵀλ:
  v ← v − lr·(g + γu + ργ L v), u ← u + (ρ/γ) L v⁺; an optional per-leaf ``mask`` leaves the
  other leaves on the plain step v ← v − lr·g (SLAM-L, SLAM-U, partial sharing);
* :func:`gossip` — decentralized gradient descent with the Metropolis matrix W:
  ``order="cta"`` (combine then adapt) v ← W v − lr·g, ``"atc"`` v ← W(v − lr·g); ``rounds=k``
  mixes k times (repeated gossip, as MDAC's extra consensus rounds); ``grads=None`` mixes only;
* :func:`tracking` — gradient tracking: s ← W s + g − g_prev, v ← W v − lr·s;
* :func:`local` — no communication, v ← v − lr·g; :func:`central` — exact averaging of
  v − lr·g over the agents (the centralized ideal, an all-reduce rather than gossip);
* :func:`masked` — a rule on the leaves a per-leaf mask selects, :func:`local` on the others
  (optax's ``masked``), e.g. ``masked(gossip("atc"), (True, False, False))``.

All casts follow the leaf's dtype, so float32 and float64 variables keep their dtype.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ConsensusHP", "Consensus", "PrimalDualState", "TrackingState", "primal_dual",
           "gossip", "tracking", "local", "central", "masked", "leaf_mask", "TRANSFORMS"]


class ConsensusHP(NamedTuple):
    """Traced numbers of one update: step size ``lr``; ρ and γ for :func:`primal_dual`."""

    lr: Any
    rho: Any = None
    gamma: Any = None


class Consensus(NamedTuple):
    """A consensus rule: ``init(params, comm) -> state``, ``update(grads, state, params,
    comm, hp) -> (params, state)`` and ``messages(comm, params) -> int``."""

    init: Callable
    update: Callable
    messages: Callable


def _cast(a, like):
    return jnp.asarray(a, like.dtype)


def leaf_mask(name: str, mask, tree) -> tuple[bool, ...]:
    """One bool per leaf of ``tree``: ``mask`` ``None``/``True`` (all), ``False`` (none) or a
    sequence with one entry per leaf (in ``jax.tree.leaves`` order)."""
    nleaves = len(jax.tree.leaves(tree))
    if mask is None:
        return (True,) * nleaves
    if isinstance(mask, bool):
        return (mask,) * nleaves
    out = tuple(bool(b) for b in mask)
    if len(out) != nleaves:
        raise ValueError(f"{name} has {len(out)} entries but the variable has {nleaves} "
                         "leaves (one bool per leaf, in jax.tree.leaves order)")
    return out


def _plain(v, g, lr):
    return v - _cast(lr, v) * g


# ----------------------------------------------------------------------------------------
# SLAM's primal-dual rule
# ----------------------------------------------------------------------------------------
class PrimalDualState(NamedTuple):
    """Duals u = Aᵀλ (same tree as the variable; zero on leaves without consensus) and, with
    ``cache=True``, L·v of the current variable (one entry per leaf, ``None`` without
    consensus): the dual step computes L·v⁺ and the next primal step needs the same product."""

    dual: Any
    lap: Any = None


def primal_dual(mask=None, *, cache: bool = True) -> Consensus:
    """SLAM's primal–dual consensus (eqs. (5a)/(5b) primal, (4b)/(4d) dual) on the leaves
    ``mask`` selects (default all); the other leaves take v ← v − lr·g and keep u = 0.

    ``cache=True`` carries L·v in the state (two Laplacian products per update instead of
    three); ``False`` recomputes it (same numbers, smaller state)."""

    def masks(params):
        return leaf_mask("mask", mask, params)

    def init(params, comm):
        dual = jax.tree.map(jnp.zeros_like, params)
        if not cache:
            return PrimalDualState(dual)
        lap = tuple(comm.laplacian(v) if on else None
                    for v, on in zip(jax.tree.leaves(params), masks(params)))
        return PrimalDualState(dual, lap)

    def update(grads, state, params, comm, hp):
        v_l, treedef = jax.tree.flatten(params)
        g_l, u_l = jax.tree.leaves(grads), jax.tree.leaves(state.dual)
        laps = state.lap if state.lap is not None else (None,) * len(v_l)
        new_v, new_u, new_lap = [], [], []
        for vi, gi, ui, on, lv in zip(v_l, g_l, u_l, masks(params), laps):
            if on:
                c = lambda a: _cast(a, vi)  # noqa: B023, E731
                if lv is None:
                    lv = comm.laplacian(vi)
                vn = vi - c(hp.lr) * (gi + c(hp.gamma) * ui + c(hp.rho * hp.gamma) * lv)
                lvn = comm.laplacian(vn)
                un = ui + c(hp.rho / hp.gamma) * lvn
            else:
                vn, un, lvn = _plain(vi, gi, hp.lr), ui, None
            new_v.append(vn)
            new_u.append(un)
            new_lap.append(lvn)
        new = PrimalDualState(jax.tree.unflatten(treedef, new_u),
                              tuple(new_lap) if cache else None)
        return jax.tree.unflatten(treedef, new_v), new

    def messages(comm, params):
        return sum(comm.messages(v) for v, on in zip(jax.tree.leaves(params), masks(params))
                   if on)

    return Consensus(init, update, messages)


# ----------------------------------------------------------------------------------------
# gossip, tracking, local, central
# ----------------------------------------------------------------------------------------
ORDERS = ("cta", "atc")


def gossip(order: str = "cta", rounds: int = 1) -> Consensus:
    """Decentralized gradient descent with the communication object's Metropolis mixing W.

    ``order="cta"``: v ← Wᵏ v − lr·g (combine then adapt: D-SOBA, DSGD); ``"atc"``:
    v ← Wᵏ(v − lr·g) (adapt then combine: DAC/CAC critics, DSGD-bilevel's x); k = ``rounds``
    (MDAC's repeated gossip). ``update(None, ...)`` only mixes. Stateless."""
    if order not in ORDERS:
        raise ValueError(f"gossip order must be one of {ORDERS}, got {order!r}")
    rounds = int(rounds)
    if rounds < 1:
        raise ValueError(f"gossip needs rounds ≥ 1, got {rounds}")

    def update(grads, state, params, comm, hp):
        if grads is None:
            return comm.mix(params, rounds), state
        if order == "atc":
            return comm.mix(jax.tree.map(lambda v, g: _plain(v, g, hp.lr), params, grads),
                            rounds), state
        return jax.tree.map(lambda m, g: _plain(m, g, hp.lr), comm.mix(params, rounds),
                            grads), state

    return Consensus(lambda params, comm: (), update,
                     lambda comm, params: rounds * comm.messages(params))


class TrackingState(NamedTuple):
    """Tracker s of the network-average direction and the last direction g_prev."""

    tracker: Any
    previous: Any


def tracking() -> Consensus:
    """Gradient tracking (combine then adapt): s ← W s + g − g_prev, v ← W v − lr·s, with
    s and g_prev starting at zero (so s⁰ = g⁰). The average of s equals the average of g at
    every step, which removes the heterogeneity bias of plain gossip. Exchanges v and s."""

    def init(params, comm):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return TrackingState(zeros, zeros)

    def update(grads, state, params, comm, hp):
        s = jax.tree.map(lambda m, g, p: m + g - p, comm.mix(state.tracker), grads,
                         state.previous)
        v = jax.tree.map(lambda m, si: _plain(m, si, hp.lr), comm.mix(params), s)
        return v, TrackingState(s, grads)

    return Consensus(init, update, lambda comm, params: 2 * comm.messages(params))


def local() -> Consensus:
    """No communication: v ← v − lr·g (the no-communication control)."""

    def update(grads, state, params, comm, hp):
        return jax.tree.map(lambda v, g: _plain(v, g, hp.lr), params, grads), state

    return Consensus(lambda params, comm: (), update, lambda comm, params: 0)


def central() -> Consensus:
    """Exact averaging: every agent holds the mean over agents of v − lr·g (the centralized
    ideal a consensus rule approximates; an all-reduce, so it sends no neighbour messages)."""

    def one(v, g, lr):
        return jnp.broadcast_to(jnp.mean(_plain(v, g, lr), axis=0, keepdims=True), v.shape)

    def update(grads, state, params, comm, hp):
        return jax.tree.map(lambda v, g: one(v, g, hp.lr), params, grads), state

    return Consensus(lambda params, comm: (), update, lambda comm, params: 0)


def masked(inner: Consensus, mask) -> Consensus:
    """``inner`` on the leaves ``mask`` selects (one bool per leaf), :func:`local` on the
    others. ``inner`` sees the selected leaves as a list (its state is theirs)."""

    def split(tree, on):
        leaves = jax.tree.leaves(tree)
        return [v for v, m in zip(leaves, on) if m]

    def init(params, comm):
        return inner.init(split(params, leaf_mask("mask", mask, params)), comm)

    def update(grads, state, params, comm, hp):
        on = leaf_mask("mask", mask, params)
        sel, state = inner.update(split(grads, on), state, split(params, on), comm, hp)
        it = iter(sel)
        leaves, treedef = jax.tree.flatten(params)
        new = [next(it) if m else _plain(v, g, hp.lr)
               for v, g, m in zip(leaves, jax.tree.leaves(grads), on)]
        return jax.tree.unflatten(treedef, new), state

    def messages(comm, params):
        return inner.messages(comm, split(params, leaf_mask("mask", mask, params)))

    return Consensus(init, update, messages)


TRANSFORMS: dict[str, Callable[[], Consensus]] = {
    "primal_dual": primal_dual, "primal_dual_nocache": lambda: primal_dual(cache=False),
    "gossip_cta": lambda: gossip("cta"), "gossip_atc": lambda: gossip("atc"),
    "repeated_gossip": lambda: gossip("atc", rounds=3), "tracking": tracking, "local": local,
    "central": central, "masked_gossip": lambda: masked(gossip("atc"), (True, False)),
}
"""Constructors of the rules by name (the contract test runs every entry)."""
