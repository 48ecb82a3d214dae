"""Graphs: Laplacian products against dense networkx Laplacians, λ_max, connectivity errors."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jax
import jax.numpy as jnp
from slamjax import graphs
from slamjax.metrics import consensus_error


def _nx_laplacian(g):
    return nx.laplacian_matrix(g.to_networkx(), nodelist=range(g.n)).toarray().astype(float)


def _check_matvec(g, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g.n, d))
    L = _nx_laplacian(g)
    got = np.asarray(graphs.laplacian_matvec(g, jnp.asarray(x)))
    np.testing.assert_allclose(got, L @ x, rtol=1e-5, atol=1e-4)
    # consensus error = x^T L x, computed edge by edge
    np.testing.assert_allclose(float(consensus_error(g, jnp.asarray(x))),
                               np.sum(x * (L @ x)), rtol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: graphs.ring(7), lambda: graphs.ring(7, mixing="sparse"),
    lambda: graphs.torus(3, 4), lambda: graphs.torus(4, 4, mixing="sparse"),
    lambda: graphs.star(6), lambda: graphs.complete(5), lambda: graphs.complete(5, mixing="sparse"),
    lambda: graphs.path(5), lambda: graphs.erdos_renyi(20, seed=3),
    lambda: graphs.small_world(30, k=4, p=0.2, seed=1),
    lambda: graphs.with_mixing(graphs.erdos_renyi(12, seed=0), "dense"),
    lambda: graphs.ring(2), lambda: graphs.ring(1),
])
def test_laplacian_matvec_matches_dense(make):
    _check_matvec(make())


def test_pytree_leaves_with_extra_axes():
    g = graphs.ring(5)
    tree = {"a": jnp.ones((5, 2, 3)), "b": jnp.arange(5.0)}
    out = graphs.laplacian_matvec(g, tree)
    assert out["a"].shape == (5, 2, 3)
    np.testing.assert_allclose(out["a"], 0.0, atol=1e-6)  # constant vectors are in ker L
    np.testing.assert_allclose(out["b"], _nx_laplacian(g) @ np.arange(5.0), atol=1e-5)


@pytest.mark.parametrize("g", [graphs.ring(9), graphs.torus(3, 5), graphs.star(7),
                               graphs.complete(6), graphs.erdos_renyi(30, seed=2)])
def test_lam_max(g):
    assert g.lam_max == pytest.approx(np.linalg.eigvalsh(_nx_laplacian(g))[-1], rel=1e-6)


def test_lam_max_large_graph_lanczos():
    g = graphs.small_world(2100, k=4, p=0.1, seed=0)  # just above the dense cut-off
    L = _nx_laplacian(g)
    assert g.lam_max == pytest.approx(np.linalg.eigvalsh(L)[-1], rel=1e-4)


def test_disconnected_graph_is_an_error_with_component_count():
    edges = np.array([[0, 1], [1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"disconnected \(2 connected components\)"):
        graphs.from_edges(edges, 5)
    with pytest.raises(ValueError, match="disconnected"):
        graphs.erdos_renyi(200, mean_degree=1.0, seed=0)
    with pytest.raises(ValueError, match="disconnected"):
        graphs.from_networkx(nx.Graph([(0, 1), (2, 3)]))


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match="unknown graph kind"):
        graphs.make_graph("hypercube", 8)
    with pytest.raises(ValueError, match="unknown mixing mode"):
        graphs.ring(8, mixing="fft")
    with pytest.raises(ValueError, match="stencil"):
        graphs.erdos_renyi(10, seed=0, mixing="stencil")
    with pytest.raises(ValueError, match="n ≥ 1"):
        graphs.ring(0)
    with pytest.raises(ValueError, match="perfect square"):
        graphs.make_graph("torus", 10)
    with pytest.raises(ValueError, match=r"p must|probability"):
        graphs.erdos_renyi(10, p=1.5)
    with pytest.raises(ValueError, match="undirected"):
        graphs.from_networkx(nx.DiGraph([(0, 1)]))
    with pytest.raises(ValueError, match="leading"):
        graphs.laplacian_matvec(graphs.ring(5), jnp.ones((4, 2)))


def test_erdos_renyi_is_seeded():
    a, b = graphs.erdos_renyi(50, seed=7), graphs.erdos_renyi(50, seed=7)
    np.testing.assert_array_equal(a.edges(), b.edges())
    assert not np.array_equal(a.edges(), graphs.erdos_renyi(50, seed=8).edges())


def test_large_erdos_renyi_sampler_density():
    n, p = 20000, 8e-4
    g = graphs.erdos_renyi(n, p, seed=0)
    expected = p * n * (n - 1) / 2
    assert abs(g.num_edges - expected) < 5 * np.sqrt(expected)
    assert len(np.unique(g.edges(), axis=0)) == g.num_edges


@given(kind=st.sampled_from(["ring", "star", "complete", "path", "erdos_renyi",
                             "small_world", "torus"]),
       n=st.integers(3, 40), d=st.integers(1, 4), seed=st.integers(0, 5))
def test_property_matvec_matches_dense(kind, n, d, seed):
    if kind == "torus":
        n = max(3, int(np.sqrt(n))) ** 2
    if kind == "erdos_renyi":
        g = graphs.erdos_renyi(n, p=min(1.0, 4 * np.log(n) / n), seed=seed)
    else:
        g = graphs.make_graph(kind, n, seed=seed)
    _check_matvec(g, d, seed)
    # row sums of L vanish: L 1 = 0
    np.testing.assert_allclose(graphs.laplacian_matvec(g, jnp.ones((g.n, 1))), 0.0, atol=1e-5)


# ----------------------------------------------------------------------------------------
# the communication methods of Graph: mix, disagreement, messages (float64, tol 1e-12)
# ----------------------------------------------------------------------------------------
COMM_GRAPHS = {
    "ring": lambda: graphs.ring(7),                                   # stencil
    "torus": lambda: graphs.torus(3, 4),                              # stencil
    "complete": lambda: graphs.complete(6),                           # O(n) complete
    "erdos_renyi": lambda: graphs.erdos_renyi(20, seed=3),            # sparse segment_sum
    "star": lambda: graphs.star(6),                                   # sparse, irregular
    "dense": lambda: graphs.with_mixing(graphs.erdos_renyi(12, seed=0), "dense"),
    "dense_ring": lambda: graphs.with_mixing(graphs.ring(7), "dense"),
}


def _rand(g, shape=(3,), seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((g.n,) + shape),
                       jnp.float64)


@pytest.mark.parametrize("name", list(COMM_GRAPHS))
def test_mix_equals_dense_metropolis_matrix(x64, name):
    g = COMM_GRAPHS[name]()
    v = _rand(g)
    assert v.dtype == jnp.float64
    W = graphs.mixing_matrix(g)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)  # doubly stochastic
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    out = g.mix(v)
    assert out.dtype == jnp.float64 and out.shape == v.shape
    np.testing.assert_allclose(np.asarray(out), W @ np.asarray(v), rtol=0, atol=1e-12)
    # doubly stochastic: the agent mean is preserved
    np.testing.assert_allclose(np.mean(np.asarray(out), 0), np.mean(np.asarray(v), 0),
                               rtol=0, atol=1e-12)
    # steps=3 is three applications (and three powers of W)
    three = g.mix(g.mix(g.mix(v)))
    np.testing.assert_allclose(np.asarray(g.mix(v, 3)), np.asarray(three), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.mix(v, 3)),
                               np.linalg.matrix_power(W, 3) @ np.asarray(v), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(g.mix(v, 0)), np.asarray(v))
    # the mixing actually moves a non-consensus vector (a test that cannot fail is a defect)
    assert np.abs(np.asarray(out) - np.asarray(v)).max() > 1e-2


@pytest.mark.parametrize("name", list(COMM_GRAPHS))
def test_mix_pytree_and_jit(x64, name):
    g = COMM_GRAPHS[name]()
    tree = {"a": _rand(g, (2, 3), seed=1), "b": _rand(g, (), seed=2)}
    W = graphs.mixing_matrix(g)
    out = jax.jit(lambda gr, t: gr.mix(t, 2))(g, tree)  # the graph is a jit argument
    W2 = W @ W
    np.testing.assert_allclose(np.asarray(out["a"]),
                               np.einsum("ij,j...->i...", W2, np.asarray(tree["a"])),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(out["b"]), W2 @ np.asarray(tree["b"]),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(COMM_GRAPHS))
def test_disagreement_is_quadratic_form_of_laplacian(x64, name):
    g = COMM_GRAPHS[name]()
    L = graphs.laplacian_dense(g)
    v = _rand(g, (2, 3))
    vn = np.asarray(v).reshape(g.n, -1)
    expected = float(np.sum(vn * (L @ vn)))  # ⟨v, L v⟩
    got = float(g.disagreement(v))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert got >= 0.0
    # a pytree sums over its leaves
    w = _rand(g, (), seed=5)
    both = float(g.disagreement({"v": v, "w": w}))
    wn = np.asarray(w)
    assert both == pytest.approx(expected + float(wn @ L @ wn), rel=1e-12)
    # consensus: zero (never negative, also through round-off)
    c = jnp.broadcast_to(jnp.asarray([0.3, -1.7, 2.9], jnp.float64), (g.n, 3))
    assert 0.0 <= float(g.disagreement(c)) <= 1e-20
    assert float(g.disagreement(c + 1e-9 * _rand(g))) >= 0.0


@pytest.mark.parametrize("name", list(COMM_GRAPHS))
def test_messages_count(name):
    g = COMM_GRAPHS[name]()
    tree = {"a": jnp.ones((g.n, 2, 3)), "b": jnp.ones((g.n,)), "c": jnp.ones((g.n, 4))}
    m = g.messages(tree)
    assert isinstance(m, int)
    assert m == 2 * g.num_edges * (6 + 1 + 4)
    assert g.messages(jnp.ones((g.n, 5))) == 2 * g.num_edges * 5
    assert 2 * g.num_edges == len(np.asarray(g.senders))  # both directions of every edge
