"""Bad networks inside the compiled scan: a wrapper that runs a kernel on a faulty network.

::

    faulty = with_faults(slamjax.slam(problem, graph, config),
                         LinkDrops(p=0.2), Compress("quantize", bits=4), Stragglers(q=0.05))
    result = slamjax.run(faulty, params, data, x0, y0, num_steps=500)   # any Algorithm

:func:`with_faults` only uses what the :class:`~slamjax.Algorithm` exposes — ``init``,
``kernel`` (its step with the communication object as an argument), ``comm``, ``metrics`` and
``check`` — and its state nests the algorithm's (optax ``apply_if_finite`` style). At every step
it

1. derives a fault key ``fold_in(key, FAULT_SALT)`` from the step key (the algorithm itself
   still receives the *unchanged* step key, so its own minibatches are those of the
   fault-free run);
2. asks each fault model (:mod:`slamjax.fault_models`) for this step's delivery mask over the
   directed edges of the base graph (``mask[e] = 1``: the message ``receivers[e] →
   senders[e]`` arrives), a freeze mask over agents (stragglers) and an optional compressor;
3. runs the kernel on a :class:`FaultyGraph` (a ``Graph`` subclass: same ``n``, edges and
   message counts) built from them and from the error-feedback memories in its own state;
4. freezes the straggling agents' rows of the new state, and carries its own explicit state
   next to the algorithm's in a :class:`FaultState`: the fault models' states (Markov link
   states, time-varying masks), the error-feedback memories (the new ones are collected from
   the kernel's exchanges in call order) and the disconnection monitor.

A dropped message excludes its edge for that step (stateless); every fault's effect on SLAM's
invariant Σ_i u_i = 0 and on gossip's doubly-stochastic W is worked out in ``docs/faults.md``.
The **disconnection monitor** (``monitor=True``, default) counts the connected components of
the step's delivered edges (:func:`slamjax.fault_models.components`) and carries how many steps
were disconnected, the longest window and its first step, the largest component count and the
component labels of the last disconnected step; :func:`disconnection_report` turns them into
text. The run is not stopped.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.algorithm import Algorithm, Static, from_kernel
from slamjax.comm import Graph, metropolis_weights
from slamjax.fault_models import (Compress, LinkDrops, Partition, StepFault, Stragglers,
                                  TimeVarying, Topology, components, dense_reference_laplacian,
                                  exponential_graph, quantize, top_k, topology)

__all__ = ["FAULT_SALT", "FaultyGraph", "FaultState", "LinkDrops", "TimeVarying", "Compress",
           "Stragglers", "Partition", "StepFault", "Topology", "with_faults", "components",
           "exponential_graph", "quantize", "top_k", "topology", "disconnection_report",
           "dense_reference_laplacian"]

FAULT_SALT = 0x17FA17
"""Constant folded into the step key for the faults' randomness (the algorithm's own key is
left as it is, so its minibatches do not change when faults are added)."""

#: the list the exchanges of one wrapped kernel call append their new error-feedback
#: memories to (set by the wrapper around that call; ``None`` outside it)
_RECORDER: contextvars.ContextVar = contextvars.ContextVar("slamjax_fault_exchanges",
                                                          default=None)


@contextlib.contextmanager
def _recording():
    out: list = []
    token = _RECORDER.set(out)
    try:
        yield out
    finally:
        _RECORDER.reset(token)


# ----------------------------------------------------------------------------------------
# the per-step communication object
# ----------------------------------------------------------------------------------------
@jax.tree_util.register_pytree_node_class
class FaultyGraph(Graph):
    """The base :class:`Graph` seen through one step's faults (the communication object the
    wrapped kernel receives).

    ``mask`` (2|E| floats or ``None``): delivery of each directed entry (``senders[e]`` uses
    ``receivers[e]``'s message iff ``mask[e] = 1``). ``compress``: a :class:`Compress` or
    ``None``; ``ckey`` its key. ``active_weights``: Metropolis weights from the active degrees
    (time-varying graphs) instead of the base graph's. ``n``, edges, ``messages`` (the nominal
    count) and ``disagreement`` are the base graph's. ``memory``: the error-feedback memories
    of this step's exchanges (one per exchanged leaf, in call order; ``None``: zeros); each
    exchange appends its new memory to the recorder :func:`with_faults` opens around the
    kernel (one slot per exchange, so the compression keys differ between exchanges).
    """

    def __init__(self, base: Graph, mask, ckey, *, compress=None, active_weights=False,
                 memory=None):
        super().__init__(base.senders, base.receivers, base.degree, base.dense_L, n=base.n,
                         num_edges=base.num_edges, kind=base.kind, shape=base.shape,
                         lam_max=base.lam_max, mixing=base.mixing)
        self.base = base
        self.mask = mask
        self.ckey = ckey
        self.compress = compress
        self.active_weights = bool(active_weights)
        self.memory = memory

    def tree_flatten(self):
        return (self.base, self.mask, self.ckey, self.memory), (self.compress,
                                                                self.active_weights)

    @classmethod
    def tree_unflatten(cls, aux, children):
        base, mask, ckey, memory = children
        compress, aw = aux
        return cls(base, mask, ckey, compress=compress, active_weights=aw, memory=memory)

    # -- what one exchange of a leaf delivers ---------------------------------------------
    def _exchange(self, v):
        """(own term, sent message) of every agent for one exchange of leaf ``v``."""
        c = self.compress
        if c is None or not c.active:
            return v, v
        rec = _RECORDER.get()
        slot = len(rec) if rec is not None else 0
        key = jax.random.fold_in(self.ckey, slot)
        w = v + self._memory(slot, v) if c.error_feedback else v
        sent = c(key, w)
        if rec is not None:
            rec.append(w - sent if c.error_feedback else None)
        return (sent if c.own == "sent" else v), sent

    def _memory(self, slot: int, like):
        """The error-feedback memory of exchange ``slot`` (zeros before the first step)."""
        if self.memory is None:
            return jnp.zeros_like(like)
        if slot >= len(self.memory) or self.memory[slot].shape != like.shape:
            raise RuntimeError("error feedback: the step exchanged other leaves than at init "
                               "(data-dependent communication is not supported)")
        return self.memory[slot]

    def _weights(self, metropolis: bool, mask):
        """Per directed entry: 1 (Laplacian) or the Metropolis weight, times the mask."""
        m = jnp.ones(self.senders.shape, jnp.result_type(float)) if mask is None else mask
        if not metropolis:
            return m
        if self.active_weights:
            deg = jax.ops.segment_sum(m, self.senders, num_segments=self.n,
                                      indices_are_sorted=True)
            w = 1.0 / (1.0 + jnp.maximum(deg[self.senders], deg[self.receivers]))
        else:
            w = metropolis_weights(self.base)
        return m * w.astype(m.dtype)

    def _direct(self, own, sent, weights):
        """Σ_e ω_e (own_i − sent_j), aggregated at i = senders[e]."""
        shape = (-1,) + (1,) * (own.ndim - 1)
        wt = weights.astype(own.dtype).reshape(shape)
        dsum = jax.ops.segment_sum(weights.astype(own.dtype), self.senders,
                                   num_segments=self.n, indices_are_sorted=True)
        nb = jax.ops.segment_sum(wt * sent[self.receivers], self.senders, num_segments=self.n,
                                 indices_are_sorted=True)
        return dsum.reshape((self.n,) + (1,) * (own.ndim - 1)) * own - nb

    def _dropped(self, v, metropolis: bool):
        """Σ over *dropped* entries of ω_e (v_i − v_j): subtracted from the base product, so
        that nothing dropped gives the base numbers bit for bit."""
        if self.mask is None:
            return jnp.zeros_like(v)
        om = self._weights(metropolis, 1.0 - self.mask)  # base weights (see _mix_leaf)
        shape = (-1,) + (1,) * (v.ndim - 1)
        diff = v[self.senders] - v[self.receivers]
        return jax.ops.segment_sum(om.astype(v.dtype).reshape(shape) * diff, self.senders,
                                   num_segments=self.n, indices_are_sorted=True)

    def _minus_dropped(self, base, v, metropolis: bool, sign=-1.0):
        """``base ∓ Σ_dropped``: the base product corrected for the lost messages."""
        if self.mask is None:
            return base
        corr = self._dropped(v, metropolis)
        return base - corr if sign < 0 else base + corr

    def _compressing(self) -> bool:
        return self.compress is not None and self.compress.active

    def _matvec_leaf(self, x):
        if self._compressing():
            own, sent = self._exchange(x)
            if self.mask is None:  # Σ_j (own_i − sent_j) = (L·sent)_i + d_i (own_i − sent_i)
                deg = self.degree.astype(x.dtype).reshape((self.n,) + (1,) * (x.ndim - 1))
                return self.base._matvec_leaf(sent) + deg * (own - sent)
            return self._direct(own, sent, self._weights(False, self.mask))
        return self._minus_dropped(self.base._matvec_leaf(x), x, False)

    def mix(self, tree, steps: int = 1):
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"mix: steps must be ≥ 0, got {steps}")
        for _ in range(steps):  # unrolled: every round is one exchange (own EF slot)
            tree = jax.tree.map(self._mix_leaf, tree)
        return tree

    def _mix_leaf(self, v):
        if self.n == 1:
            return v
        if self._compressing() or self.active_weights:
            own, sent = self._exchange(v)
            if self.mask is None and not self.active_weights:
                # v − Σ_j w_ij (own_i − sent_j) = W·sent + (v − sent) − (1 − W_ii)(own − sent)
                wii = 1.0 - jax.ops.segment_sum(metropolis_weights(self.base), self.senders,
                                                num_segments=self.n, indices_are_sorted=True)
                wii = wii.astype(v.dtype).reshape((self.n,) + (1,) * (v.ndim - 1))
                return self.base.mix(sent) + (v - sent) - (1.0 - wii) * (own - sent)
            return v - self._direct(own, sent, self._weights(True, self.mask))
        if self.mask is None:
            return self.base.mix(v)
        d = self.base.regular_degree
        if d is not None:  # the base computes v − Lv/(d+1): drop from the same product
            return v - self._minus_dropped(self.base._matvec_leaf(v), v, False) * \
                jnp.asarray(1.0 / (d + 1), v.dtype)
        return self._minus_dropped(self.base.mix(v), v, True, sign=1.0)


# ----------------------------------------------------------------------------------------
# disconnection monitor
# ----------------------------------------------------------------------------------------
class Monitor(NamedTuple):
    """Disconnection record: steps disconnected, current/longest window and its first step,
    first disconnected step, largest number of components, labels of the last disconnected
    step (−1 before any)."""

    disconnected_steps: Any
    current: Any
    longest: Any
    longest_start: Any
    first: Any
    max_components: Any
    last_labels: Any


def _monitor_init(n):
    z = jnp.zeros((), jnp.int32)
    return Monitor(z, z, z, z - 1, z - 1, z + 1, jnp.full((n,), -1, jnp.int32))


def _monitor_step(mon: Monitor, t, labels, ncomp):
    bad = ncomp > 1
    cur = jnp.where(bad, mon.current + 1, 0)
    longer = cur > mon.longest
    return Monitor(
        disconnected_steps=mon.disconnected_steps + bad.astype(jnp.int32),
        current=cur,
        longest=jnp.where(longer, cur, mon.longest),
        longest_start=jnp.where(longer, t - cur + 1, mon.longest_start),
        first=jnp.where(bad & (mon.first < 0), t, mon.first),
        max_components=jnp.maximum(mon.max_components, ncomp),
        last_labels=jnp.where(bad, labels, mon.last_labels))


# ----------------------------------------------------------------------------------------
# the wrapper
# ----------------------------------------------------------------------------------------
class FaultState(NamedTuple):
    """State of a faulty run: the algorithm's own ``inner`` state, one state per fault model,
    the error-feedback memories (one per exchanged leaf, in call order), the step counter and
    the disconnection :class:`Monitor` (``None`` when off)."""

    inner: Any
    faults: Any
    memory: Any
    t: Any
    monitor: Any = None

    @property
    def x(self):
        """The algorithm's UL iterate."""
        return self.inner.x

    @property
    def y(self):
        """The algorithm's LL iterate."""
        return self.inner.y


class _AnyParams:
    """Stand-in params for the shape-only trace that finds the error-feedback slots."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return jnp.asarray(1.0, jnp.result_type(float))


def _config(faults):
    comp = [f for f in faults if isinstance(f, Compress)]
    if len(comp) > 1:
        raise ValueError("with_faults: at most one Compress")
    c = comp[0] if comp and comp[0].active else None
    aw = any(isinstance(f, TimeVarying) for f in faults)
    return c, aw


def with_faults(algorithm: Algorithm, *faults, monitor: bool = True, params=None) -> Algorithm:
    """``algorithm`` run over a network with ``faults`` (see the module docstring).

    Returns an :class:`~slamjax.Algorithm` whose state is a :class:`FaultState`; its
    ``metrics`` are the algorithm's (measured on the base graph) plus the monitor's
    (``disconnected_steps``, ``longest_disconnection``, ``max_components``), and every step's
    ``info`` adds ``delivered`` (fraction of directed messages delivered), ``components``
    and, with stragglers, ``stragglers``. ``params``: an example of the algorithm's params,
    only used to find the error-feedback slots (default: a stand-in whose every field is 1).
    """
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"with_faults: expected a slamjax.Algorithm, got "
                        f"{type(algorithm).__name__}")
    if algorithm.kernel is None or not isinstance(algorithm.comm, Graph):
        raise TypeError("with_faults needs an algorithm built from a kernel on a Graph "
                        "(slamjax.from_kernel(init, kernel, comm, ...): kernel(key, state, "
                        "params, data, comm)), so that it can pass each step's faulty "
                        "communication object; a closure-based step cannot be rewired")
    for f in faults:
        if not hasattr(f, "apply"):
            raise TypeError(f"with_faults: {f!r} is not a fault model")
    faults = tuple(faults)
    _config(faults)
    topo = topology(algorithm.comm)
    P = jax.tree_util.Partial
    st = Static(bool(monitor))
    return from_kernel(
        P(_fault_init, st, algorithm.init, algorithm.kernel, algorithm.comm, topo, faults,
          params),
        P(_fault_kernel, st, algorithm.kernel, topo, faults), algorithm.comm,
        metrics=P(_fault_metrics, algorithm.metrics),
        check=None if algorithm.check is None else P(_fault_check, algorithm.check),
        problem=algorithm.problem)


def _comm_for(base, topo, faults, key, t, fstates, memory):
    """This step's FaultyGraph, freeze mask, new fault states and info."""
    comp, aw = _config(faults)
    mask, freeze, new, info = None, None, [], {}
    for i, (f, fs) in enumerate(zip(faults, fstates)):
        out = f.apply(topo, base.n, jax.random.fold_in(key, i), t, fs)
        new.append(out.state)
        info.update(out.info)
        if out.mask is not None:
            mask = out.mask if mask is None else mask * out.mask
        if out.freeze is not None:
            freeze = out.freeze if freeze is None else freeze | out.freeze
    comm = FaultyGraph(base, mask, jax.random.fold_in(key, len(faults)), compress=comp,
                       active_weights=aw, memory=memory)
    return comm, freeze, tuple(new), info


def _fault_init(static, inner_init, kernel, base, topo, faults, params, x0, y0, data=None):
    inner = inner_init(x0, y0, data)
    fstates = tuple(f.init(topo, base.n) for f in faults)
    comp, _ = _config(faults)
    memory = ()
    if comp is not None and comp.error_feedback:
        memory = _ef_slots(kernel, base, topo, faults, fstates, inner, params, data)
    return FaultState(inner, fstates, memory, jnp.zeros((), jnp.int32),
                      _monitor_init(base.n) if static.value else None)


def _ef_slots(kernel, base, topo, faults, fstates, inner, params, data):
    """Zero memories for the leaves one step exchanges (found by a shape-only trace)."""
    p = _AnyParams() if params is None else params

    def probe(state, data):
        comm = _comm_for(base, topo, faults, jax.random.key(0), jnp.int32(0), fstates, None)[0]
        with _recording() as rec:
            kernel(jax.random.key(0), state, p, data, comm)
        return list(rec)

    shapes = jax.eval_shape(probe, inner, data)
    # an exchange inside a loop body is traced once but runs every iteration, and its memory
    # cannot leave the loop: with the loops unrolled (disable_jit) it would be recorded more
    # often. (A loop whose trip count is not static cannot be unrolled: not checked.)
    try:
        with jax.disable_jit():
            unrolled = jax.eval_shape(probe, inner, data)
    except Exception:  # noqa: BLE001 — e.g. a while_loop on traced values
        unrolled = shapes
    if len(unrolled) != len(shapes):
        raise ValueError("error feedback needs every exchange at the top level of the step; "
                         "this algorithm exchanges inside an inner loop (e.g. dsgd_bilevel's "
                         "LL loop): use Compress(error_feedback=False)")
    return tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)


def _freeze(new, old, freeze, n):
    def one(a, b):
        if jnp.ndim(a) >= 1 and a.shape[0] == n:
            return jnp.where(freeze.reshape((n,) + (1,) * (a.ndim - 1)), b, a)
        return a
    return jax.tree.map(one, new, old)


def _fault_kernel(static, kernel, topo, faults, key, state: FaultState, params, data, base):
    n = base.n
    fkey = jax.random.fold_in(key, FAULT_SALT)
    comm, freeze, fstates, info = _comm_for(base, topo, faults, fkey, state.t, state.faults,
                                            state.memory or None)
    with _recording() as rec:
        inner, inner_info = kernel(key, state.inner, params, data, comm)
    memory = tuple(rec) if state.memory else state.memory
    if freeze is not None:
        inner = _freeze(inner, state.inner, freeze, n)
        if memory:  # a straggler sent nothing: its error memory does not move either
            memory = _freeze(memory, state.memory, freeze, n)
    info = {**inner_info, **info}
    mask = comm.mask
    info["delivered"] = (jnp.float32(1.0) if mask is None
                         else jnp.mean(mask).astype(jnp.float32))
    mon = state.monitor
    if static.value:
        active = jnp.ones(topo.senders.shape, bool) if mask is None else mask > 0
        labels, ncomp = components(topo.senders, topo.receivers, active, n)
        mon = _monitor_step(mon, state.t, labels, ncomp)
        info["components"] = ncomp.astype(jnp.float32)
    return FaultState(inner, fstates, memory, state.t + 1, mon), info


def _fault_metrics(inner_metrics, state: FaultState, data):
    out = {} if inner_metrics is None else dict(inner_metrics(state.inner, data))
    mon = state.monitor
    if mon is not None:
        out.update(disconnected_steps=mon.disconnected_steps, longest_disconnection=mon.longest,
                   max_components=mon.max_components)
    return out


def _fault_check(inner_check, params, state, data):
    inner_check(params, state.inner if isinstance(state, FaultState) else state, data)


# ----------------------------------------------------------------------------------------
# host helpers
# ----------------------------------------------------------------------------------------
def disconnection_report(state: FaultState) -> dict:
    """What the monitor saw (host side, one unbatched state): steps disconnected, the
    longest window (first step, length), the largest component count and the components of
    the last disconnected step as lists of agents."""
    mon = jax.device_get(state.monitor)
    if mon is None:
        raise ValueError("the run had no monitor (with_faults(..., monitor=True))")
    labels = np.asarray(mon.last_labels)
    comps = []
    if labels.min() >= 0:
        for lab in np.unique(labels):
            comps.append(np.nonzero(labels == lab)[0].tolist())
    return {"disconnected_steps": int(mon.disconnected_steps),
            "first_disconnected_step": int(mon.first),
            "longest_window": {"start": int(mon.longest_start), "length": int(mon.longest)},
            "max_components": int(mon.max_components),
            "last_components": comps}
