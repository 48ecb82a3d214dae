"""Fault models (slamjax.faults): exact no-op, L_t and W_t against dense references, the dual
sum Σu under each fault (the predictions of the module docstring), compressors, Markov drops,
stragglers, time-varying edge sets and the disconnection monitor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

import slamjax as sj
from slamjax import faults as F
from slamjax.baselines.dsoba_gt import DSOBAGTParams, dsoba_gt
from slamjax.baselines.dsgd_bilevel import dsgd_bilevel
from slamjax.problems.quadratic import make_quadratic

N = 8


def _problem(n=N, dtype=jnp.float32, seed=0):
    return make_quadratic(n, 3, 3, seed=seed, dtype=dtype)


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


# ---------------------------------------------------------------------------------------
# p = 0, b = 32, q = 0: the fault-free numbers bit for bit
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,graph", [("slam", "er"), ("dsoba_gt", "ring")])
def test_inactive_faults_reproduce_fault_free_run_bit_for_bit(graph, method):
    prob, data, x0, y0 = _problem()
    g = sj.graphs.ring(N) if graph == "ring" else sj.graphs.erdos_renyi(N, 0.5, seed=1)
    if method == "slam":
        alg, params = sj.slam(prob, g, sj.SLAMConfig("slam")), sj.SLAMParams.create(50., 25., .4)
    else:
        alg, params = dsoba_gt(prob, g), DSOBAGTParams.create(0.02, 0.04, 0.04)
    ref = sj.solve(alg, params, data, x0, y0, 3, 25)
    faulty = F.with_faults(alg, F.LinkDrops(0.0), F.LinkDrops(0.0, burst=3.0),
                           F.Stragglers(0.0), F.Compress("quantize", bits=32))
    out = sj.solve(faulty, params, data, x0, y0, 3, 25)
    assert _same(ref, out.inner)
    assert int(out.t) == 25 and int(out.monitor.disconnected_steps) == 0
    if method == "dsoba_gt":
        # traced zeros run the fault code with nothing dropped: the same numbers up to
        # float32 round-off (XLA may fuse the corrected product differently)
        traced = F.with_faults(alg, F.LinkDrops(jnp.asarray(0.0)),
                               F.Stragglers(jnp.asarray(0.0)))
        out = sj.solve(traced, params, data, x0, y0, 3, 25)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out.inner)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:  # ... and a real fault does change the numbers (the comparison can fail)
        lossy = sj.solve(F.with_faults(alg, F.LinkDrops(0.3)), params, data, x0, y0, 3, 25)
        assert not _same(ref, lossy.inner)


# ---------------------------------------------------------------------------------------
# L_t and W_t against dense references
# ---------------------------------------------------------------------------------------
def _metropolis_dense(g, mask, active):
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    m = np.asarray(mask, float)
    if active:
        deg = np.bincount(s, weights=m, minlength=g.n)
    else:
        deg = np.asarray(g.degree, float)
    w = m / (1.0 + np.maximum(deg[s], deg[r]))
    W = np.eye(g.n)
    np.add.at(W, (s, r), w)
    np.add.at(W, (s, s), -w)
    return W


@pytest.mark.parametrize("graph", ["ring", "er"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_dropped_edges_give_the_dense_reference_laplacian_and_mixing(x64, graph, symmetric):
    g = sj.graphs.ring(12) if graph == "ring" else sj.graphs.erdos_renyi(12, 0.4, seed=2)
    topo = F.topology(g)
    drops = F.LinkDrops(0.4, symmetric=symmetric)
    mask = drops.apply(topo, g.n, jax.random.key(5), 0, ()).mask
    assert 0 < float(jnp.mean(mask)) < 1
    v = jax.random.normal(jax.random.key(1), (g.n, 2, 3), jnp.float64)
    comm = F.FaultyGraph(g, mask, None)
    L = F.dense_reference_laplacian(g, mask)
    want = (L @ np.asarray(v).reshape(g.n, -1)).reshape(v.shape)
    np.testing.assert_allclose(comm.laplacian(v), want, atol=1e-12)
    W = _metropolis_dense(g, mask, active=False)
    np.testing.assert_allclose(comm.mix(v), (W @ np.asarray(v).reshape(g.n, -1)).reshape(
        v.shape), atol=1e-12)
    assert np.allclose(L @ np.ones(g.n), 0)                       # rows: L_t 1 = 0 always
    if symmetric:
        assert np.allclose(L, L.T) and np.linalg.eigvalsh(L).min() > -1e-10
        assert np.allclose(np.ones(g.n) @ L, 0)                   # 1ᵀL_t = 0: Σu kept
        assert np.allclose(W.sum(0), 1) and np.allclose(W, W.T)
    else:
        assert not np.allclose(np.ones(g.n) @ L, 0)               # 1ᵀL_t ≠ 0
    # compression: own exact term -> 1ᵀL̃v = Σ_i d_i (v_i − c_i) ≠ 0; own "sent" -> L·c
    for own, zero in (("exact", False), ("sent", True)):
        cg = F.FaultyGraph(g, mask if symmetric else None, jax.random.key(2),
                           compress=F.Compress(bits=3, own=own))
        total = float(jnp.max(jnp.abs(jnp.sum(cg.laplacian(v), 0))))
        assert (total < 1e-12) == zero, (own, total)
        # compressed gossip: (W̃v)_i = v_i − Σ_j W_ij (own_i − sent_j), against dense W
        cm = F.FaultyGraph(g, mask if symmetric else None, jax.random.key(2),
                           compress=F.Compress(bits=3, own=own))
        sent = np.asarray(F.quantize(jax.random.fold_in(jax.random.key(2), 0), v, 3))
        sent = sent.reshape(g.n, -1)
        vv = np.asarray(v).reshape(g.n, -1)
        mine = vv if own == "exact" else sent
        Wd = _metropolis_dense(g, mask if symmetric else np.ones(len(mask)), active=False)
        off = Wd - np.diag(np.diag(Wd))
        want = vv - (1 - np.diag(Wd))[:, None] * mine + off @ sent
        np.testing.assert_allclose(np.asarray(cm.mix(v)).reshape(g.n, -1), want, atol=1e-12)
    # time-varying weights: Metropolis of the active degrees
    comm_tv = F.FaultyGraph(g, mask, None, active_weights=True)
    Wa = _metropolis_dense(g, mask, active=True)
    np.testing.assert_allclose(comm_tv.mix(v), (Wa @ np.asarray(v).reshape(g.n, -1)).reshape(
        v.shape), atol=1e-12)


# ---------------------------------------------------------------------------------------
# the dual sum Σ_i u_i under each fault (module docstring predictions)
# ---------------------------------------------------------------------------------------
def _dual_sum(state):
    return float(jnp.max(jnp.abs(jnp.sum(state.inner.u_x, 0))))


def _slam_run(faults, steps, seed=0, n=N):
    prob, data, x0, y0 = _problem(n, jnp.float64)
    g = sj.graphs.ring(n)
    alg = F.with_faults(sj.slam(prob, g, sj.SLAMConfig("slam")), *faults)
    st = sj.solve(alg, sj.SLAMParams.create(50., 25., .4, dtype=jnp.float64), data, x0, y0,
                  seed, steps)
    return st, sj.evaluate(alg, st, data)


def test_dual_sum_is_preserved_by_symmetric_faults_and_no_bias(x64):
    """Symmetric faults: 1ᵀL_t = 0, so Σu = 0 and the fixed point is the fault-free one."""
    st, m = _slam_run((F.LinkDrops(0.3, burst=4.0), F.Stragglers(0.2)), 1500)
    assert _dual_sum(st) < 1e-10
    assert float(m["grad_F_sq"]) < 1e-8 and float(m["consensus_x"]) < 1e-8
    assert int(st.monitor.disconnected_steps) > 100  # the ring was often cut, still converged


def test_one_directional_loss_leaves_a_frozen_dual_sum_and_a_bias(x64):
    """1ᵀL̃_t ≠ 0: Σu moves while agents disagree and stops at consensus (L̃·1x = 0), so the
    run settles at a point with Σ_i h_i = −γΣu ≠ 0."""
    st, m = _slam_run((F.LinkDrops(0.3, symmetric=False),), 1500)
    assert _dual_sum(st) > 1e-2
    assert float(m["consensus_x"]) < 1e-8 and float(m["grad_F_sq"]) > 1e-4
    # the increment (ρ/γ)·1ᵀL̃_t x of Σu vanishes at consensus, not before
    g = sj.graphs.ring(N)
    drop = F.LinkDrops(0.3, symmetric=False)
    comm = F.FaultyGraph(g, drop.apply(F.topology(g), N, jax.random.key(4), 0, ()).mask, None)
    prob, data, x0, y0 = _problem(N, jnp.float64)
    start = float(jnp.max(jnp.abs(jnp.sum(comm.laplacian(x0), 0))))
    end = float(jnp.max(jnp.abs(jnp.sum(comm.laplacian(st.inner.x), 0))))
    assert start > 1e-2 and end < 1e-4 * start


def test_error_feedback_telescopes_the_dual_sum(x64):
    """With EF, v − c = e⁺ − e per exchange, so Σ_i u_x,i = (ρ/γ) Σ_i d_i e_i exactly
    (bounded); without EF the increments Σ_i d_i (v_i − c_i) accumulate."""
    st, _ = _slam_run((F.Compress(bits=3, error_feedback=True),), 300)
    e_x = st.memory[-1]                  # slots in call order: y's exchange, then x's
    assert e_x.shape == st.inner.x.shape and float(jnp.max(jnp.abs(e_x))) > 0
    np.testing.assert_allclose(jnp.sum(st.inner.u_x, 0), 0.4 * 2 * jnp.sum(e_x, 0),
                               atol=1e-10)
    no_ef = _dual_sum(_slam_run((F.Compress(bits=3),), 300)[0])
    assert no_ef > 3 * _dual_sum(st)


@pytest.mark.slow
def test_quantization_dual_sum_random_walk():
    """Without EF the spread of Σu over seeds grows like √t (a random walk)."""
    def spread(steps):
        vals = [np.asarray(jnp.sum(_slam_run((F.Compress(bits=3),), steps, seed=s)[0]
                                   .inner.u_x, 0)) for s in range(6)]
        return float(np.sqrt(np.mean(np.square(vals))))

    ratio = spread(1600) / spread(400)
    print(f"spread of Σu over seeds, t = 1600 vs 400: ratio {ratio:.3f} (√4 = 2)")
    assert 1.3 < ratio < 3.5            # √4 = 2


# ---------------------------------------------------------------------------------------
# compressors
# ---------------------------------------------------------------------------------------
def test_quantizer_is_unbiased_with_bounded_variance(x64):
    v = jax.random.normal(jax.random.key(0), (3, 7), jnp.float64)
    K, bits = 20000, 3
    qs = jax.vmap(lambda k: F.quantize(k, v, bits))(jax.random.split(jax.random.key(1), K))
    s = 2 ** (bits - 1) - 1
    scale = np.max(np.abs(np.asarray(v)), axis=1, keepdims=True)
    step = scale / s
    var = np.var(np.asarray(qs), axis=0)
    # every value sits on the grid of ±scale·j/s, one of the two neighbours of v
    lev = np.asarray(qs) / step
    assert np.allclose(lev, np.round(lev), atol=1e-9)
    assert np.all(np.abs(np.asarray(qs) - np.asarray(v)) <= step + 1e-12)
    # unbiased: |mean − v| ≤ 5 standard errors (the per-entry std is at most step/2)
    np.testing.assert_array_less(np.abs(np.mean(qs, 0) - v),
                                 np.broadcast_to(5 * (step / 2) / np.sqrt(K), v.shape))
    assert np.all(var <= step ** 2 / 4 * 1.05)
    assert np.sum(var, axis=1).max() <= v.shape[1] * (scale.max() / s) ** 2 / 4 * 1.05
    assert var.mean() > 0.01 * (step ** 2).mean()     # it is random (not round-to-nearest)


@pytest.mark.parametrize("shape", [(5, 4, 3), (3, 80)])  # pairwise-rank and lax.top_k paths
def test_top_k_keeps_exactly_k_largest(shape):
    v = jax.random.normal(jax.random.key(3), shape)
    v = v.at[0].set(jnp.round(v[0]))                 # many ties: still exactly k
    v = jnp.where(v == 0, 1e-3, v)                   # no zero entries: kept ⇔ non-zero
    out = np.asarray(F.top_k(v, 4)).reshape(shape[0], -1)
    flat = np.asarray(v).reshape(shape[0], -1)
    kept = out != 0
    assert np.all(kept.sum(1) == 4)
    for i in range(shape[0]):
        a = np.abs(flat[i])
        assert a[kept[i]].min() >= a[~kept[i]].max()         # the k largest magnitudes
        np.testing.assert_array_equal(out[i][kept[i]], flat[i][kept[i]])


# ---------------------------------------------------------------------------------------
# link processes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("burst", [None, 5.0])
def test_markov_drops_have_the_stationary_rate_and_burst_length(burst):
    g = sj.graphs.ring(64)
    topo = F.topology(g)
    f = F.LinkDrops(0.2, burst=burst)
    T = 3000

    one_way = np.asarray(topo.senders < topo.receivers)

    def body(st, t):
        out = f.apply(topo, g.n, jax.random.fold_in(jax.random.key(0), t), t, st)
        return out.state, out.mask[one_way] < 0.5

    down = np.asarray(jax.lax.scan(body, f.init(topo, g.n), jnp.arange(T))[1])  # (T, |E|)
    assert abs(down.mean() - 0.2) < 0.01
    # mean length of runs of drops: ℓ for Markov, 1/(1−p) = 1.25 for i.i.d.
    starts = (down[1:] & ~down[:-1]).sum()
    runs = down[1:].sum() / max(starts, 1)
    want = 5.0 if burst else 1.25
    assert abs(runs - want) < 0.1 * want


def test_time_varying_edge_sets():
    n = 16
    ge = F.exponential_graph(n)
    topo = F.topology(ge)
    f = F.TimeVarying("one_peer_exp")
    hop = np.asarray(topo.hop)[np.asarray(topo.edge_id)]
    for t in range(6):
        m = np.asarray(f.apply(topo, n, jax.random.key(0), t, f.init(topo, n)).mask) > 0
        assert np.all(hop[m] == 2 ** (t % 4)) and m.sum() > 0
        assert np.all(np.bincount(np.asarray(topo.senders)[m], minlength=n) <= 2)
    gm = sj.graphs.erdos_renyi(40, 0.3, seed=0)
    tm = F.topology(gm)
    f = F.TimeVarying("matching", every=3)
    st = f.init(tm, 40)
    masks = []
    for t in range(6):
        out = f.apply(tm, 40, jax.random.key(t), t, st)
        st = out.state
        m = np.asarray(out.mask) > 0
        assert np.bincount(np.asarray(tm.senders)[m], minlength=40).max() == 1  # a matching
        assert m.sum() >= 2 * 5
        masks.append(m)
    assert np.array_equal(masks[0], masks[2]) and not np.array_equal(masks[2], masks[3])


# ---------------------------------------------------------------------------------------
# stragglers and the disconnection monitor
# ---------------------------------------------------------------------------------------
def test_stragglers_skip_exactly_the_masked_agents():
    prob, data, x0, y0 = _problem()
    g = sj.graphs.ring(N)
    f = F.Stragglers(0.4)
    alg = F.with_faults(sj.slam(prob, g, sj.SLAMConfig("slam")), f)
    params = sj.SLAMParams.create(50., 25., .4)
    s0 = alg.init(x0, y0, data)
    key = jax.random.key(7)
    s1, info = jax.jit(alg.step)(key, s0, params, data)
    fkey = jax.random.fold_in(jax.random.fold_in(key, F.FAULT_SALT), 0)
    slow = np.asarray(f.apply(F.topology(g), N, fkey, 0, ()).freeze)
    assert 0 < slow.sum() < N and info["stragglers"] == slow.sum()
    for old, new in [(s0.inner.x, s1.inner.x), (s0.inner.y, s1.inner.y),
                     (s0.inner.u_x, s1.inner.u_x), (s0.inner.lap_x[0], s1.inner.lap_x[0])]:
        old, new = np.asarray(old), np.asarray(new)
        assert np.array_equal(old[slow], new[slow])
        moved = np.any((old != new).reshape(N, -1), axis=1)
        assert np.all(moved[~slow])


_components = jax.jit(F.components, static_argnums=3)


def test_components_match_scipy():
    g = sj.graphs.erdos_renyi(60, 0.1, seed=3)
    topo = F.topology(g)
    for i, p in enumerate([0.0, 0.3, 0.6, 0.9]):
        mask = F.LinkDrops(p).apply(topo, g.n, jax.random.key(i), 0, ()).mask if p else \
            jnp.ones(topo.senders.shape)
        lab, nc = _components(topo.senders, topo.receivers, mask > 0, g.n)
        m = np.asarray(mask) > 0
        A = sp.coo_matrix((np.ones(m.sum()), (np.asarray(topo.senders)[m],
                                               np.asarray(topo.receivers)[m])), shape=(60, 60))
        want, wl = connected_components(A, directed=False)
        assert int(nc) == want
        lab = np.asarray(lab)
        for c in range(want):  # same partition, labelled by its smallest agent
            members = np.nonzero(wl == c)[0]
            assert np.all(lab[members] == members.min())


def test_partition_window_is_detected_and_the_run_continues():
    prob, data, x0, y0 = _problem(12)
    g = sj.graphs.ring(12)
    groups = np.array([0] * 4 + [1] * 4 + [2] * 4)
    alg = F.with_faults(sj.slam(prob, g, sj.SLAMConfig("slam")), F.Partition(20, 35, groups))
    res = sj.run(alg, sj.SLAMParams.create(50., 25., .4), data, x0, y0, num_steps=60,
                 log_every=5, progress=False)
    rep = F.disconnection_report(res.state)
    assert rep["disconnected_steps"] == 15 and rep["first_disconnected_step"] == 20
    assert rep["longest_window"] == {"start": 20, "length": 15}
    assert rep["max_components"] == 3
    assert rep["last_components"] == [list(range(0, 4)), list(range(4, 8)), list(range(8, 12))]
    comps = res.history["components"]
    assert comps[list(res.steps).index(25)] == 3 and comps[-1] == 1
    assert res.diverged_at is None and res.steps[-1] == 60


def test_error_feedback_refuses_exchanges_inside_an_inner_loop():
    prob, data, x0, y0 = _problem()
    alg = F.with_faults(dsgd_bilevel(prob, sj.graphs.ring(N), inner_steps=2),
                        F.Compress(bits=4, error_feedback=True))
    with pytest.raises(ValueError, match="inner loop"):
        alg.init(x0, y0, data)
