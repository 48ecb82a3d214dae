"""Data hyper-cleaning (slamjax.problems.hyper_cleaning) against independent computations.

* Splits and corruption: exact counts, corrupted labels differ exactly where the mask says,
  disjoint shards, label skew measurably stronger than iid, deterministic given the seed.
* The hypergradient of eq. (23) on one agent (float64, exact oracle) equals central finite
  differences of F(x) = f(x, y*(x)) with y*(x) solved by Newton's method on a dense Hessian.
* Agent i's losses touch only its own coordinates of the global weight vector.
* On real MNIST a short decentralized run separates corrupted from clean samples.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.data import DataNotFoundError
from slamjax.problem import ProblemData
from slamjax.problems import hyper_cleaning as hc


def _fake_arrays(n_train=3000, n_test=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n_train)
    # class-dependent images so that a classifier can learn something
    protos = rng.integers(0, 256, (10, 784))
    imgs = np.clip(protos[labels] + rng.integers(-60, 60, (n_train, 784)), 0, 255)
    te_lab = rng.integers(0, 10, n_test)
    te = np.clip(protos[te_lab] + rng.integers(-60, 60, (n_test, 784)), 0, 255)
    return imgs.astype(np.uint8), labels, te.astype(np.uint8), te_lab


def test_split_and_corruption_counts():
    arrays = _fake_arrays()
    data = hc.make_data(4, arrays, per_agent=50, val_per_agent=10, corruption=0.3, seed=3)
    a = data.agents
    mask = np.asarray(a["corrupted"]).astype(bool)
    noisy, true = np.asarray(a["train_y"]), np.asarray(a["true_y"])
    assert mask.shape == (4, 50) and (mask.sum(axis=1) == 15).all()
    assert (noisy[mask] != true[mask]).all() and (noisy[~mask] == true[~mask]).all()
    assert np.asarray(a["x_idx"]).tolist() == np.arange(200).reshape(4, 50).tolist()
    again = hc.make_data(4, arrays, per_agent=50, val_per_agent=10, corruption=0.3, seed=3)
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(again.agents[k])) for k in a)
    other = hc.make_data(4, arrays, per_agent=50, val_per_agent=10, corruption=0.3, seed=4)
    assert not np.array_equal(np.asarray(a["train_y"]), np.asarray(other.agents["train_y"]))


@pytest.mark.parametrize("split", hc.SPLITS)
def test_shards_are_disjoint(split):
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    idx = hc.split_indices(labels, 8, 300, split, np.random.default_rng(1))
    assert idx.shape == (8, 300) and len(np.unique(idx)) == idx.size


def test_label_skew_uses_every_sample_when_classes_run_dry():
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    idx = hc.split_indices(labels, 10, 100, "label_skew", np.random.default_rng(5),
                           skew_alpha=0.1)
    assert sorted(idx.ravel().tolist()) == list(range(1000))


def test_label_skew_is_stronger_than_iid():
    labels = np.random.default_rng(0).integers(0, 10, 20000)

    def top_class_share(split):
        idx = hc.split_indices(labels, 16, 200, split, np.random.default_rng(2))
        return np.mean([np.bincount(labels[row], minlength=10).max() / 200 for row in idx])

    iid, skew = top_class_share("iid"), top_class_share("label_skew")
    assert iid < 0.2 and skew > 0.4, (iid, skew)


def test_bad_inputs_raise_clear_errors():
    arrays = _fake_arrays(500)
    with pytest.raises(ValueError, match="split must be one of"):
        hc.make_data(2, arrays, split="dirichlet")
    with pytest.raises(ValueError, match="corruption fraction"):
        hc.make_data(2, arrays, per_agent=20, corruption=1.0)
    with pytest.raises(ValueError, match="pool must divide 28"):
        hc.make_data(2, arrays, per_agent=20, pool=3)
    with pytest.raises(ValueError, match="exceeds the 500 available"):
        hc.make_data(4, arrays, per_agent=200)
    with pytest.raises(ValueError, match="strongly convex"):
        hc.make_data(2, arrays, per_agent=20, l2=0.0)
    with pytest.raises(ValueError, match="batch"):
        hc.make_hyper_cleaning(2, arrays=arrays, per_agent=20, batch=0)


def _one_agent(data, i):
    return ProblemData(shared=data.shared, agents=jax.tree.map(lambda a: a[i], data.agents))


def test_hypergradient_equals_finite_differences(x64):
    arrays = _fake_arrays(400)
    problem, data, x0, y0 = hc.make_hyper_cleaning(
        2, arrays=arrays, per_agent=30, val_per_agent=20, pool=7, l2=0.05, batch=None,
        corruption=0.3, dtype=jnp.float64)
    d0 = _one_agent(data, 0)
    x = jnp.asarray(np.random.default_rng(0).normal(0, 0.1, x0.shape[1]))
    flat0, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a[0], y0))

    def y_star(xv):
        gy = lambda v: jax.flatten_util.ravel_pytree(  # noqa: E731
            jax.grad(problem.g, argnums=1)(xv, unravel(v), d0, None))[0]
        v = flat0
        for _ in range(30):
            v = v - jnp.linalg.solve(jax.jacfwd(gy)(v), gy(v))
        return unravel(v)

    F = lambda xv: problem.f(xv, y_star(xv), d0, None)  # noqa: E731
    ys = y_star(x)
    hg = sj.hypergradient(problem, x, ys, d0, None, sj.Exact())
    hg = np.asarray(hg)
    # only the agent's own coordinates (0..29) carry gradient; the others are exactly 0
    assert np.all(hg[30:] == 0.0) and np.abs(hg[:30]).max() > 1e-6
    eps = 1e-5
    for j in (0, 7, 19, 29):
        e = jnp.zeros_like(x).at[j].set(eps)
        fd = (F(x + e) - F(x - e)) / (2 * eps)
        assert abs(float(fd) - hg[j]) <= 1e-7 * max(1.0, abs(hg[j])), (j, float(fd), hg[j])


def _mnist_or_skip():
    try:
        from slamjax.problems.meta_anil import load_mnist_splits
        return load_mnist_splits()
    except DataNotFoundError as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"MNIST not available: {e}")


def test_short_run_separates_corrupted_samples_on_mnist():
    arrays = _mnist_or_skip()
    problem, data, x0, y0 = hc.make_hyper_cleaning(4, arrays=arrays, per_agent=100,
                                                   val_per_agent=50, corruption=0.4,
                                                   test_size=2000)
    g = sj.graphs.ring(4)
    alg = sj.baselines.dsoba_gt(problem, g)
    res = sj.run(alg, sj.baselines.DSOBAGTParams.create(0.3, 0.3, 0.3), data, x0, y0,
                 num_steps=300, log_every=300, seed=0, progress=False)
    h = {k: float(np.asarray(v)[-1]) for k, v in res.history.items()}
    assert h["weight_gap"] > 0.2 and h["flagged"] > 0.5, h
    assert h["test_acc"] > 0.6, h
    # the same run with the weights frozen (η_x = 0) learns on the noisy labels: cleaning wins
    frozen = sj.run(alg, sj.baselines.DSOBAGTParams.create(0.0, 0.3, 0.3), data, x0, y0,
                    num_steps=300, log_every=300, seed=0, progress=False)
    assert float(np.asarray(frozen.history["weight_gap"])[-1]) == 0.0
    assert h["val_loss"] < float(np.asarray(frozen.history["val_loss"])[-1]) - 0.05
