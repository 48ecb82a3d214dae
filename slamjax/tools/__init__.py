"""The tools behind the ``slamjax`` command, installed with the package.

Each tool is a module with a function API (argparse-free) and an ``add_arguments(parser)`` /
``main(args)`` pair used by both ``slamjax <command>`` and its thin ``experiments/`` wrapper:

* :mod:`slamjax.tools.sweep` — ``slamjax sweep``: linear speed-up of SLAM in the number of
  agents next to a centralized oracle (:func:`~slamjax.tools.sweep.speedup_sweep`);
* :mod:`slamjax.tools.tune` — ``slamjax tune``: ρ and α tuned by gradient through the solver
  (:func:`~slamjax.tools.tune.tune_by_gradient`);
* :mod:`slamjax.tools.bench` — ``slamjax bench``: throughput against NumPy, per-agent loops
  and a hand-written kernel (:func:`~slamjax.tools.bench.bench_throughput`);
* :mod:`slamjax.tools.bench_grad` — ``slamjax bench-grad``: the cost of differentiating a run
  (:func:`~slamjax.tools.bench_grad.bench_grad`);
* :mod:`slamjax.tools.memory` — the memory estimate that refuses runs which cannot fit;
* :mod:`slamjax.tools.reproduce` — ``slamjax reproduce <target>`` and ``slamjax bench-envs``,
  which run the ``experiments/`` scripts of a source checkout.

Outputs go to ``--out`` (default ``./results`` in the current directory) through the atomic
writers of :mod:`slamjax.io`.
"""
