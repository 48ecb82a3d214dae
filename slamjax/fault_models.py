"""Fault models of :func:`slamjax.faults.with_faults`: per-step delivery masks, stragglers,
time-varying edge sets, partitions, compressors, and connected components.

A fault model is a frozen dataclass with ``init(topo, n) -> state`` and
``apply(topo, n, key, t, state) -> StepFault`` (this step's delivery mask over the directed
edges of the base graph, a freeze mask over agents, the new state, extra ``info``). Shapes are
static: a time-varying graph is a mask over the edges of a fixed *superset* graph
(:func:`exponential_graph`, ``complete(n)``, or the base graph itself). Parameters that are
Python numbers are static; pass ``jnp`` arrays for ``p``/``q`` to vmap over them. Inactive
faults (p = 0, q = 0, bits ≥ 32) give the fault-free numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.comm import Graph
from slamjax.graphs import from_edges

__all__ = ["Topology", "topology", "exponential_graph", "quantize", "top_k", "StepFault",
           "LinkDrops", "Stragglers", "TimeVarying", "Partition", "Compress", "components",
           "dense_reference_laplacian"]


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


def topology(graph: Graph) -> Topology:
    """The :class:`Topology` of ``graph`` (host NumPy, once per wrapped algorithm)."""
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
# fault models: init(topo, n) -> state; apply(topo, n, key, t, state) -> StepFault
# ----------------------------------------------------------------------------------------
class StepFault(NamedTuple):
    """What a fault model does in one step: ``mask`` (2|E|,) delivery of the directed entries
    (``None``: all delivered), ``freeze`` (n,) agents that skip the step (``None``: none), its
    new ``state`` and extra ``info``."""

    mask: Any = None
    freeze: Any = None
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
        """The model's state for the base graph's :class:`Topology` and ``n`` agents."""
        if self.burst is None:
            return ()
        return jnp.zeros((self._links(topo),), bool)  # replaced by a stationary draw at t=0

    def apply(self, topo, n, key, t, state):
        """This step's :class:`StepFault` (``key``: this step's fault key, ``t``: the step)."""
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
        """The model's state for the base graph's :class:`Topology` and ``n`` agents."""
        return ()

    def apply(self, topo, n, key, t, state):
        """This step's :class:`StepFault` (``key``: this step's fault key, ``t``: the step)."""
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
        """The model's state for the base graph's :class:`Topology` and ``n`` agents."""
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
        """This step's :class:`StepFault` (``key``: this step's fault key, ``t``: the step)."""
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
        """The model's state for the base graph's :class:`Topology` and ``n`` agents."""
        return ()

    def apply(self, topo, n, key, t, state):
        """This step's :class:`StepFault` (``key``: this step's fault key, ``t``: the step)."""
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
        """The model's state for the base graph's :class:`Topology` and ``n`` agents."""
        return ()

    def apply(self, topo, n, key, t, state):
        """This step's :class:`StepFault` (``key``: this step's fault key, ``t``: the step)."""
        return StepFault()


# ----------------------------------------------------------------------------------------
# connected components (disconnection monitor) and a dense reference
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


def dense_reference_laplacian(graph: Graph, mask) -> np.ndarray:
    """Dense n×n L_t (host NumPy, tests): L_t[i, i] = Σ_e mask_e over entries with
    senders[e] = i, L_t[i, j] = −mask_e for the entry (i reads j)."""
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    m = np.asarray(mask, dtype=float)
    L = np.zeros((graph.n, graph.n))
    np.add.at(L, (s, r), -m)
    np.add.at(L, (s, s), m)
    return L
