"""slamjax: decentralized bilevel optimization with SLAM (Lu et al., NeurIPS 2022) in JAX.

Data path: ``graph`` (the communication object) + ``problem`` → ``Algorithm(init, step)``
(:func:`slam`, :mod:`slamjax.baselines`) → :func:`run` / :func:`solve` / :mod:`slamjax.diff`.
"""

from slamjax import diff, graphs
from slamjax.caches import MemoryMapWarning, clear_caches
from slamjax.algorithm import REGISTRY, Algorithm, Static, evaluate, make_algorithm, register
from slamjax.graphs import Graph, laplacian_matvec, make_graph
from slamjax.hypergrad import CG, Exact, Neumann, hypergradient, make_solver
from slamjax.metrics import bilevel_metrics, consensus_error
from slamjax.problem import BilevelProblem, ProblemData
from slamjax.run import (CurvatureWarning, DivergenceWarning, RunResult, checked, iterate,
                         run, solve)
from slamjax.slam import (VARIANTS, SLAMConfig, SLAMParams, SLAMState, StabilityWarning, init,
                          primal_dual_update, scan_steps, slam, stability_bound, step, validate)
from slamjax import baselines  # noqa: E402  (registers the peers)

__version__ = "0.2.0"

__all__ = [
    "Algorithm", "BilevelProblem", "CG", "CurvatureWarning", "DivergenceWarning", "Exact",
    "Graph", "MemoryMapWarning", "Neumann", "ProblemData", "REGISTRY", "RunResult",
    "SLAMConfig", "SLAMParams", "SLAMState", "StabilityWarning", "Static", "VARIANTS",
    "baselines", "bilevel_metrics", "checked", "clear_caches", "consensus_error", "diff",
    "evaluate", "graphs", "hypergradient", "init", "iterate", "laplacian_matvec",
    "make_algorithm", "make_graph", "make_solver", "primal_dual_update", "register", "run",
    "scan_steps", "slam", "solve", "stability_bound", "step", "validate",
]
