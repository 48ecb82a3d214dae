"""Will a run fit in memory? An estimate of the peak memory of ``slamjax run`` (the quadratic
problem of :mod:`slamjax.problems.quadratic` on a graph of :mod:`slamjax.graphs`), checked
against the memory available before anything is allocated.

The estimate adds up (bytes; f = 4 in float32, 8 in float64; v = d_x + m·d_y numbers per
agent; M = m·d_y·(d_y + d_x) the numbers of one agent's LL Hessian and cross term):

* the Python + JAX runtime and the compiled programs: 450 MiB;
* per agent: f·(7·v + 0.85·M) + 8·(2m·d_y + d_x) + 300 — the state, its copies and one
  step's temporaries, the closed-form metrics (which broadcast the shared Hessian to every
  agent), and the float64 data drawn on the host; with agent-specific Hessians another
  (f + 8)·M; 6·f·v more per extra variant kept;
* per edge: 130 to build the graph (canonical edge list, connectivity check, both
  directions), 24 more where λ_max comes from Lanczos, and 4·f·v for one step's neighbour
  gathers in sparse mixing; the all-pairs draw of a small Erdős–Rényi graph (12.5·n²) or a
  complete graph's pair list (9·n²); a dense Laplacian 12·n²; an exact λ_max (n ≤ 2048)
  32·n².

The coefficients were fitted to the peak RSS of ``slamjax run --steps 20 --variant slam`` on a
2-core CPU (ring n = 10⁵, 10⁶ and 3·10⁵ at d = 5, 10, 20, float64, agent-specific Hessians;
small world n = 3·10⁵, 10⁶; Erdős–Rényi n = 10⁵, 3·10⁵; complete n = 10⁶ with the O(n)
product, n = 4096 dense and n = 15000 with its edge list): the estimate was 9–48 % above the
measured peak in every case (``tests/test_cli.py`` keeps the table).

:func:`estimate_run_bytes` (the estimate and its parts), :func:`available_bytes`,
:func:`largest_n` and :func:`check_run_fits` (a ``ValueError`` naming the estimate, the
available memory and the largest n that fits).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

DENSE_MAX_N = 4096  # = slamjax.comm.DENSE_MAX_N (not imported: this module imports no JAX)

__all__ = ["MemoryEstimate", "BASE_BYTES", "edge_count", "resolved_mixing",
           "estimate_run_bytes", "available_bytes", "largest_n", "format_bytes",
           "check_run_fits"]

BASE_BYTES = 450 * 2**20
"""The Python + JAX runtime and compiled programs of a run (measured: 417 MiB at n = 8)."""
_CLOSED_FORM_LAM = ("ring", "torus", "star", "complete")
_COMPLETE_ON_THE_FLY = 20000  # graphs.complete() keeps no edge list above this n


class MemoryEstimate(NamedTuple):
    """``total`` bytes and the ``parts`` it adds up (``runtime``, ``graph``, ``state``,
    ``step``, ``data``), with the ``edges`` and the resolved ``mixing`` it assumed."""

    total: int
    parts: dict
    edges: int
    mixing: str


def edge_count(kind: str, n: int, er_p: float | None = None, mixing: str = "auto") -> int:
    """The number of undirected edges :func:`slamjax.graphs.make_graph` builds (expected
    value for the random graphs); 0 for a complete graph handled without an edge list."""
    n = int(n)
    if n < 2:
        return 0
    if kind in ("ring",):
        return n if n >= 3 else 1
    if kind in ("path", "star"):
        return n - 1
    if kind == "torus":
        return 2 * n
    if kind in ("small_world", "small-world"):
        return int(math.ceil(2 * n * 1.1))
    if kind == "complete":
        if n > _COMPLETE_ON_THE_FLY and mixing in ("auto", "complete"):
            return 0
        return n * (n - 1) // 2
    p = er_p if er_p is not None else (min(1.0, 2.0 * math.log(n) / n) if n > 2 else 1.0)
    return int(math.ceil(p * n * (n - 1) / 2))


def resolved_mixing(kind: str, n: int, mixing: str = "auto") -> str:
    """What ``mixing="auto"`` becomes (as :func:`slamjax.graphs.with_mixing` picks it)."""
    if mixing != "auto":
        return mixing
    if (kind == "ring" and n >= 3) or kind == "torus":
        return "stencil"
    return "complete" if kind == "complete" else "sparse"


def _graph_bytes(kind, n, edges, mixing, er_p):
    b = 130 * edges
    if kind not in _CLOSED_FORM_LAM:
        b += 32 * n * n if n <= 2048 else 24 * edges + 200 * n
    if kind in ("erdos_renyi", "er", "erdos-renyi") and n <= 4096 and er_p != 1.0:
        b += int(12.5 * n * n)  # every pair's coin is drawn
    if kind == "complete" and edges:
        b += 9 * n * n  # the n×n mask and pair list of np.triu_indices
    if mixing == "dense":
        b += 12 * n * n
    return b


def estimate_run_bytes(n: int, *, graph: str = "erdos_renyi", mixing: str = "auto",
                       dx: int = 10, dy: int = 10, m: int = 2, x64: bool = False,
                       heterogeneous_hessian: bool = False, er_p: float | None = None,
                       variants: int = 3) -> MemoryEstimate:
    """Peak memory of ``slamjax run`` with these options (the module docstring gives the
    model): ``n`` agents on the graph ``graph`` (``er_p``: Erdős–Rényi edge probability) in
    the mixing mode ``mixing``, dimensions ``dx``, ``dy``, ``m``, float64 if ``x64``,
    agent-specific LL Hessians if ``heterogeneous_hessian``, ``variants`` SLAM variants."""
    n = int(n)
    f = 8 if x64 else 4
    v = dx + m * dy
    M = m * dy * (dy + dx)
    mix = resolved_mixing(graph, n, mixing)
    edges = edge_count(graph, n, er_p, mixing)
    parts = {"runtime": BASE_BYTES,
             "graph": _graph_bytes(graph, n, edges, mix, er_p),
             "state": n * f * 6 * v * max(1, variants),
             "step": n * (f * (v + 0.85 * M) + 300)
             + (4 * f * v * edges if mix == "sparse" else 0),
             "data": n * 8 * (2 * m * dy + dx)
             + (n * (f + 8) * M if heterogeneous_hessian else 0)}
    parts = {k: int(val) for k, val in parts.items()}
    return MemoryEstimate(sum(parts.values()), parts, edges, mix)


def available_bytes() -> int | None:
    """Memory available to a new run: ``MemAvailable`` of ``/proc/meminfo``, else the
    physical memory (``os.sysconf``); None if neither can be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def largest_n(budget: int, n_max: int, **options) -> int:
    """The largest n ≤ ``n_max`` whose :func:`estimate_run_bytes` (with ``options``) is
    within ``budget`` bytes (0 if even n = 1 is not)."""
    fits = lambda k: estimate_run_bytes(k, **options).total <= budget  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, int(n_max)
    while lo < hi:  # the estimate grows with n
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def format_bytes(b: float) -> str:
    """``b`` bytes as a short human-readable string (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(b) < 1024 or unit == "PiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} PiB"


def check_run_fits(n: int, *, available: int | None = None, **options) -> MemoryEstimate:
    """The estimate of a run of ``n`` agents (``options``: as :func:`estimate_run_bytes`),
    or a ``ValueError`` if it exceeds ``available`` bytes (default :func:`available_bytes`)
    that names the estimate, its largest parts, the memory available and the largest n
    that fits."""
    est = estimate_run_bytes(n, **options)
    avail = available_bytes() if available is None else available
    if avail is None or est.total <= avail:
        return est
    top = sorted(((v, k) for k, v in est.parts.items() if k != "runtime"), reverse=True)[:2]
    what = ", ".join(f"{k} {format_bytes(v)}" for v, k in top)
    fit = largest_n(avail, n, **options)
    graph, mixing = options.get("graph", "erdos_renyi"), options.get("mixing", "auto")
    hint = ""
    if est.mixing == "dense" and fit > DENSE_MAX_N:
        fit, hint = DENSE_MAX_N, " (the dense-mixing limit)"
    elif est.mixing == "dense" or (graph == "complete" and est.edges):
        hint = (" (a complete graph with --mixing auto uses the O(n) product and keeps no "
                "edge list)" if graph == "complete" else " (use --mixing sparse or auto)")
    raise ValueError(
        f"--n {n} --graph {graph} --mixing {mixing} needs about {format_bytes(est.total)} "
        f"({what}; {est.edges:,} edges), more than the {format_bytes(avail)} available: "
        f"the largest n that fits is about {fit:,}{hint}; nothing was allocated")
