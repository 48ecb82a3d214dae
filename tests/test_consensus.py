"""The consensus transforms (slamjax.consensus), each checked like an optax transformation:
against its equations written with dense matrices (L, the Metropolis W), under jit, vmap over
lanes of hyperparameters, scan = loop, jax.grad against central differences, dtypes kept, and
no recompilation when only numbers change. Every entry of ``consensus.TRANSFORMS`` runs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax import consensus as C
from slamjax.graphs import laplacian_dense, mixing_matrix

N = 6
NAMES = sorted(C.TRANSFORMS)


def _graph(kind="erdos"):
    return sj.graphs.ring(N) if kind == "ring" else sj.graphs.erdos_renyi(N, 0.6, seed=3)


def _tree(key, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return {"a": jax.random.normal(k1, (N, 3), dtype), "b": jax.random.normal(k2, (N,), dtype)}


def _hp(dtype=jnp.float32, lr=0.1):
    return C.ConsensusHP(jnp.asarray(lr, dtype), jnp.asarray(0.3, dtype), jnp.asarray(1.5, dtype))


def _dense_step(name, v, g, st, comm, hp):
    """The rule's equations with dense L and W (host NumPy, float64)."""
    L, W = laplacian_dense(comm), mixing_matrix(comm)
    lr, rho, gamma = float(hp.lr), float(hp.rho), float(hp.gamma)
    out = {}
    for k in v:
        x, d = np.asarray(v[k], float), np.asarray(g[k], float)
        m = lambda a: np.tensordot(W, a, 1)  # noqa: E731
        if name.startswith("primal_dual"):
            u = np.asarray(st.dual[k], float)
            xn = x - lr * (d + gamma * u + rho * gamma * np.tensordot(L, x, 1))
        elif name == "gossip_cta":
            xn = m(x) - lr * d
        elif name == "gossip_atc":
            xn = m(x - lr * d)
        elif name == "repeated_gossip":
            xn = m(m(m(x - lr * d)))
        elif name == "tracking":
            s = m(np.asarray(st.tracker[k], float)) + d - np.asarray(st.previous[k], float)
            xn = m(x) - lr * s
        elif name == "central":
            xn = np.broadcast_to((x - lr * d).mean(0), x.shape)
        elif name == "masked_gossip":  # leaves in order a, b: a gossiped, b local
            xn = m(x - lr * d) if k == "a" else x - lr * d
        else:
            assert name == "local"
            xn = x - lr * d
        out[k] = xn
    return out


@pytest.mark.parametrize("kind", ["ring", "erdos"])
@pytest.mark.parametrize("name", NAMES)
def test_update_equals_its_dense_equations(x64, name, kind):
    comm = _graph(kind)
    rule = C.TRANSFORMS[name]()
    v, g = _tree(jax.random.key(0), jnp.float64), _tree(jax.random.key(1), jnp.float64)
    st = rule.init(v, comm)
    # a second update from a non-trivial state (duals / trackers no longer zero)
    v1, st1 = rule.update(g, st, v, comm, _hp(jnp.float64))
    want = _dense_step(name, v1, g, st1, comm, _hp(jnp.float64))
    v2, _ = rule.update(g, st1, v1, comm, _hp(jnp.float64))
    for k in v:
        np.testing.assert_allclose(np.asarray(v2[k]), want[k], rtol=1e-12, atol=1e-12,
                                   err_msg=f"{name} {k}")
    assert isinstance(rule.messages(comm, v), int)


def test_primal_dual_dual_step_and_cache(x64):
    comm = _graph()
    L = laplacian_dense(comm)
    v, g = _tree(jax.random.key(0), jnp.float64), _tree(jax.random.key(1), jnp.float64)
    hp = _hp(jnp.float64)
    cached, plain = C.primal_dual(), C.primal_dual(cache=False)
    a, sa = cached.update(g, cached.init(v, comm), v, comm, hp)
    b, sb = plain.update(g, plain.init(v, comm), v, comm, hp)
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal(sa.dual, sb.dual)
    for k in v:  # u⁺ = u + (ρ/γ) L v⁺ and the cache is L v⁺
        want = (0.3 / 1.5) * np.tensordot(L, np.asarray(a[k]), 1)
        np.testing.assert_allclose(np.asarray(sa.dual[k]), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(sa.lap[0]), np.tensordot(L, np.asarray(a["a"]), 1),
                               rtol=1e-12, atol=1e-12)
    assert sb.lap is None
    # a mask leaves the other leaves on the plain step with u = 0
    m = C.primal_dual((False, True))
    c, sc = m.update(g, m.init(v, comm), v, comm, hp)
    np.testing.assert_allclose(np.asarray(c["a"]), np.asarray(v["a"] - 0.1 * g["a"]))
    assert not np.any(np.asarray(sc.dual["a"])) and sc.lap[0] is None
    with pytest.raises(ValueError, match="leaves"):
        C.primal_dual((True,)).init(v, comm)


def _run(rule, comm, v, g, hp, steps=3):
    st = rule.init(v, comm)
    for _ in range(steps):
        v, st = rule.update(g, st, v, comm, hp)
    return v, st


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_scan_and_dtypes(name):
    comm = _graph()
    rule = C.TRANSFORMS[name]()
    v, g = _tree(jax.random.key(0)), _tree(jax.random.key(1))
    hp = _hp()
    eager = _run(rule, comm, v, g, hp)
    jitted = jax.jit(lambda v, g, hp: _run(rule, comm, v, g, hp))(v, g, hp)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)

    def scanned(v, g, hp):
        def body(c, _):
            return rule.update(g, c[1], c[0], comm, hp), None
        return jax.lax.scan(body, (v, rule.init(v, comm)), None, length=3)[0]

    chex.assert_trees_all_close(scanned(v, g, hp), eager, rtol=1e-5, atol=1e-6)
    # lanes: a vmap over two step sizes equals the two separate runs
    lrs = jnp.asarray([0.05, 0.2], jnp.float32)
    lanes = jax.vmap(lambda lr: _run(rule, comm, v, g, _hp(lr=lr))[0])(lrs)
    for i in range(2):
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], lanes),
                                    _run(rule, comm, v, g, _hp(lr=lrs[i]))[0], rtol=1e-5,
                                    atol=1e-6)
    for leaf in jax.tree.leaves(eager[0]):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES)
def test_float64_kept_and_grad_matches_central_differences(x64, name):
    comm = _graph()
    rule = C.TRANSFORMS[name]()
    v, g = _tree(jax.random.key(0), jnp.float64), _tree(jax.random.key(1), jnp.float64)

    def f(lr):
        out = _run(rule, comm, v, jax.tree.map(lambda a: jnp.sin(a) * lr, g), _hp(jnp.float64,
                                                                                  lr))[0]
        return sum(jnp.sum(jnp.cos(a)) for a in jax.tree.leaves(out))

    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(_run(rule, comm, v, g,
                                                                    _hp(jnp.float64))[0]))
    lr0, h = 0.1, 1e-6
    grad = float(jax.grad(f)(lr0))
    fd = (f(lr0 + h) - f(lr0 - h)) / (2 * h)
    assert abs(fd) > 1e-8
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_new_numbers_do_not_recompile(name):
    comm = _graph()
    rule = C.TRANSFORMS[name]()
    v, g = _tree(jax.random.key(0)), _tree(jax.random.key(1))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(v, g, hp):
        return _run(rule, comm, v, g, hp, steps=1)[0]

    step(v, g, _hp())
    step(jax.tree.map(lambda a: a * 2, v), g, _hp(lr=0.7))  # numbers only: no new trace
    chex.clear_trace_counter()


def test_gossip_and_central_preserve_the_average_and_messages():
    comm = _graph()
    v, g = _tree(jax.random.key(0)), _tree(jax.random.key(1))
    zero = jax.tree.map(jnp.zeros_like, g)
    for rule in (C.gossip("cta"), C.gossip("atc"), C.gossip("atc", 3), C.central()):
        out, _ = rule.update(zero, rule.init(v, comm), v, comm, _hp())
        for k in v:  # doubly stochastic W: the network average does not move
            np.testing.assert_allclose(np.asarray(out[k]).mean(0), np.asarray(v[k]).mean(0),
                                       rtol=1e-5, atol=1e-6)
    assert C.gossip(rounds=3).messages(comm, v) == 3 * comm.messages(v)
    assert C.local().messages(comm, v) == 0 and C.central().messages(comm, v) == 0
    assert C.masked(C.gossip(), (True, False)).messages(comm, v) == comm.messages(v["a"])
    mixed, _ = C.gossip().update(None, (), v, comm, _hp())  # grads=None: mixing only
    chex.assert_trees_all_close(mixed, comm.mix(v))
    with pytest.raises(ValueError, match="order"):
        C.gossip("nope")
    with pytest.raises(ValueError, match="rounds"):
        C.gossip(rounds=0)


def test_the_library_objects_meet_their_protocols():
    from slamjax import diff, placement, protocols, solvers

    for name in NAMES:
        assert isinstance(C.TRANSFORMS[name](), protocols.ConsensusRule), name
    for s in (solvers.CG(3), solvers.Neumann(3, 0.1), solvers.Exact()):
        assert isinstance(s, protocols.LinearSolver)
    for a in (diff.Reverse(), diff.Checkpointed(4), diff.Forward()):
        assert isinstance(a, protocols.Adjoint)
    assert isinstance(placement.Sharded(), protocols.Placement)
