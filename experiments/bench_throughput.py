"""Throughput of quadratic SLAM: slamjax against the ways the same recursion is usually written.

Workload (paper eq. (5), both levels with consensus): the quadratic bilevel problem of
``slamjax.problems.quadratic`` with a Hessian shared by all agents, m = 1 LL task,
d = d_x = d_y ∈ {10, 100}, the eq.-(23) hypergradient by CG with K = 10 iterations, exact
gradients, α = β = 30, ρ = γ = 1 (inside the stability bound for both graphs), float32.

Graphs. Erdős–Rényi with mean degree 4 is disconnected with high probability for large n
(its connectivity threshold is mean degree ln n ≈ 14 at n = 10⁶), and with p = 2 ln n / n the
mean degree grows to 28 at n = 10⁶, a different workload at every n. The closest meaningful
connected setting is a **Newman–Watts small-world graph of mean degree ≈ 4.4** (ring lattice
k = 4 plus a random shortcut per lattice edge with probability 0.1; connected by
construction, random long-range edges like ER), label ``sw``; and the **ring** (stencil).

Implementations, side by side in one process:

* ``slamjax``       — the library's public path: ``slamjax.slam(problem, graph, config)``
  stepped by ``slamjax.iterate`` (``lax.scan``) inside one ``jit`` (sparse ``segment_sum``
  mixing for ``sw``, stencil for the ring), the state donated;
* ``slamjax_block`` — the same with ``SLAMConfig(agent_block=B)`` (per-agent work in blocks of
  B agents, ``lax.map``); B = 2¹⁷/d rounded to a power of two;
* ``slamjax_dense`` — slamjax with a dense n×n Laplacian (n ≤ 4096);
* ``numpy_batched`` — the strong peer: the whole recursion on stacked (n, d) arrays in NumPy
  (BLAS GEMMs), ``scipy.sparse`` CSR Laplacian, L·x carried like slamjax does;
* ``numpy_loop``    — how published code is written: a Python loop over agents, each doing
  its own NumPy gradient, CG solve and neighbour sum (a few steps only at large n);
* ``torch_loop``    — the same per-agent loop in PyTorch (CPU), if torch is installed.

Reported per (graph, d, n, implementation): agent-steps/s (= n × steps/s; best of repeats),
compile time (``lower().compile()`` wall time; the first call pays exactly this, no cache),
XLA buffer memory (``compiled.memory_analysis()``: arguments + outputs + temporaries − aliased)
and the process peak RSS (Linux VmHWM, reset through ``/proc/self/clear_refs`` before each
implementation is prepared; it includes the Python + JAX runtime and the implementations of the
same n prepared before it) together with ``rss_increase_MiB``, the rise of RSS while this one
was prepared and run (its own footprint). Timing: all implementations of one (graph, d, n) are
compiled and warmed up, then timed round-robin ``--repeats`` times (best kept), so a shared,
noisy machine affects them alike; the per-agent loops are timed once.
Also measured in the same run: memory bandwidth (a 256 MiB array copy), peak fp32 GEMM flop/s
(2048² and the (n, d)·(d, d) shape of the workload), and from them the roofline at d = 100.
The multi-device section (skip it with ``--no-sharding``) re-runs the ring (halo exchange) and
sw (partitioned edges) at d = 10, n = 2²⁰ in a subprocess with 1, 2 and 4 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``, ``slamjax.sharding``). Forced host
devices share this machine's 2 physical cores, so ≈ 2× is the ceiling there.
**Kernel table** (``--table`` runs only this part and merges it into the JSON under
``kernel_table``, ``--no-table`` skips it): quadratic SLAM as above on the small world at
d ∈ {10, 100}, n ∈ {1024, 4096}, the problem written by a *user* as plain per-agent ``f`` and
``g`` through ``BilevelProblem`` (:func:`user_quadratic`), timed side by side in one process
per core count (``taskset -c 0`` for 1 core, then all cores): ``kernel`` — the same recursion
hand-written as one ``jit`` + ``lax.scan`` over stacked arrays with no library code
(:func:`kernel_program`); ``slamjax_autodiff`` (the user's f, g only: HVPs by autodiff),
``slamjax_user_products`` (plus the user's ``hvp_yy``/``cross_xy``), ``slamjax_builtin``
(:mod:`slamjax.problems.quadratic`), ``numpy_batched`` and ``numpy_loop``. Every compiled path
is checked to compute the kernel's iterates (``max_rel_diff_vs_kernel``); the targets
(≥ 0.9× kernel, ≥ 2×/3× batched NumPy at d = 10/100, ≥ 150×/50× the loop) are evaluated per
row. Figure: ``results/bench_throughput_table.png``.

``--rowmajor-hvp`` adds ``slamjax_rowmajor``: the same problem with einsums written
agent-row-major (see :func:`rowmajor_quadratic`).

Writes ``results/bench_throughput.json`` and the log-log plot ``results/bench_throughput.png``.

    python experiments/bench_throughput.py            # full run (~10–15 min on 2 cores)
    python experiments/bench_throughput.py --quick    # small sizes (~2 min)
    python experiments/bench_throughput.py --table    # only the kernel table (~6 min)
    slamjax bench [--quick] [...]                     # the same through the CLI

Thin wrapper: the code is :mod:`slamjax.tools.bench` (installed with the package, also
``slamjax bench``); outputs go to ``--out`` (default ``./results`` in the current directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

from slamjax.tools import bench as _tool  # noqa: E402
from slamjax.tools._runner import script_main  # noqa: E402
from slamjax.tools.bench import *  # noqa: E402,F401,F403  (its names, for bench_compile.py)


def main(argv=None) -> int:
    return script_main(_tool, "python experiments/bench_throughput.py", argv)


if __name__ == "__main__":
    sys.exit(main())
