"""slamjax: decentralized bilevel optimization with SLAM (Lu et al., NeurIPS 2022) in JAX.

Data path: ``graph`` (the communication object) + ``problem`` → ``Algorithm(init, step)``
(:func:`slam`, :mod:`slamjax.baselines`, built from kernels and the consensus transforms of
:mod:`slamjax.consensus`) → the pure loop (:func:`iterate`, :func:`solve`) → the host driver
(:func:`run`, with placements) → :class:`RunResult`; :mod:`slamjax.diff` differentiates a run.
"""

from slamjax import consensus, diff, graphs, placement, schedules
from slamjax.algorithm import (REGISTRY, Algorithm, Static, evaluate, from_kernel,
                               make_algorithm, register)
from slamjax.caches import MemoryMapWarning, clear_caches
from slamjax.checks import CurvatureWarning, checked
from slamjax.comm import Graph, laplacian_matvec
from slamjax.driver import DivergenceWarning, run
from slamjax.graphs import make_graph
from slamjax.hypergrad import hypergradient
from slamjax.loop import iterate, solve
from slamjax.metrics import bilevel_metrics, consensus_error
from slamjax.problem import BilevelProblem, ProblemData, per_agent
from slamjax.results import RunResult
from slamjax.slam import (VARIANTS, SLAMConfig, SLAMParams, SLAMState, StabilityWarning, init,
                          primal_dual_update, scan_steps, slam, stability_bound, step, validate)
from slamjax.solvers import CG, Exact, Neumann, make_solver
from slamjax import baselines  # noqa: E402  (registers the peers)

__version__ = "0.3.0"

__all__ = [
    "Algorithm", "BilevelProblem", "CG", "CurvatureWarning", "DivergenceWarning", "Exact",
    "Graph", "MemoryMapWarning", "Neumann", "ProblemData", "REGISTRY", "RunResult",
    "SLAMConfig", "SLAMParams", "SLAMState", "StabilityWarning", "Static", "VARIANTS",
    "baselines", "bilevel_metrics", "checked", "clear_caches", "consensus", "consensus_error",
    "diff", "evaluate", "from_kernel", "graphs", "hypergradient", "init", "iterate",
    "laplacian_matvec", "make_algorithm", "make_graph", "make_solver", "per_agent", "placement",
    "primal_dual_update", "register", "run", "scan_steps", "schedules", "slam", "solve",
    "stability_bound", "step", "validate",
]
