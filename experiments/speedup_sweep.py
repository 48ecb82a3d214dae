"""Linear speed-up of SLAM in the number of agents (paper Theorem 1), measured with tuned steps
next to a centralized oracle.

Problem: the stochastic quadratic of ``slamjax.problems.quadratic`` (d_x = d_y = 5, m = 1, LL
Hessian shared by the agents, agent-specific linear terms, every gradient call perturbed by
per-agent Gaussian noise of std σ = 2); every agent starts from x = 1 (x̄⁰ is the same for
every n). The metric is Theorem 1's E‖∇F(1x̄)‖² (closed form), averaged over 8 seeds that are
vmapped lanes of one program.

Methods, for n = 1, 2, 4, …, 4096:

* **SLAM** on Erdős–Rényi (p = 2 ln n / n, seed 0; complete for n ≤ 5), 1/α = 1/β = η,
  γ = 1, ρ at half the stability bound (so the consensus gain per step is the same at every η);
* **centralized oracle**: D-SOBA on the complete graph, whose Metropolis W is exact averaging —
  every agent holds the network average and steps along the average of the n agents'
  stochastic directions: single-loop stochastic bilevel SGD (SOBA) with a batch of n
  minibatches, η_x = η_y = η_z = η;
* **SLAM on the complete graph** (the centralized control of SLAM itself; ``--methods`` adds
  it, not in the default run for time).

(a) Iterations to ε. Each method's step is tuned per n from ONE grid
η ∈ {0.00125, 0.0025, …, 0.32} (factors of 2) (all grid points × seeds in one program). A run has
"reached" ε at the first logged iteration t where the seed-mean ‖∇F(1x̄)‖², averaged over the
logs in [t/2, t], is ≤ ε — a running average with a window that scales with t, so one lucky
log does not count and short and long runs are judged alike. T_ε(n) = the smallest such iteration over the grid. The horizon is
T_n = max(512, 2^15 / n) (linear speed-up would need 2^15/n), logs every T_n/256 steps.
The fit of log T_ε against log n uses the n whose best step is *inside* the grid (noise-limited
regime); where the best step is the largest stable one the deterministic rate (transient) sets
T_ε and more agents cannot help — those points are shown, marked and not fitted.

(b) Stationary error at one fixed small step η = 0.01: the mean of ‖∇F(1x̄)‖² over the second
half of a 2048-step run (its own program: 8 seed lanes only), against n. Theory: ∝ σ²η/n while the noise of the averaged directions
dominates.

Samples are counted as drawn: two minibatches per agent and iteration for SLAM, and for the
oracle (SOBA evaluates g- and f-terms on independent minibatches as SLAM does).

Writes ``results/speedup_sweep.json`` and ``.png``.

    python experiments/speedup_sweep.py            # n = 1 … 4096 (≈ 10 min on 2 cores)
    python experiments/speedup_sweep.py --quick    # n = 1 … 64, 4 seeds (≈ 2 min)
    slamjax sweep [--quick] [...]                  # the same through the CLI

Thin wrapper: the code is :mod:`slamjax.tools.sweep` (installed with the package, also
``slamjax sweep``); outputs go to ``--out`` (default ``./results`` in the current directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

from slamjax.tools import sweep as _tool  # noqa: E402
from slamjax.tools._runner import script_main  # noqa: E402


def main(argv=None) -> int:
    return script_main(_tool, "python experiments/speedup_sweep.py", argv)


if __name__ == "__main__":
    sys.exit(main())
