"""Tune SLAM's penalty ρ and UL step 1/α by gradient descent through the solver.

The objective is what a user of a decentralized solver cares about after a fixed budget: the
excess upper-level loss of every agent's own model after T = 200 SLAM steps on a *stochastic*
quadratic problem (noisy gradient oracle, σ = 1),

    L(ρ, α) = E_{instance, noise} [ (1/n) Σ_i F(x_i^T) − F* ],

estimated on 4 training instances (data seeds) × 4 noise keys, vmapped. ``slamjax.diff``
differentiates the whole 200-step run of ``alg = sj.slam(problem, graph, config)``
(``final_loss_fn(alg, T, quadratic.ul_objective_loss(per_agent=True))``) with respect to
log ρ and log α, and Adam (optax; gradient clipping, cosine-decayed learning rate,
updates skipped if a loss is not finite) updates them. Then default and tuned values are
compared on held-out runs: 8 *new* problem instances × 4 *new* noise keys (no overlap with
training). Also drawn: the held-out loss as a function of ρ (a grid, forward runs only), to
show where the tuned ρ sits and how close it is to the stability bound.

Writes ``results/tune_by_gradient.json`` and ``.png`` (``--out DIR`` and ``--name`` set the
place; a ``--out`` ending in ``.json`` names the JSON file, the figure goes next to it).

    python experiments/tune_by_gradient.py           # ~1–2 min on 2 cores
    python experiments/tune_by_gradient.py --quick --out /tmp/tune.json   # fewer iterations

Thin wrapper: the code is :mod:`slamjax.tools.tune` (installed with the package, also
``slamjax tune``); outputs go to ``--out`` (default ``./results`` in the current directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

from slamjax.tools import tune as _tool  # noqa: E402
from slamjax.tools._runner import script_main  # noqa: E402


def main(argv=None) -> int:
    return script_main(_tool, "python experiments/tune_by_gradient.py", argv)


if __name__ == "__main__":
    sys.exit(main())
