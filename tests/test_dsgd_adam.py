"""``dsgd(..., optimizer="adam")``: decentralized SGD with per-agent Adam-normalised steps, the
centralized Adam oracle of the meta-learning Table 2 when n = 1.

* n = 1, exact oracle, float64: K = 20 steps equal ``optax.adam`` (one instance on x, one on
  y, independent step sizes) on ``jax.grad`` of g, ≤ 1e-12.
* n = 7 on a non-regular graph, stochastic oracle, float64: 3 steps equal a dense NumPy
  reference (Adam written out by hand per agent, W the Metropolis matrix) ≤ 1e-12; the same
  reference with the moments shared across agents or mixed by W is far from it (so the test
  tells these apart). Message and minibatch counts are those of SGD.
* ``optimizer="sgd"`` is bit-for-bit the default; other names raise; the options are static
  and hashable (equal builds share one compiled program) and the metrics keep both levels.
* A step-size grid through :func:`slamjax.run` is one program, its lanes equal separate runs
  and different step sizes give different iterates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slamjax as sj
from slamjax.algorithm import split_static
from slamjax.baselines import DSGDParams, DSGDState, dsgd
from slamjax.problem import ProblemData
from slamjax.problems.quadratic import make_quadratic

DX, DY, M = 3, 2, 2
B1, B2, EPS = 0.9, 0.999, 1e-8


def _agent(data, i):
    return ProblemData(shared=data.shared, agents=jax.tree.map(lambda a: a[i], data.agents))


# ----------------------------------------------------------------------------------------
# n = 1: centralized Adam
# ----------------------------------------------------------------------------------------
def test_single_agent_adam_is_optax_adam_on_g(x64):
    problem, data, x0, y0 = make_quadratic(1, DX, DY, M, seed=4, dtype=jnp.float64,
                                           homogeneous=False)
    assert problem.sample is None
    graph = sj.graphs.complete(1)
    lr_x, lr_y, K = 0.07, 0.03, 20
    alg = dsgd(problem, graph, optimizer="adam")
    state = sj.solve(alg, DSGDParams.create(lr_x, lr_y, dtype=jnp.float64), data, x0, y0,
                     jax.random.key(0), K)
    assert int(state.step) == K

    agent = _agent(data, 0)
    grad = jax.jit(jax.grad(problem.g, argnums=(0, 1)))
    tx, ty = optax.adam(lr_x), optax.adam(lr_y)
    x, y = x0[0], y0[0]
    sx, sy = tx.init(x), ty.init(y)
    for _ in range(K):
        gx, gy = grad(x, y, agent, None)
        ux, sx = tx.update(gx, sx, x)
        uy, sy = ty.update(gy, sy, y)
        x, y = optax.apply_updates(x, ux), optax.apply_updates(y, uy)
    assert float(jnp.max(jnp.abs(x - x0[0]))) > 0.5  # it moved (many steps of ~lr)
    np.testing.assert_allclose(np.asarray(state.x[0]), np.asarray(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.y[0]), np.asarray(y), rtol=0, atol=1e-12)
    # plain SGD at these step sizes is elsewhere (the comparison can fail)
    sgd = sj.solve(dsgd(problem, graph), DSGDParams.create(lr_x, lr_y, dtype=jnp.float64),
                   data, x0, y0, jax.random.key(0), K)
    assert float(jnp.max(jnp.abs(sgd.x[0] - x))) > 1e-2


# ----------------------------------------------------------------------------------------
# n agents: dense NumPy reference
# ----------------------------------------------------------------------------------------
def _grad_g_numpy(data, x, y, xi_y):
    """∇g_i of the heterogeneous quadratic, agent axis first: ∇_x = −Σ_k B_kᵀ y_k,
    ∇_y = H y − (B x + b) + ξ_y."""
    H, B = np.asarray(data.agents["H"]), np.asarray(data.agents["B"])
    b = np.asarray(data.agents["b"])
    gx = -np.einsum("nkij,nki->nj", B, y)
    gy = np.einsum("nkij,nkj->nki", H, y) - np.einsum("nkij,nj->nki", B, x) - b + xi_y
    return gx, gy


def _reference(problem, data, graph, x0, y0, keys, lr_x, lr_y, moments="local"):
    """Dense NumPy DSGD-Adam. ``moments``: ``"local"`` (the method), ``"shared"`` (one
    moment pair for all agents, fed with the mean gradient's moments) or ``"mixed"``
    (moments gossiped with W) — the last two are wrong variants the test must reject."""
    n = graph.n
    W = sj.graphs.mixing_matrix(graph)
    x, y = np.asarray(x0), np.asarray(y0)
    m = [np.zeros_like(x), np.zeros_like(y)]
    v = [np.zeros_like(x), np.zeros_like(y)]
    for t, key in enumerate(keys, start=1):
        ks = jax.random.split(key, n)
        xi_y = np.stack([np.asarray(problem.sample(ks[i], _agent(data, i))["y"])
                         for i in range(n)])
        grads = _grad_g_numpy(data, x, y, xi_y)
        dirs = []
        for j, g in enumerate(grads):
            m[j] = B1 * m[j] + (1 - B1) * g
            v[j] = B2 * v[j] + (1 - B2) * g * g
            if moments == "shared":
                m[j] = np.broadcast_to(m[j].mean(0), m[j].shape).copy()
                v[j] = np.broadcast_to(v[j].mean(0), v[j].shape).copy()
            elif moments == "mixed":
                m[j] = np.einsum("ij,j...->i...", W, m[j])
                v[j] = np.einsum("ij,j...->i...", W, v[j])
            mh, vh = m[j] / (1 - B1 ** t), v[j] / (1 - B2 ** t)
            dirs.append(mh / (np.sqrt(vh) + EPS))
        x = np.einsum("ij,j...->i...", W, x) - lr_x * dirs[0]
        y = np.einsum("ij,j...->i...", W, y) - lr_y * dirs[1]
    return x, y


def test_decentralized_adam_matches_dense_reference(x64):
    n = 7
    graph = sj.graphs.erdos_renyi(n, seed=1)
    assert graph.regular_degree is None and len(set(np.asarray(graph.degree).tolist())) > 1
    problem, data, x0, y0 = make_quadratic(n, DX, DY, M, seed=2, dtype=jnp.float64,
                                           homogeneous=False, noise=0.3)
    assert problem.sample is not None
    lr_x, lr_y = 0.05, 0.2
    params = DSGDParams.create(lr_x, lr_y, dtype=jnp.float64)
    alg = dsgd(problem, graph, optimizer="adam")
    sgd = dsgd(problem, graph)
    keys = [jax.random.key(10 + t) for t in range(3)]
    state, s_sgd = alg.init(x0, y0, data), sgd.init(x0, y0, data)
    step = jax.jit(alg.step)
    for k in keys:
        state, info = step(k, state, params, data)
        s_sgd, info_sgd = sgd.step(k, s_sgd, params, data)
        assert info.keys() == info_sgd.keys()
        for c in info:  # the moments are not communicated
            assert float(info[c]) == float(info_sgd[c]), c
    assert float(info["messages"]) == graph.messages(x0) + graph.messages(y0)
    assert float(info["minibatches"]) == n
    # one Adam state per agent: count and moments with the agent axis first
    count = jax.tree.leaves(state.opt)[0]
    assert count.shape == (n,) and np.all(np.asarray(count) == 3)

    x_ref, y_ref = _reference(problem, data, graph, x0, y0, keys, lr_x, lr_y)
    np.testing.assert_allclose(np.asarray(state.x), x_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.y), y_ref, rtol=0, atol=1e-12)
    # the test tells per-agent moments from shared or gossiped ones
    for wrong in ("shared", "mixed"):
        xw, yw = _reference(problem, data, graph, x0, y0, keys, lr_x, lr_y, moments=wrong)
        gap = max(np.max(np.abs(xw - x_ref)), np.max(np.abs(yw - y_ref)))
        assert gap > 1e-3, (wrong, gap)


# ----------------------------------------------------------------------------------------
# the option itself
# ----------------------------------------------------------------------------------------
def test_sgd_option_is_the_default_bit_for_bit_and_bad_names_raise():
    n = 6
    graph = sj.graphs.erdos_renyi(n, seed=3)
    problem, data, x0, y0 = make_quadratic(n, DX, DY, M, seed=0, noise=0.1)
    params = DSGDParams.create(0.05, 0.1)
    for loss in ("g", "f"):
        default = sj.solve(dsgd(problem, graph, loss=loss), params, data, x0, y0,
                           jax.random.key(1), 7)
        sgd = sj.solve(dsgd(problem, graph, loss=loss, optimizer="sgd"), params, data, x0, y0,
                       jax.random.key(1), 7)
        assert default.opt is None and len(jax.tree.leaves(default)) == 3  # x, y, step
        for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(sgd)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(default, DSGDState)
    for bad in ("Adam", "adamw", "", None, 3):
        with pytest.raises(ValueError, match="optimizer must be one of .*sgd.*adam"):
            dsgd(problem, graph, optimizer=bad)
    # through the registry
    alg = sj.make_algorithm("dsgd", problem, graph, optimizer="adam")
    assert alg.init(x0, y0, data).opt is not None
    # static options: hashable and equal across builds (one compiled program), and the
    # metrics treat both levels as gossiped (LL consensus metrics present)
    s1 = split_static(dsgd(problem, graph, optimizer="adam"))[1]
    s2 = split_static(dsgd(problem, graph, optimizer="adam"))[1]
    assert s1 == s2 and hash(s1) == hash(s2)
    assert s1 != split_static(dsgd(problem, graph))[1]
    state = alg.init(x0, y0, data)
    m_adam = sj.evaluate(alg, state, data)
    m_sgd = sj.evaluate(dsgd(problem, graph), state._replace(opt=None), data)
    assert set(m_adam) == set(m_sgd) and "consensus_y" in m_adam
    for k in m_adam:
        np.testing.assert_array_equal(np.asarray(m_adam[k]), np.asarray(m_sgd[k]))


def test_step_size_grid_is_one_program_and_lanes_differ():
    from slamjax.driver import compiled_programs

    n = 5
    graph = sj.graphs.erdos_renyi(n, seed=2)
    problem, data, x0, y0 = make_quadratic(n, DX, DY, M, seed=1, noise=0.1)
    alg = dsgd(problem, graph, optimizer="adam")
    lrs = (0.003, 0.03, 0.3)
    kw = dict(num_steps=30, log_every=10, progress=False)
    before = compiled_programs()
    res = sj.run(alg, DSGDParams.create(0.01, 0.01), data, x0, y0,
                 grid=[{"lr_x": a, "lr_y": a} for a in lrs], **kw)
    assert compiled_programs() <= before + 1
    assert res.diverged_at is None
    assert res.state.x.shape == (len(lrs), n, DX)
    assert np.asarray(jax.tree.leaves(res.state.opt)[0]).shape == (len(lrs), n)
    for key_, h in res.history.items():
        assert h.shape == (len(lrs), 4), key_  # steps 0, 10, 20, 30
    finals = np.asarray(res.state.x)
    for i in range(len(lrs)):
        for j in range(i):
            assert np.max(np.abs(finals[i] - finals[j])) > 1e-3, (i, j)
    # other numbers, same program; each lane is the run at its own step sizes
    mid = compiled_programs()
    res2 = sj.run(alg, DSGDParams.create(0.02, 0.02), data, x0, y0,
                  grid=[{"lr_x": a, "lr_y": 2 * a} for a in lrs], **kw)
    assert compiled_programs() == mid
    assert not np.allclose(np.asarray(res2.state.y), np.asarray(res.state.y))
    one = sj.run(alg, DSGDParams.create(lrs[1], lrs[1]), data, x0, y0, **kw)
    np.testing.assert_allclose(finals[1], np.asarray(one.state.x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.history["grad_F_sq"][1], one.history["grad_F_sq"],
                               rtol=1e-4, atol=1e-7)
