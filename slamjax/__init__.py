"""slamjax: decentralized bilevel optimization with SLAM (Lu et al., NeurIPS 2022) in JAX."""

from slamjax import diff, graphs
from slamjax.graphs import Graph, laplacian_matvec, make_graph
from slamjax.hypergrad import CG, Exact, Neumann, hypergradient, make_solver
from slamjax.metrics import consensus_error, evaluate
from slamjax.problem import BilevelProblem, ProblemData
from slamjax.run import RunResult, run, solve
from slamjax.slam import (VARIANTS, SLAMConfig, SLAMParams, SLAMState, StabilityWarning, init,
                          primal_dual_update,
                          scan_steps, stability_bound, step, validate)

__version__ = "0.1.0"

__all__ = [
    "BilevelProblem", "CG", "Exact", "Graph", "Neumann", "ProblemData", "RunResult",
    "SLAMConfig", "SLAMParams", "SLAMState", "StabilityWarning", "VARIANTS", "consensus_error",
    "diff", "evaluate", "graphs", "hypergradient", "init", "laplacian_matvec", "make_graph",
    "make_solver", "primal_dual_update", "run", "scan_steps", "solve", "stability_bound", "step", "validate",
]
