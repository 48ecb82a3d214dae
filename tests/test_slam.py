"""SLAM / SLAM-L / SLAM-U against independent computations.

* the two-step form (6)–(7), written here in NumPy with a dense Laplacian and closed-form
  gradients, reproduces the library's iterates (eq. (5) with duals stored as Aᵀλ);
* with shared LL Hessians SLAM converges to the closed-form optimum; SLAM-L and SLAM-U reach
  the stationary points of their own problems (8) and (9);
* determinism, no retracing, per-leaf consensus masks, and the stability bound.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax import graphs
from slamjax.problems.quadratic import (fixed_point, make_quadratic, theorem1_metrics,
                                        ul_gradient)

VARIANTS = ["slam", "slam_l", "slam_u"]
# the algorithm is a pytree (graph arrays traced, problem/config static): pass it to jit as is
_solve = jax.jit(sj.solve, static_argnames=("num_steps", "checkpoint_every", "check"))
_step = jax.jit(sj.step, static_argnums=(0, 1))


# ----------------------------------------------------------------------------------------
# independent NumPy reference: closed-form gradients + two-step form (6)-(7)
# ----------------------------------------------------------------------------------------
def _np_data(data, n, homogeneous):
    d = {k: np.asarray(v) for k, v in data.agents.items()}
    d.update({k: np.asarray(v) for k, v in data.shared.items()})
    if homogeneous:
        d["H"] = np.broadcast_to(d["H"], (n,) + d["H"].shape)
        d["B"] = np.broadcast_to(d["B"], (n,) + d["B"].shape)
    return d


def _np_hg(d, x, y):  # ∇_y g_{i,k} = H y − (B x + b)
    return np.einsum("nkij,nkj->nki", d["H"], y) - np.einsum("nkij,nj->nki", d["B"], x) - d["b"]


def _np_hf(d, x, y):  # eq. (23) for the quadratic: P x + p + Σ_k Bᵀ H⁻¹ (y − t)
    v = np.linalg.solve(d["H"], (y - d["t"])[..., None])[..., 0]
    return x @ d["P"].T + d["p"] + np.einsum("nkij,nki->nj", d["B"], v)


def _two_step_reference(L, d, x0, y0, alpha, beta, rho, gamma, cx, cy, steps):
    n = L.shape[0]
    I = np.eye(n)
    tau_g, tau_f = beta / gamma, alpha / gamma
    Wg, Wg2 = I - (1 + 1 / gamma) * rho / (2 * tau_g) * L, I - rho / tau_g * L
    Wf, Wf2 = I - (1 + 1 / gamma) * rho / (2 * tau_f) * L, I - rho / tau_f * L
    mix = lambda M, v: np.einsum("ij,j...->i...", M, v)  # noqa: E731
    xs, ys = [x0], [y0]
    hg_prev = hf_prev = None
    for r in range(steps):
        x, y = xs[-1], ys[-1]
        hg = _np_hg(d, x, y)
        if not cy:
            y_new = y - hg / beta
        elif r == 0:  # first step: (5a) with zero duals
            y_new = y - (hg + rho * gamma * mix(L, y)) / beta
        else:  # (6a)
            y_new = 2 * mix(Wg, y) - mix(Wg2, ys[-2]) - (hg - hg_prev) / beta
        hf = _np_hf(d, x, y_new)
        if not cx:
            x_new = x - hf / alpha
        elif r == 0:
            x_new = x - (hf + rho * gamma * mix(L, x)) / alpha
        else:  # (6b)
            x_new = 2 * mix(Wf, x) - mix(Wf2, xs[-2]) - (hf - hf_prev) / alpha
        hg_prev, hf_prev = hg, hf
        xs.append(x_new)
        ys.append(y_new)
    return np.stack(xs), np.stack(ys)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("homogeneous", [True, False])
def test_two_step_form_matches_main_recursion(x64, variant, homogeneous):
    n, steps = 7, 60
    g = graphs.erdos_renyi(n, seed=4)
    problem, data, x0, y0 = make_quadratic(n, dx=3, dy=2, m=2, seed=2, homogeneous=homogeneous,
                                           dtype=jnp.float64)
    alpha, beta, rho, gamma = 12.0, 9.0, 0.7, 1.5
    params = sj.SLAMParams.create(alpha, beta, rho, gamma)
    cfg = sj.SLAMConfig(variant=variant, solver=sj.CG(maxiter=4))
    state, key = sj.init(x0, y0), jax.random.key(0)
    lib_x, lib_y = [np.asarray(x0)], [np.asarray(y0)]
    for _ in range(steps):
        state = _step(problem, cfg, g, params, state, data, key)
        lib_x.append(np.asarray(state.x))
        lib_y.append(np.asarray(state.y))
    cx, cy = sj.VARIANTS[variant]
    ref_x, ref_y = _two_step_reference(graphs.laplacian_dense(g), _np_data(data, n, homogeneous),
                                       np.asarray(x0), np.asarray(y0), alpha, beta, rho, gamma,
                                       cx, cy, steps)
    scale = max(1.0, np.abs(ref_x).max(), np.abs(ref_y).max())
    assert np.abs(np.stack(lib_x) - ref_x).max() <= 1e-10 * scale
    assert np.abs(np.stack(lib_y) - ref_y).max() <= 1e-10 * scale
    # the iterates actually move (a test that cannot fail is a defect)
    assert np.abs(ref_x[-1] - ref_x[0]).max() > 1e-2


# ----------------------------------------------------------------------------------------
# convergence to closed-form optima
# ----------------------------------------------------------------------------------------
def _converge(variant, homogeneous, steps=3000, solver=sj.CG(maxiter=6), n=8, seed=0):
    g = graphs.erdos_renyi(n, seed=1)
    problem, data, x0, y0 = make_quadratic(n, dx=3, dy=3, m=2, seed=seed,
                                           homogeneous=homogeneous, dtype=jnp.float64)
    params = sj.SLAMParams.create(10.0, 10.0, 1.0, 1.0)
    cfg = sj.SLAMConfig(variant=variant, solver=solver)
    alg = sj.slam(problem, g, cfg)
    state = _solve(alg, params, data, x0, y0, jax.random.key(0), num_steps=steps)
    return g, problem, data, alg, state


@pytest.mark.parametrize("variant", VARIANTS)
def test_converges_to_closed_form_fixed_point(x64, variant):
    g, problem, data, alg, state = _converge(variant, homogeneous=True)
    cx, cy = sj.VARIANTS[variant]
    x_star = fixed_point(data, True, cx, cy)
    np.testing.assert_allclose(state.x, x_star, atol=1e-7)
    m = sj.evaluate(alg, state, data)
    assert m["grad_F_sq"] < 1e-8 and m["ll_error"] < 1e-8
    if cx:
        assert m["consensus_x"] < 1e-8
        # the fixed point is the true optimum of F: its gradient (autodiff of the closed
        # form, independent of eq. (23)) vanishes there
        assert np.linalg.norm(ul_gradient(x_star[0], data, True, cy)) < 1e-10
    else:
        assert m["consensus_x"] > 1.0  # SLAM-L keeps one policy per agent
    if cy:
        assert m["consensus_y"] < 1e-8
    else:
        assert m["consensus_y"] > 1e-3  # SLAM-U keeps one head per agent


def test_slam_u_is_unbiased_with_heterogeneous_hessians(x64):
    g, problem, data, alg, state = _converge("slam_u", homogeneous=False)
    xbar = jnp.mean(state.x, 0)
    assert np.linalg.norm(ul_gradient(xbar, data, False, False)) < 1e-6


def test_slam_bias_with_heterogeneous_hessians_is_the_surrogate_fixed_point(x64):
    """With agent-specific ∇²g, SLAM converges to the fixed point of the surrogate (23), which
    differs from the true optimum (DESIGN.md §1): both facts are checked."""
    g, problem, data, alg, state = _converge("slam", homogeneous=False)
    np.testing.assert_allclose(state.x, fixed_point(data, False, True, True), atol=1e-7)
    assert np.linalg.norm(ul_gradient(jnp.mean(state.x, 0), data, False, True)) > 1e-3


@pytest.mark.parametrize("solver", [sj.Neumann(K=80, eta=0.2), sj.Exact()],
                         ids=["neumann", "exact"])
def test_other_solvers_converge(x64, solver):
    g, problem, data, alg, state = _converge("slam", True, solver=solver)
    np.testing.assert_allclose(state.x, fixed_point(data, True, True, True), atol=1e-7)


def test_per_leaf_consensus_mask(x64):
    """Partial sharing: x = (shared, private) with consensus only on the first leaf."""
    n = 6
    g = graphs.ring(n)
    base, data, x0, y0 = make_quadratic(n, dx=4, dy=2, m=1, seed=3, dtype=jnp.float64)

    def to_tree(x):
        return (x[..., :2], x[..., 2:])

    def merge(t):
        return jnp.concatenate(t, axis=-1)

    problem = sj.BilevelProblem(f=lambda x, y, d, b: base.f(merge(x), y, d, b),
                                g=lambda x, y, d, b: base.g(merge(x), y, d, b))
    cfg = sj.SLAMConfig(variant="slam", consensus_x=(True, False))
    params = sj.SLAMParams.create(10.0, 10.0, 1.0, 1.0)
    state = _solve(sj.slam(problem, g, cfg), params, data, to_tree(x0), y0, jax.random.key(0),
                   num_steps=2000)
    shared, private = state.x
    assert sj.consensus_error(g, shared) < 1e-10
    assert sj.consensus_error(g, private) > 1e-3
    np.testing.assert_array_equal(state.u_x[1], 0.0)  # no dual on the private leaf
    with pytest.raises(ValueError, match="one bool per leaf"):
        sj.SLAMConfig(consensus_x=(True, False, True)).masks(to_tree(x0), y0)


# ----------------------------------------------------------------------------------------
# determinism, retracing, dtype
# ----------------------------------------------------------------------------------------
def test_same_seed_same_numbers_and_seed_matters():
    n = 16
    g = graphs.erdos_renyi(n, seed=0)
    problem, data, x0, y0 = make_quadratic(n, 4, 4, seed=0, noise=0.5)
    params = sj.SLAMParams.create(20.0, 20.0, 1.0, 1.0)
    alg = sj.slam(problem, g)
    a = sj.run(alg, params, data, x0, y0, num_steps=200, log_every=20, seed=3,
               progress=False)
    b = sj.run(alg, params, data, x0, y0, num_steps=200, log_every=20, seed=3,
               progress=False, logs_per_chunk=1)  # different chunking, same numbers
    c = sj.run(alg, params, data, x0, y0, num_steps=200, log_every=20, seed=4,
               progress=False)
    np.testing.assert_array_equal(a.state.x, b.state.x)
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k])
    assert not np.array_equal(a.state.x, c.state.x)
    assert a.state.x.dtype == jnp.float32  # float32 by default


def test_vmapped_seeds_equal_single_runs():
    n = 8
    g = graphs.ring(n)
    problem, data, x0, y0 = make_quadratic(n, 3, 3, seed=0, noise=0.3)
    params = sj.SLAMParams.create(20.0, 20.0, 1.0, 1.0)
    alg = sj.slam(problem, g)
    batch = sj.run(alg, params, data, x0, y0, num_steps=100, log_every=50,
                   seeds=[5, 6], progress=False)
    assert batch.history["grad_F_sq"].shape == (2, 3)
    for j, s in enumerate([5, 6]):
        one = sj.run(alg, params, data, x0, y0, num_steps=100, log_every=50, seed=s,
                     progress=False)
        np.testing.assert_allclose(batch.state.x[j], one.state.x, rtol=1e-5, atol=1e-6)


def test_changing_numbers_does_not_retrace():
    n = 8
    g = graphs.ring(n)
    problem, data, x0, y0 = make_quadratic(n, 3, 3, seed=0, noise=0.1)
    cfg = sj.SLAMConfig()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def stepper(params, state, data, key):
        return sj.step(problem, cfg, g, params, state, data, key)

    state = sj.init(x0, y0)
    for a, b, r, gm in [(10.0, 10.0, 1.0, 1.0), (11.0, 12.0, 0.5, 2.0), (30.0, 9.0, 0.1, 0.7)]:
        stepper(sj.SLAMParams.create(a, b, r, gm), state, data, jax.random.key(1))
    data2 = data._replace(agents=jax.tree.map(lambda v: v * 1.1, data.agents),
                          shared={**data.shared, "sigma": jnp.asarray(0.5, jnp.float32)})
    stepper(sj.SLAMParams.create(10.0, 10.0, 1.0, 1.0), state, data2, jax.random.key(2))

    # the runner's compiled chunk is reused across hyperparameters and data as well. The
    # runner compiles ahead of time (``lower().compile()``), which bypasses the jit dispatch
    # cache, so ``_chunk._cache_size()`` no longer counts its programs: count the traces of
    # the algorithm's step instead (an Algorithm with a plain-function step, public API).
    alg = sj.slam(problem, g, cfg)
    traces = []

    def counted_step(key, state, params, data):
        traces.append(1)
        return alg.step(key, state, params, data)

    counted = sj.Algorithm(alg.init, counted_step, alg.metrics, alg.check)
    sj.run(counted, sj.SLAMParams.create(20.0, 20.0, 1.0, 1.0), data, x0, y0,
           num_steps=40, log_every=20, progress=False)
    size = len(traces)
    assert size >= 1
    sj.run(counted, sj.SLAMParams.create(25.0, 21.0, 0.5, 2.0), data2, x0, y0,
           num_steps=40, log_every=20, progress=False)
    assert len(traces) == size


# ----------------------------------------------------------------------------------------
# stability bound and divergence handling
# ----------------------------------------------------------------------------------------
def _pure_consensus(n_graph):
    """A zero-gradient problem: only the consensus dynamics act."""
    zero = lambda x, y, d, b: 0.0 * (jnp.sum(x) + jnp.sum(y ** 2))  # noqa: E731
    problem = sj.BilevelProblem(f=zero, g=lambda x, y, d, b: 0.5 * jnp.sum(y ** 2) * 0.0 +
                                0.5 * 1e-3 * jnp.sum(y ** 2))
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.standard_normal((n_graph.n, 2)))
    y0 = jnp.asarray(rng.standard_normal((n_graph.n, 2)))
    return problem, x0, y0


@pytest.mark.parametrize("g,beta,rho_ok,rho_bad", [
    (graphs.ring(16), 10.0, 2.0, 4.0),        # λ_max = 4: bound ρ < 3.33
    (graphs.complete(16), 10.0, 0.5, 1.0),   # λ_max = 16: bound ρ < 0.83
])
def test_stability_bound_predicts_divergence(x64, g, beta, rho_ok, rho_bad):
    assert rho_ok < sj.stability_bound(g.lam_max, beta, 1.0) < rho_bad
    problem, x0, y0 = _pure_consensus(g)
    data = sj.ProblemData()
    cfg = sj.SLAMConfig(variant="slam_l", solver=sj.CG(2))  # LL consensus only
    alg = sj.slam(problem, g, cfg)
    ok = sj.run(alg, sj.SLAMParams.create(10.0, beta, rho_ok, 1.0), data, x0, y0,
                num_steps=4000, log_every=100, progress=False)
    assert ok.diverged_at is None and ok.final()["consensus_y"] < 1e-6
    with pytest.warns(sj.StabilityWarning, match=r"rho <"):
        with pytest.warns(sj.DivergenceWarning, match="non-finite"):
            bad = sj.run(alg, sj.SLAMParams.create(10.0, beta, rho_bad, 1.0), data,
                         x0, y0, num_steps=4000, log_every=100, progress=False)
    assert bad.diverged_at is not None
    assert np.isfinite(np.asarray(bad.state.y)).all()  # the last finite state is kept
    assert len(bad.steps) == bad.history["consensus_y"].shape[-1]


# ----------------------------------------------------------------------------------------
# property test: one step equals the dense formula of eq. (5), duals stay in range(L)
# ----------------------------------------------------------------------------------------
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(kind=st.sampled_from(["ring", "star", "complete", "path", "erdos_renyi", "small_world"]),
       n=st.integers(3, 12), dx=st.integers(1, 3), dy=st.integers(1, 3), m=st.integers(1, 3),
       variant=st.sampled_from(VARIANTS), seed=st.integers(0, 3))
def test_property_step_matches_dense_eq5(kind, n, dx, dy, m, variant, seed):
    with jax.enable_x64(True):
        g = graphs.make_graph(kind, n, seed=seed) if kind != "erdos_renyi" else \
            graphs.erdos_renyi(n, p=min(1.0, 4 * np.log(n) / n), seed=seed)
        problem, data, x0, y0 = make_quadratic(n, dx, dy, m, seed=seed, dtype=jnp.float64,
                                               homogeneous=bool(seed % 2))
        a, b, r, gm = 15.0, 12.0, 0.3, 1.3
        params = sj.SLAMParams.create(a, b, r, gm)
        cfg = sj.SLAMConfig(variant=variant, solver=sj.Exact())
        s1 = _step(problem, cfg, g, params, sj.init(x0, y0), data, jax.random.key(0))
        s2 = _step(problem, cfg, g, params, s1, data, jax.random.key(0))
        L = graphs.laplacian_dense(g)
        d = _np_data(data, n, bool(seed % 2))
        cx, cy = sj.VARIANTS[variant]
        mix = lambda v: np.einsum("ij,j...->i...", L, v)  # noqa: E731
        x, y = np.asarray(s1.x), np.asarray(s1.y)
        ux, uy = np.asarray(s1.u_x), np.asarray(s1.u_y)
        y_new = y - (_np_hg(d, x, y) + cy * (gm * uy + r * gm * mix(y))) / b
        x_new = x - (_np_hf(d, x, y_new) + cx * (gm * ux + r * gm * mix(x))) / a
        np.testing.assert_allclose(s2.y, y_new, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(s2.x, x_new, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(s2.u_y, uy + cy * (r / gm) * mix(y_new), atol=1e-10)
        # u = Aᵀλ lies in range(L): its agent-sum vanishes
        np.testing.assert_allclose(np.sum(np.asarray(s2.u_x), axis=0), 0.0, atol=1e-10)
        np.testing.assert_allclose(np.sum(np.asarray(s2.u_y), axis=0), 0.0, atol=1e-10)
