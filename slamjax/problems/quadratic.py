"""Quadratic decentralized bilevel problems with closed-form y*(x), ∇F and optima.

Agent i, LL task k (y has shape (m, d_y) per agent, x has shape (d_x,))::

    g_{i,k}(x, y_k) = ½ y_kᵀ H_{i,k} y_k − y_kᵀ (B_{i,k} x + b_{i,k})      (+ ⟨ξ_g, y_k⟩)
    f_i(x, y)       = ½ xᵀ P x + p_iᵀ x + Σ_k ½ ‖y_k − t_{i,k}‖²           (+ ⟨ξ_x, x⟩ + ⟨ξ_y, y⟩)

``homogeneous=True`` shares H and B across agents (stored once in ``data.shared``), while the
linear terms b_i, p_i, t_i (the agents' "data") always differ. ``heterogeneous`` Hessians put
H_{i,k}, B_{i,k} in ``data.agents``. ``noise=σ`` makes the oracle stochastic: each call of
``sample`` draws ξ ~ N(0, σ²) (zero-mean, unbiased gradients, assumption A3); σ lives in
``data.shared`` and is therefore a traced, differentiable number.

Closed forms (NumPy-free JAX, used as independent references in tests and as Theorem-1 metrics):

* LL solution with consensus: y_k*(x) = (Σ_i H_{i,k})⁻¹ Σ_i (B_{i,k} x_i + b_{i,k});
  without: y_{i,k}*(x_i) = H_{i,k}⁻¹ (B_{i,k} x_i + b_{i,k}).
* UL objective F(x̄) = (1/n) Σ_i f_i(x̄, y_i*(x̄)) and its gradient (autodiff of the closed form).
* :func:`fixed_point`: the point every SLAM variant converges to (see its docstring).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.problem import BilevelProblem, ProblemData

__all__ = ["QuadraticSpec", "make_quadratic", "y_star", "ul_objective", "ul_gradient",
           "surrogate_hypergrad", "fixed_point", "theorem1_metrics", "ul_objective_loss"]


class QuadraticSpec(NamedTuple):
    """Sizes of a quadratic instance: ``n`` agents, ``dx`` UL and ``dy`` LL dimensions per
    task, ``m`` LL tasks, ``homogeneous`` = LL Hessians shared by all agents."""

    n: int
    dx: int
    dy: int
    m: int
    homogeneous: bool


def _HB(data: ProblemData, homogeneous: bool):
    src = data.shared if homogeneous else data.agents
    return src["H"], src["B"]


def _build(homogeneous: bool, stochastic: bool) -> BilevelProblem:
    def g(x, y, data, batch):
        H, B = _HB(data, homogeneous)
        b = data.agents["b"]
        # products written agent-row-major (v·Hᵀ, not H·v): under vmap over agents the agent
        # axis stays the row axis of each GEMM, so XLA needs no transposes around them
        quad = 0.5 * jnp.vdot(y, jnp.einsum("kj,kij->ki", y, H))
        lin = jnp.vdot(y, jnp.einsum("j,kij->ki", x, B) + b)
        val = quad - lin
        if batch is not None:
            val = val + jnp.vdot(batch["y"], y)
        return val

    def f(x, y, data, batch):
        P = data.shared["P"]
        val = 0.5 * jnp.vdot(x, x @ P) + data.agents["p"] @ x + 0.5 * jnp.sum((y - data.agents["t"]) ** 2)
        if batch is not None:
            val = val + jnp.vdot(batch["x"], x) + jnp.vdot(batch["y"], y)
        return val

    def sample(key, data):
        sigma = data.shared["sigma"]
        kx, ky = jax.random.split(key)
        dx = data.agents["p"].shape[-1]
        yshape = data.agents["t"].shape
        dtype = data.agents["p"].dtype
        return {"x": sigma * jax.random.normal(kx, (dx,), dtype),
                "y": sigma * jax.random.normal(ky, yshape, dtype)}

    def hvp_yy(x, y, data, batch, v):
        H, _ = _HB(data, homogeneous)
        return jnp.einsum("kj,kij->ki", v, H)

    def cross_xy(x, y, data, batch, v):
        _, B = _HB(data, homogeneous)
        return -jnp.einsum("ki,kij->j", v, B)

    def metrics(x, y, data, consensus_x, consensus_y):
        return theorem1_metrics(x, y, data, homogeneous, consensus_x, consensus_y)

    return BilevelProblem(f=f, g=g, sample=sample if stochastic else None, hvp_yy=hvp_yy,
                          cross_xy=cross_xy, metrics=metrics,
                          name="quadratic" + ("" if homogeneous else "-heterogeneous"))


_PROBLEMS = {(h, s): _build(h, s) for h in (True, False) for s in (True, False)}


def quadratic_problem(homogeneous: bool = True, stochastic: bool = False,
                      autodiff: bool = False) -> BilevelProblem:
    """The problem object (cached, so jit caches are shared). ``autodiff=True`` drops the
    hand-written HVP / cross products so eq. (23) is computed by forward-over-reverse AD."""
    p = _PROBLEMS[(bool(homogeneous), bool(stochastic))]
    if autodiff:
        return _AUTODIFF.setdefault((homogeneous, stochastic), BilevelProblem(
            f=p.f, g=p.g, sample=p.sample, metrics=p.metrics, name=p.name + "-autodiff"))
    return p


_AUTODIFF: dict = {}


def _spd(rng, d, lo, hi, lead=()):
    q, _ = np.linalg.qr(rng.standard_normal(lead + (d, d)))
    eig = rng.uniform(lo, hi, size=lead + (d,))
    return np.einsum("...ij,...j,...kj->...ik", q, eig, q)


def make_quadratic(n: int, dx: int = 5, dy: int = 5, m: int = 1, *, seed: int = 0,
                   homogeneous: bool = True, noise: float = 0.0, dtype=jnp.float32,
                   hessian_range=(1.0, 4.0), heterogeneity: float = 1.0,
                   init_scale: float = 1.0, autodiff: bool = False):
    """A random instance: returns ``(problem, data, x0, y0)``.

    ``heterogeneity`` scales how much the agents' linear terms (b_i, p_i, t_i) differ.
    ``x0`` and ``y0`` are random per agent (scale ``init_scale``) so consensus errors start > 0.
    """
    for name, v in (("n", n), ("dx", dx), ("dy", dy), ("m", m)):
        if int(v) < 1:
            raise ValueError(f"make_quadratic: {name} must be ≥ 1, got {v}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite σ ≥ 0, got {noise}")
    rng = np.random.default_rng(seed)
    lo, hi = hessian_range
    lead = () if homogeneous else (n,)
    H = _spd(rng, dy, lo, hi, lead + (m,))
    B = rng.standard_normal(lead + (m, dy, dx)) / np.sqrt(dx)
    P = _spd(rng, dx, 0.5, 1.5)
    common_b = rng.standard_normal((m, dy))
    agents = {
        "b": common_b + heterogeneity * rng.standard_normal((n, m, dy)),
        "p": heterogeneity * rng.standard_normal((n, dx)),
        "t": rng.standard_normal((m, dy)) + heterogeneity * rng.standard_normal((n, m, dy)),
    }
    shared = {"P": P, "sigma": np.asarray(noise)}
    (shared if homogeneous else agents).update(H=H, B=B)
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    data = ProblemData(shared=jax.tree.map(cast, shared), agents=jax.tree.map(cast, agents))
    x0 = cast(init_scale * rng.standard_normal((n, dx)))
    y0 = cast(init_scale * rng.standard_normal((n, m, dy)))
    problem = quadratic_problem(homogeneous, noise > 0, autodiff)
    return problem, data, x0, y0


# ----------------------------------------------------------------------------------------
# closed forms (stacked arrays; agent axis first)
# ----------------------------------------------------------------------------------------
def _stacked_HB(data, homogeneous, n):
    H, B = _HB(data, homogeneous)
    if homogeneous:
        H = jnp.broadcast_to(H, (n,) + H.shape)
        B = jnp.broadcast_to(B, (n,) + B.shape)
    return H, B


def y_star(x, data, homogeneous: bool, consensus_y: bool):
    """LL solution(s) at the stacked UL variable x (n, dx); returns (n, m, dy)."""
    n = x.shape[0]
    H, B = _stacked_HB(data, homogeneous, n)
    rhs = jnp.einsum("nkij,nj->nki", B, x) + data.agents["b"]
    if consensus_y:
        ys = jnp.linalg.solve(H.sum(0), rhs.sum(0)[..., None])[..., 0]  # (m, dy)
        return jnp.broadcast_to(ys, (n,) + ys.shape)
    return jnp.linalg.solve(H, rhs[..., None])[..., 0]


def ul_objective(xbar, data, homogeneous: bool, consensus_y: bool):
    """F(x̄) = (1/n) Σ_i f_i(x̄, y_i*(1 x̄)) (problems (2) and (9))."""
    n = data.agents["p"].shape[0]
    X = jnp.broadcast_to(xbar, (n,) + xbar.shape)
    Y = y_star(X, data, homogeneous, consensus_y)
    P = data.shared["P"]
    vals = 0.5 * xbar @ P @ xbar + data.agents["p"] @ xbar + 0.5 * jnp.sum(
        (Y - data.agents["t"]) ** 2, axis=(1, 2))
    return jnp.mean(vals)


def ul_gradient(xbar, data, homogeneous: bool, consensus_y: bool):
    """∇F(x̄) by autodiff of the closed form (independent of the eq.-(23) code path)."""
    return jax.grad(ul_objective)(xbar, data, homogeneous, consensus_y)


def surrogate_hypergrad(x, Y, data, homogeneous: bool):
    """Eq. (23) per agent in closed form: P x_i + p_i + Σ_k B_{ik}ᵀ H_{ik}⁻¹ (y_{ik} − t_{ik})."""
    n = x.shape[0]
    H, B = _stacked_HB(data, homogeneous, n)
    v = jnp.linalg.solve(H, (Y - data.agents["t"])[..., None])[..., 0]
    return x @ data.shared["P"].T + data.agents["p"] + jnp.einsum("nkij,nki->nj", B, v)


def fixed_point(data, homogeneous: bool, consensus_x: bool, consensus_y: bool):
    """The stacked x (n, dx) at which the SLAM variant is stationary (noise off).

    * UL consensus: x_i = x̄ for all i with Σ_i h_i(x̄, y_i*) = 0 — the sum of the agents'
      surrogate hypergradients (23) at the LL solution vanishes. With homogeneous H, B (or with
      no LL consensus, where the local surrogates are exact) this is the optimum of F.
    * No UL consensus (SLAM-L, problem (8)): h_i(x_i, y*(x)) = 0 for every agent i.

    The map x ↦ h(x, y*(x)) is affine, so one Jacobian solve gives the point exactly.
    """
    n, dx = data.agents["p"].shape

    def residual(z):
        X = jnp.broadcast_to(z, (n, dx)) if consensus_x else z.reshape(n, dx)
        h = surrogate_hypergrad(X, y_star(X, data, homogeneous, consensus_y), data, homogeneous)
        return h.sum(0) if consensus_x else h.reshape(-1)

    z0 = jnp.zeros((dx,) if consensus_x else (n * dx,), data.agents["p"].dtype)
    J = jax.jacfwd(residual)(z0)
    z = jnp.linalg.solve(J, -residual(z0))
    return jnp.broadcast_to(z, (n, dx)) if consensus_x else z.reshape(n, dx)


def theorem1_metrics(x, y, data, homogeneous: bool, consensus_x: bool, consensus_y: bool):
    """Stationarity and LL-optimality measures of Theorem 1 / Corollaries 1–2.

    * ``grad_F_sq``: ‖∇F(1x̄)‖² with UL consensus (problems (2), (9)); for SLAM-L the mean over
      agents of ‖h_i(x_i, y*(x))‖², the stationarity of each agent's problem (8a).
    * ``ll_error``: Σ_k ‖ȳ_k − y_k*(x)‖² with LL consensus (10b); without it
      (1/n) Σ_{i,k} ‖y_{i,k} − y_{i,k}*(x_i)‖² (Corollary 2).
    """
    ys = y_star(x, data, homogeneous, consensus_y)
    if consensus_x:
        gF = ul_gradient(jnp.mean(x, axis=0), data, homogeneous, consensus_y)
        grad_sq = jnp.sum(gF ** 2)
    else:
        h = surrogate_hypergrad(x, ys, data, homogeneous)
        grad_sq = jnp.mean(jnp.sum(h ** 2, axis=-1))
    if consensus_y:
        ll = jnp.sum((jnp.mean(y, axis=0) - ys[0]) ** 2)
    else:
        ll = jnp.mean(jnp.sum((y - ys) ** 2, axis=(1, 2)))
    return {"grad_F_sq": grad_sq, "ll_error": ll}


# ----------------------------------------------------------------------------------------
# closed-form losses of a run's final state (for slamjax.diff)
# ----------------------------------------------------------------------------------------
def _check_layout(data, name):
    agents, shared = data.agents, data.shared
    if not (isinstance(agents, dict) and {"b", "p", "t"} <= agents.keys()
            and isinstance(shared, dict) and "P" in shared):
        raise ValueError(
            f"{name} is a closed form of slamjax.problems.quadratic and needs its data layout; "
            "for other problems use slamjax.diff.mean_f(problem), the name of a metric, or a "
            "callable loss(state, data) -> scalar")


@functools.lru_cache(maxsize=None)
def ul_objective_loss(consensus_y: bool = True, per_agent: bool = False):
    """Loss ``(state, data) -> scalar`` for :mod:`slamjax.diff`: the closed-form UL objective.

    ``per_agent=False``: F(x̄_T) at the network average. ``per_agent=True``: (1/n) Σ_i F(x_i),
    F at each agent's own iterate, averaged — it sees the disagreement (for a homogeneous
    quadratic x̄_T does not depend on ρ or γ, so F(x̄_T) is blind to them).
    ``consensus_y``: whether the LL is solved in consensus (``False`` for SLAM-U), which
    changes y*(x). Cached: the same arguments give the same function object (one compile).
    """
    name = f"ul_objective_loss(per_agent={per_agent})"

    def loss(state, data):
        _check_layout(data, name)
        hom = "H" in data.shared
        if per_agent:
            vals = jax.vmap(lambda xi: ul_objective(xi, data, hom, consensus_y))(state.x)
            return jnp.mean(vals)
        return ul_objective(jnp.mean(state.x, axis=0), data, hom, consensus_y)

    loss.__name__ = name
    return loss
