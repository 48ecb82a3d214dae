"""SLAM, SLAM-L and SLAM-U: one recursion, consensus masks per level and per leaf.

Per iteration r (paper eq. (5) with the duals stored as u = Aᵀλ, u_y = Aᵀω)::

    y ← y − (1/β)(h_g + γ u_y + ργ L y)     (5a)    h_g = ∇_y g(x^r, y^r)
    u_y ← u_y + (ρ/γ) L y                   (4b)    (Aᵀ of ω ← ω + (ρ/γ) A y^{r+1})
    x ← x − (1/α)(h_f + γ u_x + ργ L x)     (5b)    h_f = eq. (23) at (x^r, y^{r+1})
    u_x ← u_x + (ρ/γ) L x                   (4d)

A leaf without consensus takes the plain step ``v ← v − h/α`` (or ``/β``) and keeps u = 0:
SLAM-L (Alg. 2) is "no consensus on x", SLAM-U (Alg. 3) "no consensus on y", and a tuple of
booleans per leaf gives partial sharing (e.g. one shared actor layer, paper Fig. 2).

:func:`slam` returns the method as an :class:`~slamjax.Algorithm` (``init``/``step`` pair) on a
communication object (a :class:`~slamjax.Graph`); :func:`step` and :func:`scan_steps` are the
same step without building one.

Static configuration (:class:`SLAMConfig`: variant, solver, masks) is hashable; the numbers
(:class:`SLAMParams`: α, β, ρ, γ), the data, the state and the key are traced arrays, so
changing them never recompiles and all of them can be differentiated.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.algorithm import Algorithm, Static, from_kernel, params_class_error, register
from slamjax.consensus import ConsensusHP, PrimalDualState, leaf_mask, primal_dual
from slamjax.graphs import Graph
from slamjax.hypergrad import CG, hypergradient, lower_grad, step_plan
from slamjax.loop import iterate
from slamjax.metrics import bilevel_metrics
from slamjax.problem import (DATA_AXES, BilevelProblem, ProblemData, agent_slice,
                             check_agent_axis)

__all__ = ["VARIANTS", "SLAMConfig", "SLAMParams", "SLAMState", "slam", "init", "step",
           "scan_steps", "validate", "stability_bound", "StabilityWarning",
           "primal_dual_update"]

VARIANTS = {"slam": (True, True), "slam_l": (False, True), "slam_u": (True, False)}
"""Variant name -> (consensus on the UL variable x, consensus on the LL variable y)."""
_ALIASES = {"slam-l": "slam_l", "slaml": "slam_l", "slam-u": "slam_u", "slamu": "slam_u"}


class StabilityWarning(UserWarning):
    """Step sizes outside the linear stability bound of the consensus recursion."""


class SLAMParams(NamedTuple):
    """Traced hyperparameters of SLAM. **α and β are inverse step sizes**: the UL step is
    1/α and the LL step 1/β (the paper's notation; the peers' ``lr_x``/``lr_y`` are steps).
    ρ is the penalty and γ the scaling of the augmented Lagrangian (3). Any field may be a
    schedule (:mod:`slamjax.schedules`)."""

    alpha: Any
    beta: Any
    rho: Any
    gamma: Any = 1.0
    #: domain of every field, checked eagerly and under :func:`slamjax.checked`
    DOMAIN = "> 0"

    @classmethod
    def create(cls, alpha, beta, rho, gamma=1.0, dtype=None) -> "SLAMParams":
        """SLAMParams from numbers (or schedules).

        Args:
          alpha: inverse UL step (the UL step is 1/alpha), > 0.
          beta: inverse LL step (the LL step is 1/beta), > 0.
          rho: penalty ρ > 0; stable for ρ·λ_max(L)·(1 + 2γ) < 4·min(α, β).
          gamma: Lagrangian scaling γ > 0 (default 1).
          dtype: dtype of the arrays (default: float32, float64 with jax_enable_x64).
        """
        return cls(*(_number(v, dtype) for v in (alpha, beta, rho, gamma)))


class SLAMState(NamedTuple):
    """Iterate of SLAM: primal x, y (agent axis first), duals u_x = Aᵀλ, u_y = Aᵀω, step r,
    and the cache ``lap_x``/``lap_y`` = L·x, L·y (one entry per leaf, ``None`` for leaves
    without consensus): the dual step (4b)/(4d) computes L·v⁺ and the next primal step needs
    the same product, so it is carried (two Laplacian products per level and step, not four).
    ``None`` means "not computed yet" (:func:`init`); the first step fills it.
    ``hg_v``: with ``SLAMConfig(warm_start=True)``, each agent's last solution v of
    ∇²_yy g·v = ∇_y f (shape of y), the next step's starting point; ``None`` otherwise."""

    x: Any
    y: Any
    u_x: Any
    u_y: Any
    step: Any
    lap_x: Any = None
    lap_y: Any = None
    hg_v: Any = None


@dataclasses.dataclass(frozen=True)
class SLAMConfig:
    """Static configuration.

    ``variant``: ``"slam"`` | ``"slam_l"`` | ``"slam_u"``. ``consensus_x`` / ``consensus_y``
    override the variant's masks: a bool for the whole level or a tuple with one bool per leaf
    (in ``jax.tree.leaves`` order). ``solver``: :class:`CG`, :class:`Neumann` or :class:`Exact`.

    ``agent_block``: ``None`` (default) vmaps the per-agent work (h_g and the eq.-(23) solve)
    over all n agents at once; an integer B runs it in blocks of B agents
    (``lax.map(..., batch_size=B)``) so that the K solver iterations of one block stay in
    cache: same numbers up to round-off, less memory traffic and temporary memory for large
    n·d. The Laplacian products stay global.

    ``minibatches``: per agent and step with a stochastic oracle, ``2`` (default) draws one
    minibatch for the LL step (h_g) and an independent one for the hypergradient (h_f); ``1``
    uses the LL step's minibatch for both (half the samples; h_f is then correlated with the
    y-step it follows). The ``"minibatches"`` counter reports what was drawn.

    ``shared_operators``: ``True`` (default) lets the eq.-(23) solve materialise ∇²_yy g and
    ∇²_xy g once per step as dense matrices when they depend on ``data.shared`` only (decided
    from their jaxprs; see :mod:`slamjax.hypergrad`), so the K products are one row-major GEMM
    over all agents; ``False`` keeps per-agent products. Same numbers up to round-off.

    ``warm_start``: ``False`` (default) solves eq. (23) from v = 0 every step; ``True`` starts
    CG (or the Neumann series, applied to the residual) from the previous step's solution,
    carried in ``SLAMState.hg_v``. Between consecutive steps x and y move little, so fewer
    iterations reach the same accuracy. Derivatives are those of the exact solve (implicit
    rule), as without warm start.
    """

    variant: str = "slam"
    solver: Any = CG(10)
    consensus_x: Any = None
    consensus_y: Any = None
    agent_block: int | None = None
    minibatches: int = 2
    shared_operators: bool = True
    warm_start: bool = False

    def __post_init__(self):
        v = _ALIASES.get(self.variant.lower(), self.variant.lower())
        if v not in VARIANTS:
            raise ValueError(f"unknown SLAM variant {self.variant!r}; choose one of "
                             f"{tuple(VARIANTS)}")
        object.__setattr__(self, "variant", v)
        if not callable(getattr(self.solver, "solve", None)):
            raise ValueError(f"solver must be a linear solver such as CG(...), Neumann(...) or "
                             f"Exact() (an object with .solve), got {self.solver!r} (see "
                             "slamjax.make_solver)")
        if self.agent_block is not None:
            if isinstance(self.agent_block, bool) or int(self.agent_block) < 1:
                raise ValueError(f"agent_block must be None or an integer ≥ 1, got "
                                 f"{self.agent_block!r}")
            object.__setattr__(self, "agent_block", int(self.agent_block))
        if isinstance(self.minibatches, bool) or self.minibatches not in (1, 2):
            raise ValueError(f"minibatches must be 1 (one minibatch per agent and step, shared "
                             f"by h_g and h_f) or 2 (independent ones), got {self.minibatches!r}")
        object.__setattr__(self, "minibatches", int(self.minibatches))
        if not isinstance(self.shared_operators, (bool, np.bool_)):
            raise ValueError(f"shared_operators must be True or False, got "
                             f"{self.shared_operators!r}")
        object.__setattr__(self, "shared_operators", bool(self.shared_operators))
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise ValueError(f"warm_start must be True or False, got {self.warm_start!r}")
        object.__setattr__(self, "warm_start", bool(self.warm_start))
        for name in ("consensus_x", "consensus_y"):
            val = getattr(self, name)
            if isinstance(val, list):
                object.__setattr__(self, name, tuple(bool(b) for b in val))

    def masks(self, x, y) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """One bool per leaf of x and of y: consensus on that leaf."""
        cx, cy = VARIANTS[self.variant]
        return (leaf_mask("consensus_x", cx if self.consensus_x is None else self.consensus_x, x),
                leaf_mask("consensus_y", cy if self.consensus_y is None else self.consensus_y, y))

    def level_consensus(self, x, y) -> tuple[bool, bool]:
        """Whether some leaf of x (of y) is in consensus."""
        mx, my = self.masks(x, y)
        return any(mx), any(my)


def _number(v, dtype):
    return v if callable(v) else jnp.asarray(v, dtype=dtype)


# ----------------------------------------------------------------------------------------
def init(x0, y0) -> SLAMState:
    """Initial state without the Laplacian cache: λ¹ = ω¹ = 0 (Algorithm 1). The first step
    fills the cache; ``slam(...).init`` fills it at once (what the driver uses)."""
    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    return SLAMState(x=x0, y=y0, u_x=zeros(x0), u_y=zeros(y0), step=jnp.zeros((), jnp.int32))


def primal_dual_update(v, h, u, mask, graph, inv_step, rho, gamma):
    """One primal step (5a)/(5b) and the dual step (4b)/(4d) for every leaf of a level:
    :func:`slamjax.consensus.primal_dual` without the cache. Returns (v⁺, u⁺)."""
    v, st = primal_dual(mask, cache=False).update(h, PrimalDualState(u), v, graph,
                                                  ConsensusHP(inv_step, rho, gamma))
    return v, st.dual


def _with_laplacians(graph, config, state: SLAMState) -> SLAMState:
    """``state`` with its cache L·x, L·y filled (consensus leaves only), and with
    ``warm_start`` a zero starting point for the first hypergradient solve."""
    mx, my = config.masks(state.x, state.y)
    state = state._replace(lap_x=primal_dual(mx).init(state.x, graph).lap,
                           lap_y=primal_dual(my).init(state.y, graph).lap)
    if config.warm_start and state.hg_v is None:
        state = state._replace(hg_v=jax.tree.map(jnp.zeros_like, state.y))
    return state


def _per_agent(fn, block, n, x, y, data, batch):
    """``vmap(fn)`` over the agent axis (``data.shared`` unbatched), or, with ``block``, the
    same in blocks of ``block`` agents (``lax.map(..., batch_size=block)``)."""
    if block is None or block >= n:
        return jax.vmap(fn, in_axes=(0, 0, DATA_AXES, 0))(x, y, data, batch)
    shared = data.shared

    def one(args):
        xi, yi, ai, bi = args
        return fn(xi, yi, ProblemData(shared=shared, agents=ai), bi)

    return lax.map(one, (x, y, data.agents, batch), batch_size=int(block))


# ----------------------------------------------------------------------------------------
# the algorithm
# ----------------------------------------------------------------------------------------
def slam(problem: BilevelProblem, comm: Graph, config: SLAMConfig = SLAMConfig()) -> Algorithm:
    """SLAM (Alg. 1), SLAM-L (Alg. 2), SLAM-U (Alg. 3) or any per-leaf consensus mask, as an
    :class:`~slamjax.Algorithm` on the communication object ``comm``.

    ``init(x0, y0, data)`` → :class:`SLAMState` with zero duals and the Laplacian products of
    x0, y0; ``step(key, state, params, data)`` → (state, info) is eqs. (5a), (4b), (5b),
    (4d) with ``params`` a :class:`SLAMParams` (α, β are *inverse* step sizes); ``info``
    counts the scalars exchanged (one exchange of x⁺ and of y⁺ per step on the consensus
    leaves: the product L·v⁺ of the dual step is reused by the next primal step) and the
    per-agent minibatches drawn (two per agent and step with a stochastic oracle: one for h_g,
    one for h_f; one shared with ``config.minibatches=1``).

    **Heterogeneity bias.** The hypergradient is the local surrogate of eq. (23): each agent
    solves with its *own* ∇²_yy g_i and ∇²_xy g_i. When these differ across agents, SLAM's
    (and SLAM-L's) fixed point is not the optimum of problem (2); SLAM-U (no LL consensus) is
    unbiased. :func:`slamjax.baselines.bias_free_slam` removes the bias (one more consensus
    variable z ≈ (Σ_j ∇²_yy g_j)⁻¹ Σ_j ∇_y f_j).
    """
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be a slamjax.BilevelProblem, got {type(problem).__name__}")
    if not isinstance(comm, Graph):
        raise TypeError(f"comm must be a slamjax.Graph (communication object), got "
                        f"{type(comm).__name__}")
    if not isinstance(config, SLAMConfig):
        raise TypeError(f"config must be a slamjax.SLAMConfig, got {type(config).__name__}")
    st = Static((problem, config))
    P = jax.tree_util.Partial
    return from_kernel(P(_slam_init, st, comm), P(_slam_kernel, st), comm,
                       metrics=P(_slam_metrics, st, comm), check=P(_slam_check, st, comm),
                       problem=problem)


def _slam_init(static, graph, x0, y0, data=None) -> SLAMState:
    _, config = static.value
    check_agent_axis("x", x0, graph.n)  # clear errors before any product with the graph
    check_agent_axis("y", y0, graph.n)
    return _with_laplacians(graph, config, init(x0, y0))


def _hypergradients(problem, config, plan, n, x, y, data, batch, v0):
    """h_f of eq. (23) for every agent (and, with warm start, the solutions v)."""
    solver, block = config.solver, config.agent_block
    if v0 is None:
        return _per_agent(lambda xi, yi, d, b: hypergradient(problem, xi, yi, d, b, solver,
                                                             plan=plan),
                          block, n, x, y, data, batch), None
    return _per_agent(lambda xi, yv, d, b: hypergradient(problem, xi, yv[0], d, b, solver,
                                                         plan=plan, v0=yv[1],
                                                         return_solution=True),
                      block, n, x, (y, v0), data, batch)


def _slam_kernel(static, key, state: SLAMState, params: SLAMParams, data, comm):
    """One SLAM iteration, eqs. (5a), (4b), (5b), (4d), with this step's ``key`` on ``comm``."""
    problem, config = static.value
    if not all(hasattr(params, f) for f in SLAMParams._fields):
        raise params_class_error("slam", SLAMParams, params)
    n = comm.n
    mask_x, mask_y = config.masks(state.x, state.y)
    kg, kf = jax.random.split(key)
    vsample = jax.vmap(problem.sample_batch, in_axes=(0, DATA_AXES))
    batch_g = vsample(jax.random.split(kg, n), data)
    batch_f = batch_g if config.minibatches == 1 else vsample(jax.random.split(kf, n), data)
    one = ProblemData(shared=data.shared, agents=agent_slice(data.agents))
    plan = step_plan(problem, agent_slice(state.x), agent_slice(state.y), one,
                     agent_slice(batch_g), config.solver, n_agents=n,
                     enabled=config.shared_operators)

    h_g = _per_agent(lambda x, y, d, b: lower_grad(problem, x, y, d, b, plan=plan),
                     config.agent_block, n, state.x, state.y, data, batch_g)
    y, sy = primal_dual(mask_y).update(h_g, PrimalDualState(state.u_y, state.lap_y), state.y,
                                       comm, ConsensusHP(1.0 / params.beta, params.rho,
                                                         params.gamma))
    v0 = None
    if config.warm_start:
        v0 = state.hg_v if state.hg_v is not None else jax.tree.map(jnp.zeros_like, y)
    h_f, hg_v = _hypergradients(problem, config, plan, n, state.x, y, data, batch_f, v0)
    x, sx = primal_dual(mask_x).update(h_f, PrimalDualState(state.u_x, state.lap_x), state.x,
                                       comm, ConsensusHP(1.0 / params.alpha, params.rho,
                                                         params.gamma))
    sent = primal_dual(mask_x).messages(comm, x) + primal_dual(mask_y).messages(comm, y)
    info = {"messages": jnp.asarray(float(sent), jnp.float32),
            "minibatches": jnp.asarray(0.0 if problem.sample is None
                                       else float(config.minibatches * n), jnp.float32)}
    new = SLAMState(x=x, y=y, u_x=sx.dual, u_y=sy.dual, step=state.step + 1, lap_x=sx.lap,
                    lap_y=sy.lap, hg_v=hg_v)
    return new, info


def _slam_metrics(static, graph, state, data) -> dict:
    problem, config = static.value
    cx, cy = config.level_consensus(state.x, state.y)
    return bilevel_metrics(problem, graph, state.x, state.y, data, cx, cy)


def _slam_check(static, graph, params, state, data) -> None:
    problem, config = static.value
    validate(problem, config, graph, params, state, data)


# ----------------------------------------------------------------------------------------
# the same functions without building an Algorithm (one step path: the kernel)
# ----------------------------------------------------------------------------------------
def step(problem: BilevelProblem, config: SLAMConfig, graph: Graph, params: SLAMParams,
         state: SLAMState, data: ProblemData, key) -> SLAMState:
    """One SLAM iteration with the run key ``key`` (this step uses ``fold_in(key,
    state.step)``, as :func:`slamjax.run` does). Pure; jit/vmap/scan/grad-able."""
    k = jax.random.fold_in(key, state.step)
    return _slam_kernel(Static((problem, config)), k, state, params, data, graph)[0]


def scan_steps(problem, config, graph, params, state, data, key, num_steps: int,
               checkpoint_every: int | None = None) -> SLAMState:
    """``num_steps`` iterations of :func:`step` with ``lax.scan`` (pure, differentiable);
    ``checkpoint_every=c`` rematerialises chunks of c steps in reverse mode (memory
    O(T/c + c)). See :func:`slamjax.iterate`, which this calls."""
    alg = slam(problem, graph, config)
    if state.lap_x is None or state.lap_y is None or (config.warm_start and state.hg_v is None):
        state = _with_laplacians(graph, config, state)
    return iterate(alg, params, data, state, key, num_steps, checkpoint_every=checkpoint_every,
                   start=state.step)


# ----------------------------------------------------------------------------------------
# input checks (run on concrete values, before anything is compiled)
# ----------------------------------------------------------------------------------------
def stability_bound(lam_max: float, step_param: float, gamma: float) -> float:
    """Largest ρ for which the consensus recursion is linearly stable.

    On a Laplacian eigenmode μ, with gradient terms aside, the two-step form (6) reads
    z⁺ = (2 − s(1+γ)) z − (1 − sγ) z⁻ with s = ρμ/β. The Jury conditions of its characteristic
    polynomial reduce to s(1 + 2γ) < 4, i.e. **ρ·λ_max(L)·(1 + 2γ) < 4β** (α for the UL).
    """
    if lam_max <= 0:
        return math.inf
    return 4.0 * step_param / (lam_max * (1.0 + 2.0 * gamma))


def _concrete(v):
    try:
        return float(np.asarray(v))
    except Exception:  # a tracer: cannot be checked here
        return None


def validate(problem: BilevelProblem, config: SLAMConfig, graph: Graph, params: SLAMParams,
             state: SLAMState, data: ProblemData) -> None:
    """Clear errors for bad input and a :class:`StabilityWarning` for unstable steps."""
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a slamjax.graphs.Graph, got {type(graph).__name__}")
    if not isinstance(data, ProblemData):
        raise TypeError("data must be a slamjax.ProblemData(shared=..., agents=...), got "
                        f"{type(data).__name__}")
    if not all(hasattr(params, f) for f in SLAMParams._fields):
        raise params_class_error("slam", SLAMParams, params)
    n = graph.n
    check_agent_axis("x", state.x, n)
    check_agent_axis("y", state.y, n)
    if data.agents is not None and jax.tree.leaves(data.agents):
        for path, leaf in jax.tree_util.tree_flatten_with_path(data.agents)[0]:
            shape = jnp.shape(leaf)
            if len(shape) == 0 or shape[0] != n:
                raise ValueError(f"data.agents{jax.tree_util.keystr(path)} has shape "
                                 f"{tuple(shape)}: per-agent data needs leading axis n={n} "
                                 "(the graph's number of agents)")
    if jax.tree.structure(state.u_x) != jax.tree.structure(state.x) or \
            jax.tree.structure(state.u_y) != jax.tree.structure(state.y):
        raise ValueError("state duals must have the same pytree structure as x and y "
                         "(build the state with slamjax.init)")
    vals = {}
    for name in ("alpha", "beta", "rho", "gamma"):
        raw = getattr(params, name)
        if jnp.ndim(raw) != 0:
            continue  # batched hyperparameters (vmap sweeps): checked per value by the caller
        v = _concrete(raw)
        if v is None:
            continue
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"SLAM parameter {name}={v} must be finite and > 0 "
                             "(1/alpha and 1/beta are step sizes, rho the penalty, gamma the "
                             "Lagrangian scaling)")
        vals[name] = v
    mx, my = config.masks(state.x, state.y)
    if {"rho", "gamma"} <= vals.keys():
        rho, gamma = vals["rho"], vals["gamma"]
        for level, on, pname in (("upper", any(mx), "alpha"), ("lower", any(my), "beta")):
            if not on or pname not in vals:
                continue
            bound = stability_bound(graph.lam_max, vals[pname], gamma)
            if rho >= bound:
                safe_step = rho * graph.lam_max * (1 + 2 * gamma) / 4.0 * 1.25
                warnings.warn(
                    f"{level}-level consensus is unstable: rho*lam_max(L)*(1+2*gamma) = "
                    f"{rho * graph.lam_max * (1 + 2 * gamma):.4g} >= 4*{pname} = "
                    f"{4 * vals[pname]:.4g} (lam_max(L)={graph.lam_max:.4g}). Use rho < "
                    f"{bound:.4g} (e.g. rho={0.8 * bound:.3g}) or {pname} > "
                    f"{safe_step / 1.25:.4g} (e.g. {pname}={safe_step:.3g}).",
                    StabilityWarning, stacklevel=3)


# registry entries: the contract test runs every variant
def _default_params(alpha=25.0, beta=25.0, rho=0.5, gamma=1.0, dtype=None):
    return SLAMParams.create(alpha, beta, rho, gamma, dtype=dtype)


for _v in VARIANTS:
    register(_v, (lambda v: lambda problem, comm, **kw: slam(problem, comm,
                                                             SLAMConfig(v, **kw)))(_v),
             _default_params, f"{_v} (Lu et al. 2022), eq. (5)")
