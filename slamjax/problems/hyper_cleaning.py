"""Decentralized data hyper-cleaning on MNIST: learn per-sample weights that undo label noise.

The standard bilevel benchmark (Franceschi et al. 2017; used by the decentralized bilevel
literature, e.g. Chen et al. ICML 2023, Kong et al. 2024), written per agent:

* n agents, agent i holds ``per_agent`` training samples (a_j, b̃_j) of which a fraction
  ``corruption`` carry a wrong label (replaced by a uniformly random *other* digit), and
  ``val_per_agent`` clean validation samples;
* **UL variable** x ∈ R^N, N = n · per_agent: one weight per training sample of the whole
  network, w_j = σ(s · x_j) (s the logit scale, below). Every agent holds a copy x_i of the full vector (the UL is global:
  agent j's weights change the model everyone's validation loss sees), so consensus on x is
  part of the problem. Agent i's losses only touch its own coordinates;
* **LL variable** y = (W, b): a softmax regression on the images (784 → 10), the model trained
  on the weighted, noisy data of the whole network when y is in consensus;
* per agent, on a minibatch (or the whole shard with ``batch=None``)::

      g_i(x, y) = (1/B) Σ_{j∈batch} σ(s x_j) · CE(W a_j + b, b̃_j) + (l2/2) ‖y‖²  (LL)
      f_i(x, y) = (1/B) Σ_{j∈val batch} CE(W a_j + b, b_j)                        (UL)

  g_i is strongly convex in y (l2 > 0), as SLAM assumes.

Scales. In expectation ∂g_i/∂x_j is O(s/per_agent) for an agent's own samples and 0 otherwise,
and consensus averages the n copies, so the average logit s·x̄_j moves at a rate of about
η_x s² / N. With the default s = √N (``logit_scale=None``) one step size serves both levels
— which matters for SLAM, whose single penalty ρ is bounded by the smaller of the two steps
(ρ λ_max (1 + 2γ) < 4α) — instead of a UL step N times the LL one. s is traced
(``data.shared["logit_scale"]``).

Heterogeneity (``split``):

* ``"iid"``: samples drawn uniformly at random without replacement from the MNIST training set;
* ``"label_skew"``: agent i's class proportions p_i ~ Dirichlet(``skew_alpha`` · 1₁₀)
  (0.5 by default: most agents see two to four digits); its training *and* validation samples
  follow p_i. The test set is always the balanced MNIST test set.

``pool``: average-pool the 28×28 images by this factor (2 → 14×14 = 196 features; 1 keeps all
784 pixels). The default 2 costs about 1 point of test accuracy for a 4× cheaper LL.

Metrics (``metrics`` hook; the suite reports these):

* ``test_acc`` — accuracy of the network-average model ȳ on the MNIST test set;
* ``val_loss`` — the UL objective at ȳ: mean over agents of f_i(x̄, ȳ) on the whole validation
  shards (what a user would tune on);
* ``weight_gap`` — mean σ(x̄_j) over clean minus over corrupted training samples (> 0 when the
  weights separate them; 0 at the start);
* ``flagged`` — fraction of corrupted samples with σ(x̄_j) < 0.5 (recall of the cleaning).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.problem import BilevelProblem, ProblemData

__all__ = ["SPLITS", "hyper_cleaning_problem", "make_hyper_cleaning", "make_data",
           "split_indices", "corrupt_labels", "pool_images"]

SPLITS = ("iid", "label_skew")
"""How the training samples are split over the agents: iid shards, or class proportions per
agent drawn from a Dirichlet distribution (``label_skew``)."""
CLASSES = 10


def _ce(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _logits(y, feats):
    return feats @ y["W"] + y["b"]


def _sq_norm(tree):
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=None)
def hyper_cleaning_problem(batch: int | None = 32) -> BilevelProblem:
    """The per-agent problem; ``batch=None``: exact full-shard gradients (no sampling)."""
    batch = None if batch is None else int(batch)

    def _train(data, b):
        a = data.agents
        if b is None:
            return a["train_x"], a["train_y"], a["x_idx"]
        return a["train_x"][b["tr"]], a["train_y"][b["tr"]], a["x_idx"][b["tr"]]

    def g(x, y, data, b):
        feats, labels, idx = _train(data, b)
        w = jax.nn.sigmoid(data.shared["logit_scale"] * x[idx])
        return jnp.mean(w * _ce(_logits(y, feats), labels)) \
            + 0.5 * data.shared["l2"] * _sq_norm(y)

    def f(x, y, data, b):
        a = data.agents
        feats, labels = (a["val_x"], a["val_y"]) if b is None else \
            (a["val_x"][b["val"]], a["val_y"][b["val"]])
        return jnp.mean(_ce(_logits(y, feats), labels))

    def sample(key, data):
        kt, kv = jax.random.split(key)
        a = data.agents
        return {"tr": jax.random.randint(kt, (batch,), 0, a["train_y"].shape[0]),
                "val": jax.random.randint(kv, (batch,), 0, a["val_y"].shape[0])}

    def metrics(x, y, data, consensus_x, consensus_y):
        a, s = data.agents, data.shared
        xbar = jnp.mean(x, axis=0)
        ybar = jax.tree.map(lambda v: jnp.mean(v, axis=0), y)
        test = jnp.mean(jnp.argmax(_logits(ybar, s["test_x"]), -1) == s["test_y"])
        val = jnp.mean(jax.vmap(lambda vx, vy: jnp.mean(_ce(_logits(ybar, vx), vy)))(
            a["val_x"], a["val_y"]))
        w = jax.nn.sigmoid(s["logit_scale"] * xbar[a["x_idx"]])  # (n, per_agent)
        bad = a["corrupted"]
        nb = jnp.maximum(jnp.sum(bad), 1.0)
        ng = jnp.maximum(jnp.sum(1.0 - bad), 1.0)
        gap = jnp.sum(w * (1.0 - bad)) / ng - jnp.sum(w * bad) / nb
        flagged = jnp.sum((w < 0.5) * bad) / nb
        return {"test_acc": test, "val_loss": val, "weight_gap": gap, "flagged": flagged}

    return BilevelProblem(f=f, g=g, sample=None if batch is None else sample, metrics=metrics,
                          name=f"hyper-cleaning-b{batch}")


# ----------------------------------------------------------------------------------------
# data (host NumPy, deterministic given the seed)
# ----------------------------------------------------------------------------------------
def pool_images(images: np.ndarray, pool: int) -> np.ndarray:
    """(N, 784) uint8 or [0, 1] floats → (N, (28/pool)²) float32 in [0, 1] (block means)."""
    pool = int(pool)
    if pool < 1 or 28 % pool:
        raise ValueError(f"pool must divide 28 (1, 2, 4, 7, 14), got {pool}")
    a = np.asarray(images)
    scale = 1.0 / 255.0 if a.dtype == np.uint8 else 1.0
    a = a.reshape(len(a), 28 // pool, pool, 28 // pool, pool).astype(np.float32) * scale
    return a.mean(axis=(2, 4)).reshape(len(a), -1)


def split_indices(labels: np.ndarray, n: int, per_agent: int, split: str, rng,
                  skew_alpha: float = 0.5) -> np.ndarray:
    """(n, per_agent) disjoint sample indices into ``labels`` for the ``split`` rule."""
    labels = np.asarray(labels)
    need = n * per_agent
    if need > len(labels):
        raise ValueError(f"hyper-cleaning: n * samples per agent = {need} exceeds the "
                         f"{len(labels)} available; use fewer agents or samples per agent")
    if split == "iid":
        return rng.permutation(len(labels))[:need].reshape(n, per_agent)
    if split != "label_skew":
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (np.isfinite(skew_alpha) and skew_alpha > 0):
        raise ValueError(f"skew_alpha must be a finite number > 0, got {skew_alpha}")
    pools = [list(rng.permutation(np.nonzero(labels == c)[0])) for c in range(CLASSES)]
    out = np.empty((n, per_agent), np.int64)
    for i in range(n):
        p = rng.dirichlet(np.full(CLASSES, float(skew_alpha)))
        counts = rng.multinomial(per_agent, p)
        avail = np.array([len(q) for q in pools])
        excess = int(np.maximum(counts - avail, 0).sum())   # what drained classes cannot give
        counts = np.minimum(counts, avail)
        while excess > 0:                                    # moves to classes with samples left
            spare = avail - counts
            c = int(rng.choice(np.nonzero(spare > 0)[0]))
            k = min(excess, int(spare[c]))
            counts[c] += k
            excess -= k
        taken = []
        for c in range(CLASSES):
            k = int(counts[c])
            taken += pools[c][:k]
            pools[c] = pools[c][k:]
        out[i] = rng.permutation(np.asarray(taken, np.int64))
    return out


def corrupt_labels(labels: np.ndarray, fraction: float, rng):
    """Each row: exactly round(fraction · row length) labels replaced by a uniformly random
    different digit. Returns (noisy labels, corrupted mask)."""
    labels = np.asarray(labels)
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"corruption fraction must be in [0, 1), got {fraction}")
    n, m = labels.shape
    k = int(round(fraction * m))
    mask = np.zeros((n, m), bool)
    for i in range(n):
        mask[i, rng.permutation(m)[:k]] = True
    shift = rng.integers(1, CLASSES, size=labels.shape)
    noisy = np.where(mask, (labels + shift) % CLASSES, labels)
    return noisy, mask


def make_data(n: int, arrays, *, per_agent: int = 250, val_per_agent: int = 50,
              corruption: float = 0.3, split: str = "iid", skew_alpha: float = 0.5,
              pool: int = 2, l2: float = 1e-3, logit_scale: float | None = None, seed: int = 0,
              test_size: int | None = None, dtype=jnp.float32) -> ProblemData:
    """The :class:`ProblemData` of an instance (see :func:`make_hyper_cleaning`)."""
    for name, v in (("n", n), ("per_agent", per_agent), ("val_per_agent", val_per_agent)):
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"hyper-cleaning: {name} must be an integer ≥ 1, got {v!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a finite number > 0 (strongly convex LL), got {l2}")
    n, per_agent, val_per_agent = int(n), int(per_agent), int(val_per_agent)
    if logit_scale is None:
        logit_scale = float(np.sqrt(n * per_agent))
    if not (np.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be a finite number > 0, got {logit_scale}")
    tr_x, tr_y, te_x, te_y = arrays
    tr_y, te_y = np.asarray(tr_y).astype(np.int64), np.asarray(te_y).astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = split_indices(tr_y, n, per_agent + val_per_agent, split, rng, skew_alpha)
    tr_idx, val_idx = idx[:, :per_agent], idx[:, per_agent:]
    noisy, mask = corrupt_labels(tr_y[tr_idx], float(corruption), rng)
    feats = pool_images(tr_x, pool)
    if test_size is not None:
        te_x, te_y = te_x[:int(test_size)], te_y[:int(test_size)]
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    x_idx = np.arange(n * per_agent, dtype=np.int32).reshape(n, per_agent)
    return ProblemData(
        shared={"test_x": cast(pool_images(te_x, pool)), "test_y": jnp.asarray(te_y, jnp.int32),
                "l2": cast(l2), "logit_scale": cast(logit_scale)},
        agents={"train_x": cast(feats[tr_idx]), "train_y": jnp.asarray(noisy, jnp.int32),
                "val_x": cast(feats[val_idx]), "val_y": jnp.asarray(tr_y[val_idx], jnp.int32),
                "x_idx": jnp.asarray(x_idx), "corrupted": cast(mask),
                "true_y": jnp.asarray(tr_y[tr_idx], jnp.int32)})


def make_hyper_cleaning(n: int, *, per_agent: int = 250, val_per_agent: int = 50,
                        corruption: float = 0.3, split: str = "iid", skew_alpha: float = 0.5,
                        pool: int = 2, l2: float = 1e-3, logit_scale: float | None = None,
                        batch: int | None = 32,
                        seed: int = 0, test_size: int | None = None, path=None,
                        dataset: str = "mnist", verify: bool = True, arrays=None,
                        dtype=jnp.float32):
    """An instance: returns ``(problem, data, x0, y0)``.

    ``x0 = 0`` (every weight 1/2) and ``y0 = 0`` on every agent. ``batch``: minibatch size of
    each gradient estimate (``None``: exact gradients on the whole shard). Data is read by
    :func:`slamjax.data.load_mnist` (``path`` or ``$SLAMJAX_DATA``; clear error naming the
    files when missing) unless ``arrays=(train_x, train_y, test_x, test_y)`` is given.
    ``seed`` fixes the split and the corruption.
    """
    if batch is not None and (isinstance(batch, bool) or int(batch) < 1):
        raise ValueError(f"batch must be None or an integer ≥ 1, got {batch!r}")
    if arrays is None:
        from slamjax.problems.meta_anil import load_mnist_splits
        arrays = load_mnist_splits(path, dataset, verify)
    data = make_data(n, arrays, per_agent=per_agent, val_per_agent=val_per_agent,
                     corruption=corruption, split=split, skew_alpha=skew_alpha, pool=pool,
                     l2=l2, logit_scale=logit_scale, seed=seed, test_size=test_size,
                     dtype=dtype)
    d = int(data.agents["train_x"].shape[-1])
    N = int(n) * int(per_agent)
    x0 = jnp.zeros((int(n), N), dtype)
    y0 = {"W": jnp.zeros((int(n), d, CLASSES), dtype), "b": jnp.zeros((int(n), CLASSES), dtype)}
    return hyper_cleaning_problem(batch), data, x0, y0

