"""Bad networks inside the compiled scan: fault models that wrap the communication object.

::

    faulty = with_faults(slamjax.slam(problem, graph, config),
                         LinkDrops(p=0.2), Compress("quantize", bits=4), Stragglers(q=0.05))
    result = slamjax.run(faulty, params, data, x0, y0, num_steps=500)   # any Algorithm

Design (issue 17). Every library algorithm is a ``jax.tree_util.Partial`` over its
communication object (a :class:`~slamjax.Graph`, see :mod:`slamjax.algorithm`), and touches
other agents only through ``comm.laplacian`` and ``comm.mix``. :func:`with_faults` therefore
needs no per-method code: at every step it

1. derives a fault key ``fold_in(key, FAULT_SALT)`` from the step key (the algorithm itself
   still receives the *unchanged* step key, so its own minibatches are those of the
   fault-free run);
2. asks each fault model for this step's delivery mask over the directed edges of the base
   graph (``mask[e] = 1``: the message ``receivers[e] → senders[e]`` arrives), a freeze mask
   over agents (stragglers) and an optional compressor;
3. builds a :class:`FaultyGraph` (a ``Graph`` subclass: same ``n``, edges and message counts)
   and substitutes it for the base graph in the algorithm's ``Partial``;
4. runs the algorithm's step, freezes the straggling agents' rows of the new state, and
   carries the fault state (Markov link states, time-varying masks, error-feedback memories,
   the disconnection monitor) next to the algorithm's state in a :class:`FaultState`.

Shapes are static: a time-varying graph is a mask over the edges of a fixed *superset* graph
(:func:`exponential_graph`, ``complete(n)``, or the base graph itself).

**A dropped message excludes its edge for that step** (stateless), rather than leaving the
receiver with its last received copy. Reasons: (i) with symmetric drops L_t = A_tᵀA_t is the
Laplacian of the surviving subgraph (symmetric PSD, 1ᵀL_t = 0), so SLAM's stability bound
ρλ_max(L_t)(1+2γ) < 4β still holds (λ_max(L_t) ≤ λ_max(L)) and the Metropolis W_t stays doubly
stochastic; (ii) stale copies would need a buffer per directed edge *and per exchanged
quantity* (|E|·(dim x + 2 dim y) numbers), and a stale neighbour value in L·v makes
1ᵀL̃v ≠ 0 even for symmetric losses; (iii) it is what a receiver does on a timeout.

How each fault enters SLAM (eq. (5a)/(5b) primal, (4b)/(4d) dual, u = Aᵀλ)
---------------------------------------------------------------------------------
SLAM exchanges each level once per step: after the update, agents send v⁺ and the product
L_t·v⁺ is used by the dual step (4b)/(4d) *and* cached for the next primal step (5)
(``SLAMState.lap_x``), so a fault at step t enters both through the same L_t. Summing (4) over
agents: Σ_i u_i⁺ = Σ_i u_i + (ρ/γ)·1ᵀL̃_t v⁺.

* **Symmetric link drops, node outages, time-varying graphs, partitions.** L̃_t = L_t is a
  Laplacian, 1ᵀL_t = 0: **Σ_i u_i = 0 is preserved exactly** (u stays in range(Aᵀ)). At a
  consensus point L_t v = 0 for every t, so the fixed point of (5) is unchanged:
  Σ_i h_i = −γΣ_i u_i = 0, no bias. Prediction: same final ‖∇F(x̄)‖² as fault-free, only a
  slower transient (the average rate λ₂(E[L_t]) = (1−p)λ₂(L) for i.i.d. drops).
* **One-directional loss** (``LinkDrops(symmetric=False)``): agent i uses
  (L̃v)_i = Σ_j m_{j→i}(v_i − v_j), a row Laplacian with L̃1 = 0 but 1ᵀL̃ ≠ 0, so
  Σu⁺ − Σu = (ρ/γ)Σ_{(j→i) lost}(v_j − v_i): **Σu drifts while the agents disagree** and stops
  at consensus (L̃·1x = 0). Prediction: with a deterministic oracle the run settles at a
  point with Σ_i h_i = −γΣu_∞ ≠ 0, a seed-dependent bias set by the transient; with a noisy
  oracle Σu keeps diffusing.
* **Compression** C(·) of the sent value (``own="exact"``: agent i keeps its exact v_i in its
  own term): Σ_i(L̃v)_i = Σ_i d_i(v_i − c_i). For an unbiased quantizer the increments are
  zero-mean, so **Σu performs a random walk** (std ∝ √t) and so does the stationarity error
  Σh = −γΣu: the error grows with t instead of settling. With **error feedback**
  (c_i = C(v_i + e_i), e_i ← v_i + e_i − c_i) the increments telescope,
  Σ_{s≤t}(v_s − c_s) = e_{t+1} − e_0, so Σu = (ρ/γ)Σ_i d_i(e_i − e_i,0) stays **bounded**.
  With ``own="sent"`` (agent i uses its own transmitted c_i, L̃v = L·c) 1ᵀL̃ = 0 again and
  Σu = 0 exactly, at the price of a noisier primal step. Top-k is biased; without error
  feedback its Σu increments Σd_i(v_i − topk(v_i)) have non-zero mean: a drift.
* **Stragglers** (``Stragglers(q, mode="update")``): a straggling agent neither computes nor
  communicates this step — its incident edges are excluded (symmetric) and all its state rows
  (x_i, y_i, u_i, cached L-products, …) keep their old values. Its own dual does not move and
  (L_t v)_i = 0, so Σu is preserved; no bias, a slower transient (``mode="sends"``: edges
  dropped, the update still made).

For the gossip peers (D-SOBA, D-SOBA-GT, DSGD-bilevel) a symmetric fault keeps W_t doubly
stochastic (Metropolis weights of the base graph on the surviving edges, or of the active
degrees for time-varying graphs), so the network average is preserved; one-directional loss
and compression break it. Gradient tracking's invariant Σs = Σd plays the role of Σu = 0:
it survives symmetric faults and stragglers and random-walks under compression.

Fault models (all per step, all keyed): :class:`LinkDrops` (i.i.d. or two-state Markov,
symmetric or one-directional), :class:`TimeVarying` (one-peer exponential, random matching,
fresh Erdős–Rényi draw every k steps), :class:`Compress` (b-bit stochastic quantization or
top-k, optional error feedback), :class:`Stragglers`, :class:`Partition` (a deterministic
window in which the graph splits into given groups).

The **disconnection monitor** (``with_faults(..., monitor=True)``, default) counts the
connected components of the step's delivered edges (:func:`components`: min-label hooking
with pointer jumping, O(log n) rounds in a ``while_loop``) and carries how many steps were
disconnected, the longest window and its first step, the largest component count and the
component labels of the last disconnected step; :func:`disconnection_report` turns them into
text. The run is not stopped.

Parameters that are Python numbers are static; pass ``jnp`` arrays for ``p``/``q`` to vmap
over them. Inactive faults (p = 0, q = 0, bits ≥ 32) give the fault-free numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.algorithm import Algorithm, Static, problem_of
from slamjax.graphs import Graph, from_edges, metropolis_weights

__all__ = ["FAULT_SALT", "FaultyGraph", "FaultState", "LinkDrops", "TimeVarying", "Compress",
           "Stragglers", "Partition", "with_faults", "components", "exponential_graph",
           "quantize", "top_k", "disconnection_report", "dense_reference_laplacian"]

#: constant folded into the step key for the faults' randomness (the algorithm's own key is
#: left as it is, so its minibatches do not change when faults are added)
FAULT_SALT = 0x17FA17


# ----------------------------------------------------------------------------------------
# topology of the base graph (host precomputed, traced arrays)
# ----------------------------------------------------------------------------------------
class Topology(NamedTuple):
    """Directed entries of the base graph: ``senders[e]`` reads ``receivers[e]``;
    ``edge_id[e]`` the undirected edge (0..|E|−1) both directions share; ``hop[k]``
    the ring distance min(|i−j|, n−|i−j|) of undirected edge k."""

    senders: Any
    receivers: Any
    edge_id: Any
    hop: Any


def _topology(graph: Graph) -> Topology:
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    if s.size == 0 and graph.num_edges > 0:
        raise ValueError("with_faults needs the graph's edge list (the O(n) complete graph "
                         "above n = 20000 has none)")
    lo, hi = np.minimum(s, r), np.maximum(s, r)
    und, eid = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    d = (und[:, 1] - und[:, 0]) if len(und) else np.zeros(0, np.int64)
    hop = np.minimum(d, graph.n - d)
    return Topology(jnp.asarray(s, jnp.int32), jnp.asarray(r, jnp.int32),
                    jnp.asarray(eid.reshape(-1), jnp.int32), jnp.asarray(hop, jnp.int32))


def exponential_graph(n: int, *, mixing: str = "auto") -> Graph:
    """The static exponential graph: i ~ i ± 2^k (k = 0..⌈log₂n⌉−1). The superset over which
    :class:`TimeVarying` ``("one_peer_exp")`` activates one hop length per step."""
    n = int(n)
    ks = [2 ** k for k in range(max(1, math.ceil(math.log2(n))))]
    i = np.arange(n)
    edges = np.concatenate([np.stack([i, (i + h) % n], 1) for h in ks if h < n])
    return from_edges(edges, n, kind="exponential", mixing=mixing)


# ----------------------------------------------------------------------------------------
# compressors (per agent row, per leaf)
# ----------------------------------------------------------------------------------------
def quantize(key, v, bits: int):
    """b-bit unbiased stochastic quantization of each agent's row (agent axis first):
    c = scale·sign(v)·ξ/s with s = 2^(b−1) − 1 magnitude levels, scale = max|v_i| (sent as one
    extra float) and ξ = ⌊|v|s/scale⌋ + Bernoulli(fraction). E[c] = v (up to 2⁻¹⁷ of a level:
    the Bernoulli draw uses 16 random bits, see :func:`_dither`) and
    E‖c_i − v_i‖² ≤ dim·scale_i²/(4s²)."""
    s = 2.0 ** (bits - 1) - 1.0  # a traced ``bits`` works too (one program for a b-sweep)
    flat = v.reshape(v.shape[0], -1)
    scale = jnp.max(jnp.abs(flat), axis=1, keepdims=True)
    safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    r = jnp.abs(flat) / safe * s
    lo = jnp.floor(r)
    up = _dither(key, flat.shape, flat.dtype) < (r - lo)
    q = jnp.sign(flat) * (lo + up.astype(flat.dtype)) * (safe / s)
    return q.reshape(v.shape)


def _dither(key, shape, dtype):
    """Uniform numbers on the grid (j + ½)/2¹⁶, two per 32 random bits (random bits are most
    of the cost of quantizing; 16 bits make P(up) = fraction up to 2⁻¹⁷)."""
    size = int(np.prod(shape))
    bits = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([bits & 0xFFFF, bits >> 16])[:size]
    return ((halves.astype(dtype) + 0.5) * (1.0 / 65536)).reshape(shape)


def top_k(v, k: int):
    """Keep the k largest-magnitude entries of each agent's row (exactly k; ties by index)."""
    flat = v.reshape(v.shape[0], -1)
    d = flat.shape[1]
    k = min(int(k), d)
    a = jnp.abs(flat)
    if d <= 64:  # rank by pairwise comparison (ties: lower index first): ~10× lax.top_k on CPU
        idx = jnp.arange(d)
        ahead = (a[:, None, :] > a[:, :, None]) | (
            (a[:, None, :] == a[:, :, None]) & (idx[None, None, :] < idx[None, :, None]))
        keep = jnp.sum(ahead, axis=-1) < k
    else:
        _, top = lax.top_k(a, k)
        keep = jnp.zeros(flat.shape, bool).at[jnp.arange(flat.shape[0])[:, None], top].set(True)
    return jnp.where(keep, flat, jnp.zeros_like(flat)).reshape(v.shape)


# ----------------------------------------------------------------------------------------
# the per-step communication object
# ----------------------------------------------------------------------------------------
class _Session:
    """Error-feedback memories of one step, handed out in call order (one slot per exchanged
    leaf). ``memory=None`` records the slots' shapes (used once, at init)."""

    def __init__(self, memory):
        self.memory = memory
        self.out: list = []
        self.traces: list = []  # the trace of every exchanged value (inner-loop detection)

    def take(self, like):
        k = len(self.out)
        if self.memory is None:
            return jnp.zeros_like(like)
        if k >= len(self.memory) or self.memory[k].shape != like.shape:
            raise RuntimeError("error feedback: the step exchanged other leaves than at init "
                               "(data-dependent communication is not supported)")
        return self.memory[k]


@jax.tree_util.register_pytree_node_class
class FaultyGraph(Graph):
    """The base :class:`Graph` seen through one step's faults.

    ``mask`` (2|E| floats or ``None``): delivery of each directed entry (``senders[e]`` uses
    ``receivers[e]``'s message iff ``mask[e] = 1``). ``compress``: a :class:`Compress` or
    ``None``; ``ckey`` its key. ``active_weights``: Metropolis weights from the active degrees
    (time-varying graphs) instead of the base graph's. ``n``, edges, ``messages`` (the nominal
    count) and ``disagreement`` are the base graph's.
    """

    def __init__(self, base: Graph, mask, ckey, *, compress=None, active_weights=False,
                 session=None):
        super().__init__(base.senders, base.receivers, base.degree, base.dense_L, n=base.n,
                         num_edges=base.num_edges, kind=base.kind, shape=base.shape,
                         lam_max=base.lam_max, mixing=base.mixing)
        self.base = base
        self.mask = mask
        self.ckey = ckey
        self.compress = compress
        self.active_weights = bool(active_weights)
        self.session = session

    def tree_flatten(self):
        return (self.base, self.mask, self.ckey), (self.compress, self.active_weights,
                                                   self.session)

    @classmethod
    def tree_unflatten(cls, aux, children):
        base, mask, ckey = children
        compress, aw, session = aux
        return cls(base, mask, ckey, compress=compress, active_weights=aw, session=session)

    # -- what one exchange of a leaf delivers ---------------------------------------------
    def _exchange(self, v):
        """(own term, sent message) of every agent for one exchange of leaf ``v``."""
        c = self.compress
        if c is None or not c.active:
            return v, v
        slot = len(self.session.out)
        self.session.traces.append(getattr(v, "_trace", None))
        key = jax.random.fold_in(self.ckey, slot)
        w = v + self.session.take(v) if c.error_feedback else v
        sent = c(key, w)
        self.session.out.append(w - sent if c.error_feedback else None)
        return (sent if c.own == "sent" else v), sent

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
# fault models: init(topo, n) -> state; apply(topo, n, key, t, state) -> StepFault
# ----------------------------------------------------------------------------------------
class StepFault(NamedTuple):
    mask: Any = None      # (2|E|,) delivery of directed entries, or None (all delivered)
    freeze: Any = None    # (n,) bool: agents that skip this step, or None
    state: Any = ()
    info: dict = {}


def _static(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating))


def _ftype():
    return jnp.result_type(float)


@dataclasses.dataclass(frozen=True)
class LinkDrops:
    """Each link drops its messages with probability ``p`` per step.

    ``burst=None``: i.i.d. drops. ``burst=ℓ`` (≥ 1): two-state Markov (Gilbert–Elliott)
    links with stationary drop rate p and mean bad-run length ℓ (P(bad→good) = 1/ℓ,
    P(good→bad) = p/(ℓ(1−p)), needs ℓ ≥ p/(1−p)); states start from the stationary law.
    ``symmetric=True``: an undirected link fails in both directions (L_t a Laplacian);
    ``False``: each direction independently (one-directional loss)."""

    p: Any = 0.0
    burst: Any = None
    symmetric: bool = True

    def _links(self, topo):
        return topo.hop.shape[0] if self.symmetric else topo.senders.shape[0]

    def _to_dir(self, topo, up):
        return up[topo.edge_id] if self.symmetric else up

    def init(self, topo, n):
        if self.burst is None:
            return ()
        return jnp.zeros((self._links(topo),), bool)  # replaced by a stationary draw at t=0

    def apply(self, topo, n, key, t, state):
        if _static(self.p) and self.p == 0:
            return StepFault(state=state)
        shape = (self._links(topo),)
        if self.burst is None:
            down = jax.random.uniform(key, shape) < self.p
            new = ()
        else:
            b = 1.0 / jnp.asarray(self.burst, _ftype())
            a = self.p * b / (1.0 - self.p)
            k0, k1 = jax.random.split(key)
            u = jax.random.uniform(k1, shape)
            step = jnp.where(state, u >= b, u < a)  # bad stays bad w.p. 1−b; good→bad w.p. a
            fresh = jax.random.uniform(k0, shape) < self.p
            down = jnp.where(t == 0, fresh, step)
            new = down
        up = self._to_dir(topo, (~down).astype(_ftype()))
        return StepFault(mask=up, state=new)


@dataclasses.dataclass(frozen=True)
class Stragglers:
    """Each agent straggles with probability ``q`` per step. ``mode="update"``: it skips the
    whole step — its state rows keep their values and its links are down (it neither sends
    nor receives); ``mode="sends"``: only its links are down (it still updates)."""

    q: Any = 0.0
    mode: str = "update"

    def __post_init__(self):
        if self.mode not in ("update", "sends"):
            raise ValueError(f"Stragglers.mode must be 'update' or 'sends', got {self.mode!r}")

    def init(self, topo, n):
        return ()

    def apply(self, topo, n, key, t, state):
        if _static(self.q) and self.q == 0:
            return StepFault()
        slow = jax.random.uniform(key, (n,)) < self.q
        up = (~(slow[topo.senders] | slow[topo.receivers])).astype(_ftype())
        return StepFault(mask=up, freeze=slow if self.mode == "update" else None,
                         info={"stragglers": jnp.sum(slow).astype(jnp.float32)})


@dataclasses.dataclass(frozen=True)
class TimeVarying:
    """A time-varying edge set over the base graph (the superset), fresh every ``every`` steps.

    * ``"one_peer_exp"``: base = :func:`exponential_graph`; at step t only the edges of hop
      length 2^(⌊t/every⌋ mod ⌈log₂n⌉) are up (each agent talks to i ± 2^k);
    * ``"matching"``: a random matching of the base graph (one round of Luby's rule: every
      edge draws a priority and is kept iff it is the largest at both endpoints);
    * ``"erdos_renyi"``: every base edge is up with probability ``p`` (base = ``complete(n)``
      gives G(n, p)).
    Gossip weights are the Metropolis weights of the active degrees."""

    kind: str = "one_peer_exp"
    every: int = 1
    p: Any = 0.5

    def __post_init__(self):
        if self.kind not in ("one_peer_exp", "matching", "erdos_renyi"):
            raise ValueError(f"TimeVarying.kind must be one_peer_exp, matching or erdos_renyi, "
                             f"got {self.kind!r}")
        if int(self.every) < 1:
            raise ValueError(f"TimeVarying.every must be ≥ 1, got {self.every}")

    def init(self, topo, n):
        return jnp.ones((topo.hop.shape[0],), bool)

    def _draw(self, topo, n, key, t):
        E = topo.hop.shape[0]
        if self.kind == "one_peer_exp":
            L = max(1, math.ceil(math.log2(n)))
            k = (t // self.every) % L
            return topo.hop == jnp.left_shift(jnp.int32(1), k)
        if self.kind == "erdos_renyi":
            return jax.random.uniform(key, (E,)) < self.p
        pri = jax.random.uniform(key, (E,))
        dpri = pri[topo.edge_id]
        best = jax.ops.segment_max(dpri, topo.senders, num_segments=n)
        ok_dir = dpri >= best[topo.senders]
        # an undirected edge is kept iff it is the best at both endpoints
        both = jax.ops.segment_min(ok_dir.astype(jnp.int32), topo.edge_id, num_segments=E)
        return both > 0

    def apply(self, topo, n, key, t, state):
        if self.kind == "one_peer_exp":
            up = self._draw(topo, n, key, t)
            new = state
        else:
            up = jnp.where(t % self.every == 0, self._draw(topo, n, key, t), state)
            new = up
        return StepFault(mask=up[topo.edge_id].astype(_ftype()), state=new)


@dataclasses.dataclass(frozen=True)
class Partition:
    """A deterministic failure pattern: during steps ``start ≤ t < stop`` every edge between
    agents with different ``groups`` labels (length-n ints) is down."""

    start: int
    stop: int
    groups: Any

    def init(self, topo, n):
        return ()

    def apply(self, topo, n, key, t, state):
        g = jnp.asarray(self.groups, jnp.int32)
        cut = g[topo.senders] != g[topo.receivers]
        on = (t >= self.start) & (t < self.stop)
        return StepFault(mask=(~(cut & on)).astype(_ftype()))


@dataclasses.dataclass(frozen=True)
class Compress:
    """Compression of every exchanged message: ``"quantize"`` (``bits``-bit unbiased
    stochastic quantization, :func:`quantize`; ``bits ≥ 32`` means no compression) or
    ``"topk"`` (``k`` entries per agent row, :func:`top_k`). ``error_feedback``: each agent
    sends C(v + e) and keeps e ← v + e − C(v + e) per exchanged leaf. ``own``: ``"exact"``
    (agent i uses its exact v_i in its own term) or ``"sent"`` (it uses what it sent)."""

    kind: str = "quantize"
    bits: int = 32
    k: int | None = None
    error_feedback: bool = False
    own: str = "exact"

    def __post_init__(self):
        if self.kind not in ("quantize", "topk"):
            raise ValueError(f"Compress.kind must be 'quantize' or 'topk', got {self.kind!r}")
        if self.kind == "quantize" and _static(self.bits) and int(self.bits) < 2:
            raise ValueError(f"quantization needs bits ≥ 2 (one sign bit), got {self.bits}")
        if self.kind == "topk" and (self.k is None or int(self.k) < 1):
            raise ValueError(f"top-k needs k ≥ 1, got {self.k!r}")
        if self.own not in ("exact", "sent"):
            raise ValueError(f"Compress.own must be 'exact' or 'sent', got {self.own!r}")

    @property
    def active(self) -> bool:
        """Static: ``bits`` ≥ 32 (a Python int) is no compression; traced bits always
        quantize."""
        return self.kind == "topk" or not _static(self.bits) or int(self.bits) < 32

    def __call__(self, key, v):
        return quantize(key, v, self.bits) if self.kind == "quantize" else top_k(v, self.k)

    def init(self, topo, n):
        return ()

    def apply(self, topo, n, key, t, state):
        return StepFault()


# ----------------------------------------------------------------------------------------
# connected components (disconnection monitor)
# ----------------------------------------------------------------------------------------
def components(senders, receivers, active, n: int):
    """Component labels (the smallest agent index of each component) and their number, for
    the graph of the ``active`` directed entries taken as undirected edges. Min-label hooking
    with pointer jumping (FastSV-style) in a ``while_loop``: O(log n) rounds in practice."""
    idx = jnp.arange(n, dtype=jnp.int32)
    big = jnp.int32(n)

    def body(c):
        lab, _, it = c
        a = jnp.where(active, lab[receivers], big)
        b = jnp.where(active, lab[senders], big)
        mn = jnp.minimum(lab, jax.ops.segment_min(a, senders, num_segments=n))
        mn = jnp.minimum(mn, jax.ops.segment_min(b, receivers, num_segments=n))
        new = lab.at[lab].min(mn)          # hook the root of i to the smallest label seen
        new = jnp.minimum(new, mn)
        new = new[new]                      # shortcut
        return new, jnp.any(new != lab), it + 1

    lab, _, _ = lax.while_loop(lambda c: c[1] & (c[2] < 4 * n), body,
                               (idx, jnp.asarray(True), jnp.int32(0)))
    return lab, jnp.sum(lab == idx).astype(jnp.int32)


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
        return self.inner.x

    @property
    def y(self):
        return self.inner.y


class _AnyParams:
    """Stand-in params for the shape-only trace that finds the error-feedback slots."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return jnp.asarray(1.0, _ftype())


def _base_graph(step) -> Graph:
    graphs = [a for a in getattr(step, "args", ()) if isinstance(a, Graph)]
    if not graphs:
        raise TypeError("with_faults needs an algorithm built by slamjax (its functions are "
                        "jax.tree_util.Partial over the communication object, a Graph)")
    return graphs[0]


def _swap(fn, comm):
    """``fn`` (a Partial) with its Graph argument(s) replaced by ``comm``."""
    args = [comm if isinstance(a, Graph) else a for a in fn.args]
    return jax.tree_util.Partial(fn.func, *args, **fn.keywords)


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
    for f in faults:
        if not hasattr(f, "apply"):
            raise TypeError(f"with_faults: {f!r} is not a fault model")
    base = _base_graph(algorithm.step)
    topo = _topology(base)
    faults = tuple(faults)
    comp, aw = _config(faults)
    static = Static((problem_of(algorithm), bool(monitor)))
    P = jax.tree_util.Partial
    return Algorithm(
        init=P(_fault_init, static, algorithm.init, algorithm.step, topo, faults, params),
        step=P(_fault_step, static, algorithm.step, topo, faults),
        metrics=P(_fault_metrics, static, algorithm.metrics),
        check=None if algorithm.check is None else P(_fault_check, algorithm.check))


def _comm_for(base, topo, faults, key, t, fstates, memory):
    """This step's FaultyGraph, freeze mask, new fault states, info and EF session."""
    comp, aw = _config(faults)
    n = base.n
    mask, freeze, new, info = None, None, [], {}
    for i, (f, fs) in enumerate(zip(faults, fstates)):
        out = f.apply(topo, n, jax.random.fold_in(key, i), t, fs)
        new.append(out.state)
        info.update(out.info)
        if out.mask is not None:
            mask = out.mask if mask is None else mask * out.mask
        if out.freeze is not None:
            freeze = out.freeze if freeze is None else freeze | out.freeze
    session = _Session(memory) if comp is not None and comp.error_feedback else _Session(None)
    comm = FaultyGraph(base, mask, jax.random.fold_in(key, len(faults)), compress=comp,
                       active_weights=aw, session=session)
    return comm, freeze, tuple(new), info, session


def _fault_init(static, inner_init, inner_step, topo, faults, params, x0, y0, data=None):
    _, monitor = static.value
    inner = inner_init(x0, y0, data)
    base = _base_graph(inner_init) if getattr(inner_init, "args", None) else \
        _base_graph(inner_step)
    n = base.n
    fstates = tuple(f.init(topo, n) for f in faults)
    comp, _ = _config(faults)
    memory = ()
    if comp is not None and comp.error_feedback:
        memory = _ef_slots(inner_step, base, topo, faults, fstates, inner, params, data)
    return FaultState(inner, fstates, memory, jnp.zeros((), jnp.int32),
                      _monitor_init(n) if monitor else None)


def _ef_slots(inner_step, base, topo, faults, fstates, inner, params, data):
    """Zero memories for the leaves one step exchanges (found by a shape-only trace)."""
    p = _AnyParams() if params is None else params

    def probe(state, data):
        comm, _, _, _, session = _comm_for(base, topo, faults, jax.random.key(0),
                                           jnp.int32(0), fstates, None)
        top = getattr(jax.tree.leaves(state)[0], "_trace", None)
        _swap(inner_step, comm)(jax.random.key(0), state, p, data)
        if any(t is not top for t in session.traces):
            raise ValueError("error feedback needs every exchange at the top level of the "
                             "step; this algorithm exchanges inside an inner loop (e.g. "
                             "dsgd_bilevel's LL loop): use Compress(error_feedback=False)")
        return [o for o in session.out]

    shapes = jax.eval_shape(probe, inner, data)
    return tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)


def _freeze(new, old, freeze, n):
    def one(a, b):
        if jnp.ndim(a) >= 1 and a.shape[0] == n:
            return jnp.where(freeze.reshape((n,) + (1,) * (a.ndim - 1)), b, a)
        return a
    return jax.tree.map(one, new, old)


def _fault_step(static, inner_step, topo, faults, key, state: FaultState, params, data):
    _, monitor = static.value
    base = _base_graph(inner_step)
    n = base.n
    fkey = jax.random.fold_in(key, FAULT_SALT)
    comm, freeze, fstates, info, session = _comm_for(base, topo, faults, fkey, state.t,
                                                     state.faults, state.memory or None)
    inner, inner_info = _swap(inner_step, comm)(key, state.inner, params, data)
    memory = state.memory
    if memory:
        memory = tuple(session.out)
    if freeze is not None:
        inner = _freeze(inner, state.inner, freeze, n)
        if memory:  # a straggler sent nothing: its error memory does not move either
            memory = _freeze(memory, state.memory, freeze, n)
    info = {**inner_info, **info}
    mask = comm.mask
    info["delivered"] = (jnp.float32(1.0) if mask is None
                         else jnp.mean(mask).astype(jnp.float32))
    mon = state.monitor
    if monitor:
        active = jnp.ones(topo.senders.shape, bool) if mask is None else mask > 0
        labels, ncomp = components(topo.senders, topo.receivers, active, n)
        mon = _monitor_step(mon, state.t, labels, ncomp)
        info["components"] = ncomp.astype(jnp.float32)
    return FaultState(inner, fstates, memory, state.t + 1, mon), info


def _fault_metrics(static, inner_metrics, state: FaultState, data):
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


def dense_reference_laplacian(graph: Graph, mask) -> np.ndarray:
    """Dense n×n L_t (host NumPy, tests): L_t[i, i] = Σ_e mask_e over entries with
    senders[e] = i, L_t[i, j] = −mask_e for the entry (i reads j)."""
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    m = np.asarray(mask, dtype=float)
    L = np.zeros((graph.n, graph.n))
    np.add.at(L, (s, r), -m)
    np.add.at(L, (s, s), m)
    return L
