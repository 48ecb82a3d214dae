"""Derivatives of whole SLAM runs (slamjax.diff) against finite differences, in float64.

Setup: 5 agents on a ring, d_x = d_y = 2, one LL task, exact oracle; 1/α = 0.05, 1/β = 0.1,
ρ = 1, γ = 1, so ρ·λ_max(L)·(1 + 2γ) = 10.9 < 4β = 40 (stable, see slamjax.stability_bound).
The loss is ``quadratic.ul_objective_loss(per_agent=True)`` = (1/n) Σ_i F(x_i) (LL in consensus
except for SLAM-U): unlike F(x̄) it depends on ρ and γ (for a homogeneous quadratic the network
average x̄ evolves independently of the consensus terms).

Differentiated inputs: α, β, ρ, γ, the LL data arrays ``b`` (data.agents["b"]) and ``H`` (the LL
Hessian, data.shared["H"], used symmetrised; with CG its derivative is the implicit one of
``custom_linear_solve``) and x0. Central differences are taken for every scalar of these at
once: one compiled ``vmap(value_and_grad)`` over [z, z ± h·e_i] (h = 1e-5·max(1, |z_i|)) gives
the gradient at z and the differences. The T = 50 loss has not converged (UL contraction ≈ 0.97
per step), so the derivatives (norms 1e-6 … 1) sit far above the difference round-off
(≈ 1e-11); observed relative errors are ≤ 1e-6. At T = 1000 the final state has converged
(hyperparameter derivatives → 0), so the long-horizon loss averages the same loss over the
trajectory (``log_every=10``), whose derivatives stay finite and non-zero.

Also: ``Inputs`` filters against names, the adjoint objects (``Reverse``, ``Checkpointed``,
``Forward``) against each other, static arguments and losses, and the same machinery on another
registered algorithm (``slamjax.baselines.dsgd``).

Most of the time is XLA compilation; results are cached per worker (``_grad_and_fd``, ``_run``).
The file needs ≈ 60–70 s of CPU in total (≈ 40 s wall with ``-n 2`` on two idle cores).
"""

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import slamjax as sj
from slamjax import diff
from slamjax.baselines import DSGDParams, dsgd
from slamjax.diff import (DIFFERENTIABLE, NotDifferentiableError, check_wrt, final_loss_fn,
                          grad_run, mean_f, trajectory_loss_fn, value_and_grad_run)
from slamjax.problems import quadratic
from slamjax.problems.quadratic import make_quadratic

N, DX, DY = 5, 2, 2
PARAMS = dict(alpha=20.0, beta=10.0, rho=1.0, gamma=1.0)
SOLVERS = {"cg": sj.CG(DY), "neumann": sj.Neumann(20, 0.2)}  # CG with maxiter = d_y is exact
VARIANTS = ("slam", "slam_l", "slam_u")
GROUPS = ("alpha", "beta", "rho", "gamma", "b", "H", "x0")


def LOSS(variant):
    """(1/n) Σ_i F(x_i); SLAM-U has no LL consensus, which changes y*(x). Cached factory: the
    same function object per variant (one compilation)."""
    return quadratic.ul_objective_loss(consensus_y=(variant != "slam_u"), per_agent=True)


def _setup():
    problem, data, x0, y0 = make_quadratic(N, DX, DY, 1, seed=3, dtype=jnp.float64)
    return problem, sj.graphs.ring(N), data, x0, y0


def _alg(variant, solver):
    problem, graph, _, _, _ = _setup()
    return sj.slam(problem, graph, sj.SLAMConfig(variant, SOLVERS[solver]))


def _inputs(data, x0):
    z = {k: jnp.asarray(v, jnp.float64) for k, v in PARAMS.items()}
    z["b"] = data.agents["b"]
    z["H"] = data.shared["H"]  # used as (H + Hᵀ)/2, so every perturbation stays symmetric
    z["x0"] = x0
    return z


# Faster XLA compilation for these tiny programs (same numerics to round-off): most of this
# file's time is compiling, not running.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
REL_STEP = 1e-5  # central-difference step, relative to max(1, |z_i|)


def _loss(variant, solver, T, log_every=None, checkpoint_every=None):
    return final_loss_fn(_alg(variant, solver), T, LOSS(variant), log_every=log_every,
                         adjoint=diff.Checkpointed(checkpoint_every) if checkpoint_every
                         else None)


def _objective(variant, solver, T, log_every=None, checkpoint_every=None):
    """z = {alpha, beta, rho, gamma, b, x0} -> loss of the run."""
    _, _, data, _, y0 = _setup()
    loss = _loss(variant, solver, T, log_every, checkpoint_every)
    key = jax.random.key(0)

    def objective(z):
        params = sj.SLAMParams(z["alpha"], z["beta"], z["rho"], z["gamma"])
        H = 0.5 * (z["H"] + jnp.swapaxes(z["H"], -1, -2))
        d = sj.ProblemData(shared={**data.shared, "H": H}, agents={**data.agents, "b": z["b"]})
        return loss(params, d, z["x0"], y0, key)

    return objective


@lru_cache(maxsize=None)
def _grad_and_fd(variant, solver, T, log_every=None, checkpoint_every=None):
    """Value, reverse-mode gradient and central differences of the objective at z.

    One compiled program: ``vmap(value_and_grad)`` over [z, z + h e_1, …, z − h e_k]; the
    gradient is read at z and the differences from the values (cached per worker, shared by
    the tests below)."""
    _, _, data, x0, _ = _setup()
    z = _inputs(data, x0)
    flat, unravel = ravel_pytree(z)
    h = REL_STEP * jnp.maximum(1.0, jnp.abs(flat))
    pts = jnp.concatenate([flat[None], flat + jnp.diag(h), flat - jnp.diag(h)])
    fn = jax.jit(jax.vmap(jax.value_and_grad(_objective(variant, solver, T, log_every,
                                                        checkpoint_every))),
                 compiler_options=FAST_COMPILE)
    values, grads = fn(jax.vmap(unravel)(pts))
    k = flat.size
    fd = unravel((values[1:k + 1] - values[k + 1:]) / (2 * h))
    grad = jax.tree.map(lambda g: g[0], grads)
    to_np = lambda t: {name: np.asarray(v) for name, v in t.items()}  # noqa: E731
    return float(values[0]), to_np(grad), to_np(fd)


def _rel(a, b):
    a, b = np.ravel(np.asarray(a)), np.ravel(np.asarray(b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _check_fd(variant, solver, T, log_every, tol):
    value, grad, fd = _grad_and_fd(variant, solver, T, log_every)
    assert np.isfinite(value)
    for name in GROUPS:
        assert np.all(np.isfinite(grad[name])), name
        assert np.linalg.norm(fd[name]) > 1e-8, f"{name}: derivative ~ 0, bad test"
        err = _rel(grad[name], fd[name])
        assert err <= tol, f"{variant}/{solver} T={T} d/d{name}: rel. error {err:.2e} > {tol}"


# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_matches_finite_differences_T50(x64, variant, solver):
    _check_fd(variant, solver, 50, None, 1e-5)


@pytest.mark.parametrize("variant,solver", [("slam", "cg"), ("slam_l", "neumann"),
                                            ("slam_u", "cg")])
def test_grad_long_horizon_T1000(x64, variant, solver):
    """T = 1000, trajectory-averaged loss: finite and within 1e-3 of finite differences."""
    _check_fd(variant, solver, 1000, 10, 1e-3)


def test_forward_mode_jacfwd_matches_reverse(x64):
    """jax.jacfwd of the pure run loss (every input scalar a JVP tangent; CG: the JVP rule of
    custom_linear_solve) equals reverse mode."""
    _, _, data, x0, _ = _setup()
    z = _inputs(data, x0)
    value, grad, _ = _grad_and_fd("slam", "cg", 50)
    jac = jax.jit(jax.jacfwd(_objective("slam", "cg", 50)), compiler_options=FAST_COMPILE)(z)
    for name in GROUPS:
        np.testing.assert_allclose(jac[name], grad[name], rtol=1e-10, atol=1e-15, err_msg=name)


def test_forward_mode_value_and_grad_run_matches_reverse(x64):
    """value_and_grad_run(adjoint=Forward()) (vmapped jax.jvp, Neumann: unrolled series) equals
    reverse mode, including a data leaf given by its path."""
    problem, graph, data, x0, y0 = _setup()
    value, grad, _ = _grad_and_fd("slam_l", "neumann", 50)
    wrt = ("alpha", "beta", "rho", "gamma", "data.agents.b", "data.shared.H", "x0")
    v, g = value_and_grad_run(_alg("slam_l", "neumann"), sj.SLAMParams(**PARAMS), data, x0, y0,
                              jax.random.key(0), num_steps=50, loss=LOSS("slam_l"), wrt=wrt,
                              adjoint=diff.Forward())
    assert set(g) == set(wrt)
    np.testing.assert_allclose(v, value, rtol=1e-13)
    for name in PARAMS:
        np.testing.assert_allclose(g[name], grad[name], rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(g["data.agents.b"], grad["b"], rtol=1e-10)
    np.testing.assert_allclose(g["x0"], grad["x0"], rtol=1e-10)
    # the test objective uses (H + Hᵀ)/2, so its H-gradient is the symmetrised one
    gH = np.asarray(g["data.shared.H"])
    np.testing.assert_allclose(0.5 * (gH + np.swapaxes(gH, -1, -2)), grad["H"], rtol=1e-10)


@pytest.mark.parametrize("variant,solver,T,log_every,ck", [
    ("slam", "cg", 50, None, 7),           # 7 chunks of 7 steps + a remainder of 1
    ("slam_l", "neumann", 1000, 10, 32),   # trajectory loss: checkpointed segments
])
def test_checkpointed_gradient_equals_plain(x64, variant, solver, T, log_every, ck):
    v0, g0, _ = _grad_and_fd(variant, solver, T, log_every)
    v1, g1, _ = _grad_and_fd(variant, solver, T, log_every, ck)
    np.testing.assert_allclose(v1, v0, rtol=1e-13)
    for name in GROUPS:
        np.testing.assert_allclose(g1[name], g0[name], rtol=1e-12, atol=1e-15, err_msg=name)


NAMED = ("params", "data", "x0")
ADJOINTS = {"reverse": diff.Reverse(), "checkpointed": diff.Checkpointed(every=7),
            "forward": diff.Forward()}


@lru_cache(maxsize=None)
def _run(adjoint: str, wrt=NAMED):
    """value_and_grad_run of SLAM/CG, T = 50 (cached per worker; adjoint by name because
    Reverse() == Forward() as empty tuples)."""
    _, _, data, x0, y0 = _setup()
    return value_and_grad_run(_alg("slam", "cg"), sj.SLAMParams(**PARAMS), data, x0, y0,
                              jax.random.key(0), num_steps=50, loss=LOSS("slam"), wrt=wrt,
                              adjoint=ADJOINTS[adjoint])


def test_value_and_grad_run_named_arguments(x64):
    """The named-argument helper (reverse mode) agrees with jax.grad of the pure function,
    returns gradients shaped like the arguments, and does not recompile for new values."""
    from slamjax.diff import compiled_programs

    _, _, data, x0, y0 = _setup()
    params = sj.SLAMParams(**PARAMS)  # Python floats: converted to float64 arrays
    v_ref, g_ref, _ = _grad_and_fd("slam", "cg", 50)

    value, g = _run("reverse")  # value_and_grad_run(alg, params, ..., wrt=NAMED)
    np.testing.assert_allclose(value, v_ref, rtol=1e-13)
    assert set(g) == {"params", "data", "x0"}
    assert isinstance(g["params"], sj.SLAMParams)
    assert jax.tree.structure(g["data"]) == jax.tree.structure(data)
    for name in PARAMS:
        np.testing.assert_allclose(getattr(g["params"], name), g_ref[name], rtol=1e-10)
    np.testing.assert_allclose(g["data"].agents["b"], g_ref["b"], rtol=1e-10)
    gH = np.asarray(g["data"].shared["H"])
    np.testing.assert_allclose(0.5 * (gH + np.swapaxes(gH, -1, -2)), g_ref["H"], rtol=1e-10)
    np.testing.assert_allclose(g["x0"], g_ref["x0"], rtol=1e-10)

    before = compiled_programs()
    alg = _alg("slam", "cg")  # a new Algorithm object with the same static parts
    for rho in (0.5, 0.7):
        grad_run(alg, params._replace(rho=rho), data, x0, y0, jax.random.key(0), num_steps=50,
                 loss=LOSS("slam"), wrt=NAMED)
    assert compiled_programs() == before


def test_static_arguments_raise_clear_error(x64):
    problem, graph, data, x0, y0 = _setup()
    alg = _alg("slam", "cg")
    params = sj.SLAMParams(**PARAMS)
    for bad in ("graph", "num_steps", "solver", "config", "variant", "key", "checkpoint_every",
                "eta", "K", "maxiter", "loss", "log_every", "nonsense"):
        with pytest.raises(NotDifferentiableError) as info:
            value_and_grad_run(alg, params, data, x0, y0, num_steps=10, loss="consensus_x", wrt=("rho", bad))
        msg = str(info.value)
        assert repr(bad) in msg
        for ok in ("'alpha'", "'beta'", "'rho'", "'gamma'", "'data'", "'x0'", "'y0'"):
            assert ok in msg, (bad, msg)
    # static objects instead of names: the graph, the configuration, the problem, the algorithm
    for bad in (graph, sj.SLAMConfig(), problem, alg):
        with pytest.raises(NotDifferentiableError, match="static") as info:
            value_and_grad_run(alg, params, data, x0, y0, num_steps=10, loss="consensus_x", wrt=("rho", bad))
        assert repr(type(bad).__name__) in str(info.value)
        with pytest.raises(NotDifferentiableError, match="static"):
            check_wrt(bad)
    # it is both a TypeError and a ValueError
    with pytest.raises(TypeError, match="static"):
        check_wrt(["graph"])
    with pytest.raises(ValueError, match="differentiable inputs"):
        check_wrt(graph)  # a Graph object instead of a name
    # the problem where the algorithm belongs: a plain TypeError pointing to slamjax.slam
    with pytest.raises(TypeError, match="Algorithm") as info:
        value_and_grad_run(problem, params, data, x0, y0, num_steps=10, loss="consensus_x", wrt=("rho",))
    assert not isinstance(info.value, NotDifferentiableError)
    assert "slamjax.slam" in str(info.value)
    # a data path that does not exist, and integer data, are refused before compiling
    with pytest.raises(NotDifferentiableError, match="no entry"):
        value_and_grad_run(alg, params, data, x0, y0, num_steps=10, loss="consensus_x", wrt="data.agents.nope")
    int_data = data._replace(shared={**data.shared, "idx": jnp.arange(3)})
    with pytest.raises(NotDifferentiableError, match="floating"):
        value_and_grad_run(alg, params, int_data, x0, y0, num_steps=10, loss="consensus_x", wrt="data.shared.idx")
    # num_steps traced by jax.grad of a wrapper
    with pytest.raises(NotDifferentiableError, match="num_steps"):
        jax.grad(lambda T: final_loss_fn(alg, T, LOSS("slam"))(params, data, x0, y0))(10.0)
    # generic: the params' own fields plus the inputs (nothing SLAM-specific is hard-coded)
    assert set(("x0", "y0", "data")) <= set(DIFFERENTIABLE)
    assert check_wrt(("alpha", "beta", "rho", "gamma", "x0"), params._fields) == \
        ("alpha", "beta", "rho", "gamma", "x0")


def test_filter_selecting_integer_data_raises(x64):
    """An Inputs filter whose selection reaches an integer data leaf is refused before
    compiling, like the name of that leaf."""
    _, _, data, x0, y0 = _setup()
    int_data = data._replace(shared={**data.shared, "idx": jnp.arange(3)})
    wrt = diff.Inputs(data=sj.ProblemData(shared=True, agents=False))
    with pytest.raises(NotDifferentiableError, match="floating"):
        value_and_grad_run(_alg("slam", "cg"), sj.SLAMParams(**PARAMS), int_data, x0, y0,
                           num_steps=10, loss=LOSS("slam"), wrt=wrt)


def test_loss_arguments(x64):
    problem, graph, data, x0, y0 = _setup()
    alg = sj.slam(problem, graph, sj.SLAMConfig())
    with pytest.raises(ValueError, match="log_every"):
        trajectory_loss_fn(alg, 10, "consensus_x", log_every=3)
    with pytest.raises(TypeError, match="Graph"):
        sj.slam(problem, "ring", sj.SLAMConfig())
    with pytest.raises(TypeError, match="Algorithm"):
        final_loss_fn(problem, 10, "consensus_x")  # the problem where the algorithm belongs
    with pytest.raises(ValueError, match="unknown loss"):
        jax.eval_shape(final_loss_fn(alg, 2, loss="nope"), sj.SLAMParams(**PARAMS), data, x0,
                       y0)
    # metric names and callables are accepted; with_state returns the final state too
    loss = final_loss_fn(alg, 2, loss="consensus_x", with_state=True)
    out, state = jax.eval_shape(loss, sj.SLAMParams(**PARAMS), data, x0, y0)
    assert out.shape == () and state.x.shape == x0.shape
    params = sj.SLAMParams(**PARAMS)
    alg_u = sj.slam(problem, graph, sj.SLAMConfig("slam_u"))
    for name in (quadratic.ul_objective_loss(consensus_y=False),
                 quadratic.ul_objective_loss(consensus_y=False, per_agent=True),
                 mean_f(problem), "grad_F_sq", lambda s, d: jnp.sum(s.y)):
        loss = final_loss_fn(alg_u, 2, loss=name)
        assert jax.eval_shape(loss, params, data, x0, y0).shape == ()
    # the quadratic closed forms refuse data of another layout
    toy = sj.BilevelProblem(f=lambda x, y, d, b: jnp.sum(x ** 2) + jnp.sum(y ** 2),
                            g=lambda x, y, d, b: jnp.sum((y - x[0]) ** 2))
    toy_alg = sj.slam(toy, graph, sj.SLAMConfig())
    with pytest.raises(ValueError, match="closed form"):
        jax.eval_shape(final_loss_fn(toy_alg, 2, loss=quadratic.ul_objective_loss()),
                       params, sj.ProblemData(), x0, y0)
    loss = final_loss_fn(toy_alg, 2, loss=mean_f(toy))
    assert jax.eval_shape(loss, params, sj.ProblemData(), x0, y0).shape == ()


# ----------------------------------------------------------------------------------------
# Inputs filters, adjoint objects, another algorithm
# ----------------------------------------------------------------------------------------
def test_inputs_filter_matches_names(x64):
    """wrt=Inputs(...) returns an Inputs of gradients (None where not selected) equal to the
    name-based ones."""
    wrt = diff.Inputs(params=sj.SLAMParams(alpha=True, beta=False, rho=True, gamma=False),
                      x0=True)
    value, g = _run("reverse", wrt)
    v_ref, g_ref = _run("reverse")
    assert isinstance(g, diff.Inputs) and isinstance(g.params, sj.SLAMParams)
    assert g.params.beta is None and g.params.gamma is None
    assert g.data is None and g.y0 is None
    np.testing.assert_allclose(value, v_ref, rtol=1e-13)
    np.testing.assert_allclose(g.params.alpha, g_ref["params"].alpha, rtol=1e-10)
    np.testing.assert_allclose(g.params.rho, g_ref["params"].rho, rtol=1e-10)
    np.testing.assert_allclose(g.x0, g_ref["x0"], rtol=1e-10)
    assert np.shape(g.x0) == np.shape(_setup()[3])


@pytest.mark.parametrize("adjoint,rtol", [("checkpointed", 1e-12), ("forward", 1e-10)])
def test_adjoint_objects_match_reverse(x64, adjoint, rtol):
    """adjoint=Checkpointed(every=7) (7 chunks of 7 steps + 1) and adjoint=Forward() (one JVP
    per scalar of params, data and x0) give the gradient of adjoint=Reverse()."""
    v0, g0 = _run("reverse")
    v1, g1 = _run(adjoint)
    assert set(g1) == set(NAMED)
    assert jax.tree.structure(g1) == jax.tree.structure(g0)
    np.testing.assert_allclose(v1, v0, rtol=1e-13)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-15,
                                   err_msg=jax.tree_util.keystr(path))


def test_value_and_grad_run_other_algorithm_dsgd(x64):
    """The same machinery differentiates another registered algorithm: decentralized SGD
    (params DSGDParams), d/d lr_x of the loss after 5 steps against a central difference."""
    problem, graph, data, x0, y0 = _setup()
    alg = dsgd(problem, graph)
    params = DSGDParams.create(0.05, 0.1, dtype=jnp.float64)
    loss, T, key = LOSS("slam"), 5, jax.random.key(0)
    value, g = value_and_grad_run(alg, params, data, x0, y0, key, num_steps=T, loss=loss,
                                  wrt=("lr_x",))
    assert set(g) == {"lr_x"}
    run = jax.jit(final_loss_fn(alg, T, loss), compiler_options=FAST_COMPILE)
    np.testing.assert_allclose(value, run(params, data, x0, y0, key), rtol=1e-13)
    h = 1e-5
    fd = (run(params._replace(lr_x=params.lr_x + h), data, x0, y0, key)
          - run(params._replace(lr_x=params.lr_x - h), data, x0, y0, key)) / (2 * h)
    assert abs(float(fd)) > 1e-8, "derivative ~ 0, bad test"
    np.testing.assert_allclose(g["lr_x"], fd, rtol=1e-6)
