"""Bias-free SLAM: SLAM whose hypergradient uses the network-summed LL Hessian.

SLAM's eq. (23) solves each agent's *local* system ∇²_yy g_i v = ∇_y f_i. The hypergradient of
problem (2) is instead the average over agents of ∇_x f_i − ∇²_xy g_i z*, where z* solves
(Σ_j ∇²_yy g_j) z = Σ_j ∇_y f_j — a consensus problem. Here z gets its own SLAM primal–dual
recursion (a third "level" with the same penalty ρ and scaling γ and its own step 1/δ)::

    y ← y − (1/β)(∇_y g_i(x, y) + γ u_y + ργ L y),            u_y ← u_y + (ρ/γ) L y⁺
    z ← z − (1/δ)(∇²_yy g_i(x, y⁺) z − ∇_y f_i(x, y⁺) + γ u_z + ργ L z),  u_z ← u_z + (ρ/γ) L z⁺
    x ← x − (1/α)(∇_x f_i(x, y⁺) − ∇²_xy g_i(x, y⁺) z⁺ + γ u_x + ργ L x), u_x ← u_x + (ρ/γ) L x⁺

At a fixed point the duals sum to zero, so Σ_i (∇²_yy g_i z − ∇_y f_i) = 0 with z in consensus:
z = z*, and Σ_i h_f,i = 0 is the true stationarity of problem (2). One HVP and one exchange of
z more per step than SLAM; z starts at 0 and is warm-started from step to step.

This is our construction (the design notes, §6), not a published method; the order
y → z (at y⁺) → x (with z⁺) is the one a NumPy reference run checked. Variants: ``"slam"``
(consensus on x, y, z) and ``"slam_u"`` (no LL consensus: z is then each agent's own local
solve, which is already unbiased). SLAM-L is refused: with x not in consensus each agent's
hypergradient involves the other agents' objectives (problem (8)), which z does not carry.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slamjax.algorithm import params_class_error, register
from slamjax.baselines import _oracle as O
from slamjax.consensus import ConsensusHP, PrimalDualState, primal_dual
from slamjax.hypergrad import cross_xy, hvp_yy, lower_grad
from slamjax.metrics import bilevel_metrics
from slamjax.problem import DATA_AXES, check_agent_axis
from slamjax.slam import SLAMConfig, SLAMParams, SLAMState, validate

__all__ = ["BiasFreeParams", "BiasFreeState", "bias_free_slam"]


class BiasFreeParams(NamedTuple):
    """1/α, 1/β, 1/δ: UL, LL and z step sizes; ρ penalty; γ scaling (all traced)."""

    alpha: Any
    beta: Any
    delta: Any
    rho: Any
    gamma: Any = 1.0
    DOMAIN = "≥ 0"

    @classmethod
    def create(cls, alpha, beta, delta, rho, gamma=1.0, dtype=None) -> "BiasFreeParams":
        """Inverse steps α (UL), β (LL), δ (the z recursion): the steps are 1/α, 1/β, 1/δ;
        penalty ρ and scaling γ as in :class:`slamjax.SLAMParams`; numbers or schedules."""
        return cls(*(O.number(v, dtype) for v in (alpha, beta, delta, rho, gamma)))


class BiasFreeState(NamedTuple):
    """Iterates x, y, z (agent axis first), their duals u = Aᵀλ, the step and the cached
    Laplacian products (as :class:`slamjax.SLAMState`)."""

    x: Any
    y: Any
    z: Any
    u_x: Any
    u_y: Any
    u_z: Any
    step: Any
    lap_x: Any = None
    lap_y: Any = None
    lap_z: Any = None


def bias_free_slam(problem, comm, config: SLAMConfig = SLAMConfig()):
    """Bias-free SLAM over ``comm`` (``config.variant`` ``"slam"`` or ``"slam_u"``; solver
    and agent blocking are unused); params :class:`BiasFreeParams`."""
    if not isinstance(config, SLAMConfig):
        raise TypeError(f"config must be a slamjax.SLAMConfig, got {type(config).__name__}")
    if config.variant == "slam_l":
        raise ValueError("bias-free SLAM is defined for variant 'slam' and 'slam_u'; with no UL "
                         "consensus (SLAM-L, problem (8)) each agent's hypergradient involves "
                         "the other agents' objectives, which the shared z does not carry")
    return O.build(problem, comm, config, _init, _kernel, "bias_free_slam", BiasFreeParams,
                   metrics=_metrics, check=_check)


def _init(static, comm, x0, y0, data=None):
    config = static.value[1]
    check_agent_axis("x", x0, comm.n)
    check_agent_axis("y", y0, comm.n)
    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    mx, my = config.masks(x0, y0)
    z0 = zeros(y0)
    return BiasFreeState(x0, y0, z0, zeros(x0), zeros(y0), zeros(y0), jnp.zeros((), jnp.int32),
                         primal_dual(mx).init(x0, comm).lap, primal_dual(my).init(y0, comm).lap,
                         primal_dual(my).init(z0, comm).lap)


def _kernel(static, key, s: BiasFreeState, p: BiasFreeParams, data, comm):
    problem, config = static.value
    n = comm.n
    mx, my = config.masks(s.x, s.y)
    kg, kf = jax.random.split(key)
    bg = O.sample(problem, kg, data, n)
    bf = bg if config.minibatches == 1 else O.sample(problem, kf, data, n)
    vm = lambda fn, *a: jax.vmap(fn, in_axes=(0, 0, 0, DATA_AXES, 0))(*a)  # noqa: E731

    def level(mask, grads, v, u, lap, inv):
        return primal_dual(mask).update(grads, PrimalDualState(u, lap), v, comm,
                                        ConsensusHP(1.0 / inv, p.rho, p.gamma))

    h_g = vm(lambda x, y, _z, d, b: lower_grad(problem, x, y, d, b), s.x, s.y, s.z, data, bg)
    y, sy = level(my, h_g, s.y, s.u_y, s.lap_y, p.beta)

    def z_dir(x, yy, z, d, b):
        fy = jax.grad(problem.f, argnums=1)(x, yy, d, b)
        return jax.tree.map(jnp.subtract, hvp_yy(problem, x, yy, d, b, z), fy)

    z, sz = level(my, vm(z_dir, s.x, y, s.z, data, bf), s.z, s.u_z, s.lap_z, p.delta)

    def x_dir(x, yy, zz, d, b):
        fx = jax.grad(problem.f, argnums=0)(x, yy, d, b)
        return jax.tree.map(jnp.subtract, fx, cross_xy(problem, x, yy, d, b, zz))

    x, sx = level(mx, vm(x_dir, s.x, y, z, data, bf), s.x, s.u_x, s.lap_x, p.alpha)
    sent = primal_dual(mx).messages(comm, x) + 2 * primal_dual(my).messages(comm, y)
    info = {"messages": jnp.asarray(float(sent), jnp.float32),
            "minibatches": jnp.asarray(0.0 if problem.sample is None
                                       else float(config.minibatches * n), jnp.float32)}
    return BiasFreeState(x, y, z, sx.dual, sy.dual, sz.dual, s.step + 1, sx.lap, sy.lap,
                         sz.lap), info


def _metrics(static, comm, state, data):
    problem, config = static.value
    cx, cy = config.level_consensus(state.x, state.y)
    return bilevel_metrics(problem, comm, state.x, state.y, data, cx, cy)


def _check(static, comm, params, state, data):
    problem, config = static.value
    if not isinstance(params, BiasFreeParams):
        raise params_class_error("bias_free_slam", BiasFreeParams, params)
    sp = SLAMParams(params.alpha, params.beta, params.rho, params.gamma)
    ss = SLAMState(state.x, state.y, state.u_x, state.u_y, state.step)
    validate(problem, config, comm, sp, ss, data)
    validate(problem, config, comm, SLAMParams(params.alpha, params.delta, params.rho,
                                               params.gamma), ss, data)


for _v in ("slam", "slam_u"):
    register(f"bias_free_{_v}",
             (lambda v: lambda problem, comm, **kw: bias_free_slam(
                 problem, comm, SLAMConfig(v, **kw)))(_v),
             lambda alpha=25.0, beta=25.0, delta=25.0, rho=0.5, gamma=1.0, dtype=None:
             BiasFreeParams.create(alpha, beta, delta, rho, gamma, dtype),
             f"bias-free SLAM ({_v}): z in consensus through its own primal-dual recursion")
