"""Decentralized meta-learning (ANIL on MNIST, SLAM-U): learning, bad input, hypergradient.

Fast (CI): a few hundred MNIST images, tiny horizons; the dense hypergradient check runs in
float64 on synthetic images. Only the public library API: SLAM-U through ``slamjax.run``
(seeds × grid lanes, one start per seed, early-stop callback), the decentralized-SGD
reference through ``slamjax.baselines.dsgd``, the Table-2 analysis through
``slamjax.problems.meta_anil``.
"""

from __future__ import annotations

import gzip
import math
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import slamjax as sj
from slamjax.baselines import DSGDParams, dsgd
from slamjax.data import CorruptDataError, DataNotFoundError
from slamjax.problem import ProblemData
from slamjax.problems import meta_anil as MA

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST not found at {SHARED_MNIST}")


def _synthetic(n_train=400, n_test=100, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 784), dtype=np.uint8),
            rng.integers(0, 10, n_train).astype(np.int32),
            rng.integers(0, 256, (n_test, 784), dtype=np.uint8),
            rng.integers(0, 10, n_test).astype(np.int32))


@pytest.fixture(scope="module")
def mnist_small():
    tr_x, tr_y, te_x, te_y = MA.load_mnist_splits(SHARED_MNIST)
    return tr_x[:600], tr_y[:600], te_x[:500], te_y[:500]


def _stacked_starts(n, seeds):
    """x0, y0 with a leading seed axis (one flax initialisation per seed: batched_init)."""
    inits = [MA.init_params(n, s) for s in seeds]
    return tuple(jax.tree.map(lambda *a: jnp.stack(a), *[i[k] for i in inits]) for k in (0, 1))


# ----------------------------------------------------------------------------------------
# learning on a tiny configuration
# ----------------------------------------------------------------------------------------
@needs_mnist
def test_tiny_run_learns_and_reaches_consensus(mnist_small):
    n = 3
    problem, data, _, y0 = MA.make_meta_anil(n, per_agent=150, batch=16, arrays=mnist_small,
                                             local_test=100)
    # agents start from different bodies so that the UL consensus error starts large
    x0 = jax.tree.map(lambda *a: jnp.stack(a),
                      *[jax.tree.map(lambda v: v[0], MA.init_params(1, s)[0]) for s in range(n)])
    graph = sj.graphs.erdos_renyi(n, seed=0)
    params = sj.SLAMParams.create(100.0, 10.0, 10.0, 1.0)
    alg = sj.slam(problem, graph, sj.SLAMConfig("slam_u", solver=sj.Neumann(10, 1 / 160)))
    res = sj.run(alg, params, data, x0, y0, num_steps=240, log_every=40, seeds=[0, 1],
                 progress=False)
    acc, cons = res.history["test_acc"], res.history["consensus_x"]
    assert acc.shape == (2, 7)
    assert np.all(acc[:, 0] < 0.25)                      # chance level at the start
    assert np.all(acc[:, -1] > 0.6), acc[:, -1]           # well above chance (0.1)
    assert np.all(cons[:, -1] < 0.05 * cons[:, 0]), cons  # disagreement shrinks > 20×
    assert np.all(res.history["consensus_y"][:, -1] > 0)  # heads stay personal (SLAM-U)
    for key in ("test_acc_min", "test_acc_avg", "test_acc_local", "test_loss"):
        assert np.isfinite(res.history[key]).all()
    assert res.history["test_loss"][:, -1].mean() < res.history["test_loss"][:, 0].mean()


@needs_mnist
def test_sampling_stays_in_own_shard(mnist_small):
    problem, data, _, _ = MA.make_meta_anil(2, per_agent=50, batch=8, arrays=mnist_small)
    agent1 = ProblemData(shared=data.shared, agents=jax.tree.map(lambda a: a[1], data.agents))
    b = jax.jit(problem.sample)(jax.random.key(3), agent1)
    assert b["images"].shape == (8, 784) and b["images"].dtype == jnp.uint8
    shard = {bytes(r) for r in np.asarray(data.agents["images"][1])}
    assert all(bytes(r) in shard for r in np.asarray(b["images"]))
    # shards are disjoint draws of the training set
    s0 = {bytes(r) for r in np.asarray(data.agents["images"][0])}
    assert len(s0 & shard) <= 1  # (MNIST has a few duplicate images)


# ----------------------------------------------------------------------------------------
# eq. (23) for the ANIL problem against a dense computation (float64)
# ----------------------------------------------------------------------------------------
def _one_agent(problem, data, x0, y0, batch_key=0):
    """Agent 0's data, a perturbed (x, y) and one minibatch (one compiled program)."""
    @jax.jit
    def pick(data, x0, y0):
        agent = ProblemData(shared=data.shared, agents=jax.tree.map(lambda a: a[0], data.agents))
        kx, ky = jax.random.split(jax.random.key(7))
        x = jax.tree.map(lambda a: a[0] + 0.2 * jax.random.normal(kx, a.shape[1:], a.dtype), x0)
        y = jax.tree.map(lambda a: a[0] + 0.5 * jax.random.normal(ky, a.shape[1:], a.dtype), y0)
        return agent, x, y, problem.sample(jax.random.key(batch_key), agent)
    return pick(data, x0, y0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_hypergradient_matches_dense(x64, reduction):
    problem, data, x0, y0 = MA.make_meta_anil(2, per_agent=40, batch=12, arrays=_synthetic(),
                                              reduction=reduction, dtype=jnp.float64)
    agent, x, y, b = _one_agent(problem, data, x0, y0)
    assert jax.tree.leaves(x)[0].dtype == jnp.float64

    # dense reference: Hessian of the LL loss w.r.t. the head, cross term by jax.jacobian
    xf, unx = ravel_pytree(x)
    yf, uny = ravel_pytree(y)
    g = lambda xv, yv: problem.g(unx(xv), uny(yv), agent, b)  # noqa: E731
    f = lambda xv, yv: problem.f(unx(xv), uny(yv), agent, b)  # noqa: E731
    @jax.jit
    def dense(xf, yf):
        H = jax.hessian(g, argnums=1)(xf, yf)                            # (330, 330)
        J = jax.jacobian(jax.grad(g, argnums=1), argnums=0)(xf, yf)       # (330, 25120)
        fx, fy = jax.grad(f, argnums=(0, 1))(xf, yf)
        v = jnp.linalg.solve(H, fy)
        return H, J, v, fx - J.T @ v

    H, J, v, ref = dense(xf, yf)
    assert np.linalg.eigvalsh(np.asarray(H)).min() >= 0.01 - 1e-10  # l2 keeps g strongly convex

    hyper = jax.jit(sj.hypergradient, static_argnums=(0, 5))
    for solver, tol in ((sj.Exact(), 1e-9), (sj.CG(400, tol=1e-14), 1e-6)):
        h = ravel_pytree(hyper(problem, x, y, agent, b, solver))[0]
        err = float(jnp.linalg.norm(h - ref) / jnp.linalg.norm(ref))
        assert err < tol, (solver, err)
    # the hand-written products equal autodiff's VJP and the dense Hessian
    vt = uny(v)
    np.testing.assert_allclose(ravel_pytree(MA.hvp_yy(x, y, agent, b, vt))[0], H @ v,
                               rtol=1e-9, atol=1e-12)
    _, vjp = jax.vjp(lambda xx: jax.grad(problem.g, argnums=1)(xx, y, agent, b), x)
    np.testing.assert_allclose(ravel_pytree(problem.cross_xy(x, y, agent, b, vt))[0],
                               ravel_pytree(vjp(vt)[0])[0], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ravel_pytree(problem.cross_xy(x, y, agent, b, vt))[0], J.T @ v,
                               rtol=1e-9, atol=1e-12)


def test_sum_and_mean_losses_differ_by_the_batch_size(x64):
    arrays = _synthetic()
    out = {}
    for red in ("sum", "mean"):
        problem, data, x0, y0 = MA.make_meta_anil(2, per_agent=40, batch=10, arrays=arrays,
                                                  reduction=red, dtype=jnp.float64)
        agent, x, y, b = _one_agent(problem, data, x0, y0)
        out[red] = jax.jit(lambda x, y, agent, b: (
            problem.f(x, y, agent, b), problem.g(x, y, agent, b)
            - 0.5 * MA.L2 * sum(jnp.sum(l ** 2) for l in jax.tree.leaves(y))))(x, y, agent, b)
    np.testing.assert_allclose(out["sum"][0], 10 * out["mean"][0], rtol=1e-12)
    np.testing.assert_allclose(out["sum"][1], 10 * out["mean"][1], rtol=1e-12)


# ----------------------------------------------------------------------------------------
# bad input: clear errors before anything is compiled
# ----------------------------------------------------------------------------------------
def test_wrong_data_path(tmp_path):
    with pytest.raises(DataNotFoundError, match="not found"):
        MA.make_meta_anil(2, path=tmp_path / "no-such-dir")


def test_corrupt_file(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / (stem + ".gz")).write_bytes(gzip.compress(b"\x00\x00\x08\x03 definitely not MNIST"))
    with pytest.raises(CorruptDataError, match="md5 mismatch"):
        MA.make_meta_anil(2, path=tmp_path)


def test_too_many_agents_for_the_data():
    with pytest.raises(ValueError, match=r"training set has only 400.*at most n = 3"):
        MA.make_meta_anil(5, per_agent=128, arrays=_synthetic(400))
    with pytest.raises(ValueError, match="n=500 agents but the training set has only 400"):
        MA.make_meta_anil(500, arrays=_synthetic(400))


def test_batch_larger_than_share_fails_before_loading(tmp_path):
    # the path does not exist: the size error must come first, without touching the data
    with pytest.raises(ValueError, match=r"batch=32 is larger than an agent's share"):
        MA.make_meta_anil(2, per_agent=16, batch=32, path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="larger than an agent's share"):
        MA.make_meta_anil(100, batch=32, arrays=_synthetic(400))  # 400 // 100 = 4 each


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be an integer"),
    (dict(n=2, batch=0), "batch must be an integer"),
    (dict(n=2, l2=0.0), "l2 must be"),
    (dict(n=2, reduction="median"), "reduction must be"),
    (dict(n=2, test_size=1000), "test_size=1000 exceeds"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MA.make_meta_anil(arrays=_synthetic(), **kwargs)


def test_bad_input_reported_before_loading_or_compiling(tmp_path, monkeypatch):
    # what the experiment reports (exit code 2) comes from the library, before any run
    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("a run was started despite bad input")

    monkeypatch.setattr(sj, "run", boom)
    with pytest.raises(DataNotFoundError, match="mnist data not found"):
        MA.load_mnist_splits(tmp_path / "missing")
    arrays = _synthetic(400, 2000)
    with pytest.raises(ValueError, match="training set has only 400"):
        for n in (2, 4):  # the experiment builds every n before running any
            MA.make_meta_anil(n, per_agent=150, batch=32, arrays=arrays, test_size=2000)
    with pytest.raises(ValueError, match="larger than an agent's share"):
        MA.make_meta_anil(2, per_agent=128, batch=300, arrays=arrays, test_size=2000)
    assert not list(tmp_path.iterdir())


def test_crossing_and_slope_helpers():
    steps = np.array([0, 10, 20, 30])
    assert MA.first_crossing(steps, [0.1, 0.9, 0.94, 0.95], 0.935) == pytest.approx(18.75)
    assert np.isnan(MA.first_crossing(steps, [0.1, 0.5, 0.9, 0.93], 0.935))
    assert MA.loglog_slope([2, 4, 8], [800, 400, 200])[0] == pytest.approx(-1.0)
    st = MA.crossing_stats(steps, [[0.1, 0.9, 0.94, 0.95], [0.1, 0.95, 0.96, 0.97]], 32)
    assert st["reached"] == 2 and st["mean"] == pytest.approx(32 * (18.75 + 10 * 0.835 / 0.85) / 2, rel=1e-9)


# ----------------------------------------------------------------------------------------
# the experiment's runs through the library: lanes, early stop, the DSGD reference
# ----------------------------------------------------------------------------------------
@needs_mnist
def test_slam_u_grid_seeds_batched_init_and_early_stop(mnist_small):
    """SLAM-U on ANIL as Table 2 / Fig 9 run it: parameter sets × seeds as lanes of one
    sj.run, one initialisation per seed, stopped by a callback once every lane crossed a
    threshold and a margin more steps have run."""
    n, seeds = 2, [0, 1]
    problem, data, _, _ = MA.make_meta_anil(n, per_agent=200, batch=16, arrays=mnist_small,
                                            local_test=0)
    graph = sj.graphs.erdos_renyi(n, seed=0)
    x0, y0 = _stacked_starts(n, seeds)
    assert jax.tree.leaves(x0)[0].shape[:2] == (len(seeds), n)
    alg = sj.slam(problem, graph, sj.SLAMConfig("slam_u", solver=sj.Neumann(10, 1 / 160)))
    grid = [dict(alpha=100.0, beta=10.0, rho=10.0, gamma=1.0),
            dict(alpha=200.0, beta=10.0, rho=10.0, gamma=1.0)]
    threshold, margin, log_every = 0.5, 0.5, 10
    seen = []

    def callback(steps, hist):
        acc = np.asarray(hist["test_acc"]).reshape(-1, len(steps))
        seen.append(len(steps))
        crossed = (acc >= threshold).any(axis=1)
        if not crossed.all():
            return None
        last = max(MA.first_crossing(steps, a, threshold) for a in acc)
        return int(math.ceil(last * (1 + margin)))

    res = sj.run(alg, sj.SLAMParams.create(**grid[0]), data, x0, y0, num_steps=600,
                 log_every=log_every, seeds=seeds, grid=grid, batched_init=True,
                 logs_per_chunk=2, progress=False, callback=callback)
    acc = res.history["test_acc"]
    L = len(res.steps)
    assert acc.shape == (len(grid), len(seeds), L) and res.diverged_at is None
    rows = acc.reshape(-1, L)                             # (param set, seed) order
    np.testing.assert_array_equal(rows[len(seeds)], acc[1, 0])
    last = max(MA.first_crossing(res.steps, a, threshold) for a in rows)
    assert np.isfinite(last)                              # every lane crossed
    stop = math.ceil(last * (1 + margin))
    assert stop <= res.num_steps < 600                    # stopped early, after the margin
    assert res.num_steps < stop + 2 * log_every + log_every  # within one chunk of it
    assert seen and seen[-1] == L
    # lanes differ by seed (initialisation and minibatches) and by parameter set
    assert not np.allclose(acc[0, 0], acc[0, 1]) and not np.allclose(acc[0, 0], acc[1, 0])
    assert np.all(res.history["consensus_y"][..., -1] > 0)  # heads stay personal (SLAM-U)


@needs_mnist
def test_dsgd_reference_learns_and_gossips(mnist_small):
    """The decentralized-SGD reference of Table 2 / Fig 9: every parameter gossiped
    (Metropolis W), steps 1/α (body) and 1/β (head) on the loss g, one start per seed."""
    n, seeds = 3, [0, 1]
    problem, data, _, _ = MA.make_meta_anil(n, per_agent=150, batch=16, arrays=mnist_small,
                                            local_test=0)
    graph = sj.graphs.erdos_renyi(n, seed=0)
    x0, y0 = _stacked_starts(n, seeds)
    # agents start apart so that gossip has something to remove
    x0 = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), x0)
    res = sj.run(dsgd(problem, graph), DSGDParams(1 / 100.0, 1 / 10.0), data, x0, y0,
                 num_steps=240, log_every=40, seeds=seeds, batched_init=True, progress=False)
    acc, cons = res.history["test_acc"], res.history["consensus_x"]
    assert acc.shape == (2, 7) and res.diverged_at is None
    assert np.all(acc[:, 0] < 0.25) and np.all(acc[:, -1] > 0.6), acc[:, -1]
    assert np.all(cons[:, -1] < 0.05 * cons[:, 0]), cons
    # one exchange of x and of y per step, one minibatch per agent and step
    per_agent = (MA.HIDDEN * (MA.INPUT + 1)) + MA.CLASSES * (MA.HIDDEN + 1)  # 25 120 + 330
    assert res.history["messages"][0, -1] == pytest.approx(240 * 2 * graph.num_edges * per_agent)
    assert res.history["minibatches"][0, -1] == pytest.approx(240 * n)


def test_dsgd_step_is_metropolis_gossip_plus_sgd(x64):
    """One DSGD step on ANIL: v ← W v − η ∇g_i(v_i; ξ_i) for the body (η = 1/α) and the
    head (η = 1/β), W the Metropolis matrix (was I − L/(1 + d_max) in the old experiment; they
    differ on this graph: a star with a tail), the minibatch ξ_i drawn with agent i's split
    of the key."""
    n = 6
    problem, data, x0, y0 = MA.make_meta_anil(n, per_agent=40, batch=8, arrays=_synthetic(),
                                              dtype=jnp.float64)
    graph = sj.graphs.from_edges([(0, 1), (0, 2), (0, 3), (3, 4), (4, 5)], n)
    kx, ky = jax.random.split(jax.random.key(5))
    x0 = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(kx, a.shape, a.dtype), x0)
    y0 = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(ky, a.shape, a.dtype), y0)
    alg = dsgd(problem, graph)
    params = DSGDParams(1 / 100.0, 1 / 10.0)
    key = jax.random.key(3)
    state, info = jax.jit(alg.step)(key, alg.init(x0, y0, data), params, data)

    W = sj.graphs.mixing_matrix(graph)
    d_max = float(np.max(np.asarray(graph.degree)))
    W_old = np.eye(n) - sj.graphs.laplacian_dense(graph) / (1 + d_max)
    assert not np.allclose(W, W_old)
    keys = jax.random.split(key, n)
    gx, gy = [], []
    for i in range(n):
        agent = ProblemData(shared=data.shared, agents=jax.tree.map(lambda a: a[i], data.agents))
        xi, yi = (jax.tree.map(lambda a: a[i], t) for t in (x0, y0))
        g = jax.grad(problem.g, argnums=(0, 1))(xi, yi, agent, problem.sample(keys[i], agent))
        gx.append(g[0])
        gy.append(g[1])
    stack = lambda ts: jax.tree.map(lambda *a: jnp.stack(a), *ts)  # noqa: E731
    for new, v, grad, lr in ((state.x, x0, stack(gx), params.lr_x),
                             (state.y, y0, stack(gy), params.lr_y)):
        ref = jax.tree.map(lambda a, g: np.einsum("ij,j...->i...", W, np.asarray(a))
                           - lr * np.asarray(g), v, grad)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10, atol=1e-12)
    assert float(info["minibatches"]) == n
