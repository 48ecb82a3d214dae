"""Cost of differentiating a whole SLAM run: time and memory of the gradient vs the forward run.

Problem: homogeneous quadratic (``make_quadratic``), n agents, d_x = d_y = d, one LL task,
float32, on a connected small-world graph (mean degree ≈ 4.4, sparse ``segment_sum`` mixing);
SLAM with CG(10), 1/α = 0.05, 1/β = 0.1, γ = 1, ρ at half the stability bound. Loss:
``slamjax.diff.mean_f(problem)``, (1/n) Σ_i f_i(x_i, y_i) at the final iterate (O(n·d), so the
loss adds nothing to the cost). For each horizon T, four programs (all ``jax.jit``-compiled
ahead of time) of the algorithm ``sj.slam(problem, graph, config)``:

* ``forward``      — the loss only (``final_loss_fn(alg, T, loss)``);
* ``reverse``      — loss and ∂/∂(α, β, ρ, γ) by reverse mode, storing every step: memory O(T);
* ``reverse_ckpt`` — the same with ``adjoint=Checkpointed(every=round(√T))``: memory O(√T),
  one extra forward pass;
* ``forward_mode`` — the same four derivatives with ``adjoint=Forward()`` (4 vmapped JVPs):
  memory O(1) in T.

All three gradient modes go through ``slamjax.diff.value_and_grad_run``'s compiled function
(``adjoint=Reverse()``, ``Checkpointed(every=c)``, ``Forward()``).

Memory is reported two ways:

* ``xla_temp_MB`` — ``jitted.lower(...).compile().memory_analysis().temp_size_in_bytes``: the
  XLA buffer assignment's scratch memory for one call (exact, deterministic, excludes the
  arguments and outputs, which are the same for all modes);
* ``rss_run_MB`` — the measured increase of the process's peak resident set size while the
  compiled program runs: each configuration runs in a fresh subprocess, the kernel's
  high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` after compilation, and the
  number is VmHWM after the calls minus VmRSS before them (compiler memory is not counted).

Times are wall-clock seconds per call, the minimum over 2–5 repeats (the 2-core CPU is shared
with other jobs: the load average is recorded in the JSON; treat times as ±30%). Writes
``results/bench_grad.json`` and ``results/bench_grad.png`` (``--out DIR``/``--name``, or a
``--out X.json``: the figure goes next to it).

    python experiments/bench_grad.py            # n=256, d=10, T = 100 … 10000 (~6–10 min)
    python experiments/bench_grad.py --quick --out /tmp/bench_grad.json   # n=64, T = 100, 1000

Thin wrapper: the code is :mod:`slamjax.tools.bench_grad` (installed with the package, also
``slamjax bench-grad``); outputs go to ``--out`` (default ``./results`` in the current directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

from slamjax.tools import bench_grad as _tool  # noqa: E402
from slamjax.tools._runner import script_main  # noqa: E402


def main(argv=None) -> int:
    return script_main(_tool, "python experiments/bench_grad.py", argv)


if __name__ == "__main__":
    sys.exit(main())
