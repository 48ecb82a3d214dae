"""Decentralized meta-learning on MNIST with the ANIL split (paper §C.5, problem (9), SLAM-U).

Network (paper §C.5): 784 → 32 (sigmoid) → 10, defined with ``flax.linen``:

* the **body** (hidden layer W1, b1; 25 120 numbers) is the UL variable x_i — the reusable
  feature extractor, kept in consensus across the agents (SLAM-U, Alg. 3: consensus at the UL
  only);
* the **head** (output layer W2, b2; 330 numbers) is agent i's LL variable y_i — adapted to the
  agent's own data and never communicated.

Per agent i, with a minibatch ξ of B samples of its own shard (drawn by ``sample`` inside the
scan; the library draws one minibatch for the LL step and an independent one for the UL step)::

    g_i(x, y; ξ) = s · CE_ξ(head_y(body_x)) + (l2 / 2) · ‖y‖²     (LL: adaptation of the head)
    f_i(x, y; ξ) = s · CE_ξ(head_y(body_x))                        (UL: the meta objective)

where CE_ξ is the mean cross-entropy over the minibatch and ``s`` the loss scale:

* ``reduction="sum"`` (default, s = B): the losses are **summed** over the minibatch, the
  convention under which the paper's numbers are consistent (see below);
* ``reduction="mean"`` (s = 1): the per-sample average.

``l2 = 0.01`` is the paper's "2-norm regularization term with parameter 0.01" (gradient 0.01·y;
it covers W2 and b2, so g_i is strongly convex in y and y_i*(x) is unique, as SLAM assumes).
SLAM-U's UL step uses the implicit gradient of eq. (23), h_f = ∇_x f − ∇²_xy g·v with
∇²_yy g·v = ∇_y f, on the 330-dimensional head (:mod:`slamjax.hypergrad`).

Why "sum": with the mean convention, a weight decay of 0.01 on the head caps this network at
≈93.3 % test accuracy even for long centralized training on all 60 000 images (measured: 93.4 %
best, 93.0 % final after 10 000 SGD steps at lr 1), so the paper's 93.5 % threshold would be out
of reach; and with the UL step 0.01 on a mean loss SLAM-U is at ≈82 % after 2 000 iterations
(n = 2 and n = 10 alike; measured). With the
summed loss the same numbers (steps 0.01 / 0.1, l2 = 0.01) equal per-sample steps 0.32 / 3.2 and
a per-sample decay 0.01/32; 93.5 % is then reached after ≈1 400–1 550 iterations (45 000–50 000
samples per agent) for every n from 2 to 10, the order of the paper's Table 2 for n = 2 (1 968
iterations of 32 samples).

Data (``ProblemData``): ``agents`` holds each agent's shard of the MNIST training set as uint8
pixels (agent axis first; scaled to [0, 1] inside the scan, a quarter of the memory traffic of
float32); ``shared`` holds the test set and the numbers ``l2`` and ``scale`` (traced, so
changing them does not recompile).

Evaluation (``metrics`` hook, on the MNIST test set, every ``log_every`` steps):

* ``test_acc`` — **the reported accuracy**: the network-average feature extractor
  x̄ = (1/n) Σ_i x_i combined with each agent's own head y_i, accuracy averaged over the
  agents. x̄ is where problem (9) is solved (Theorem 1 measures stationarity at 1x̄) and each
  agent keeps its own adapted head: the personalised models ANIL produces;
* ``test_acc_min`` — the worst agent's accuracy with the same models;
* ``test_acc_avg`` — one network model: x̄ with the average head ȳ (an ensemble of the heads:
  the head is linear, so averaging weights averages logits);
* ``test_acc_local`` — each agent's own (x_i, y_i), averaged, on the first ``local_test``
  test images (n body evaluations per log, so a subset keeps logging cheap);
* ``test_loss`` — cross-entropy of the reported models, averaged over the agents.

:func:`make_meta_anil` builds ``(problem, data, x0, y0)``; every agent starts from the same flax
initialisation (LeCun-normal kernels, zero biases), as agents started from a common seed would.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import math

import numpy as np

from slamjax.problem import BilevelProblem, ProblemData

__all__ = ["HIDDEN", "CLASSES", "INPUT", "L2", "REDUCTIONS", "Body", "Head", "anil_problem",
           "make_meta_anil", "make_data", "init_params", "predict", "features", "head_logits",
           "test_metrics", "check_sizes", "load_mnist_splits", "hvp_yy", "cross_xy",
           "cross_entropy", "PAPER_THRESHOLD", "first_crossing", "crossing_stats",
           "selection_stop", "all_crossed_stop",
           "loglog_slope"]

HIDDEN = 32
"""Width of the shared hidden layer (the paper's 784 → 32 → 10 network)."""
CLASSES = 10
"""Number of classes (MNIST digits)."""
INPUT = 784
"""Input size: 28 × 28 flattened pixels."""
L2 = 0.01
"""L2 regularisation of each agent's head in the LL objective (the paper's 0.01)."""
REDUCTIONS = ("sum", "mean")
"""How a minibatch loss is reduced: summed (the paper's reading) or averaged."""
PAPER_THRESHOLD = 0.935
"""The paper's target test accuracy (Table 2: samples passed until 93.5 %)."""


class Body(nn.Module):
    """The shared feature extractor (UL variable x): Dense(32) + sigmoid."""

    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, images):
        return nn.sigmoid(nn.Dense(self.hidden)(images))


class Head(nn.Module):
    """The agent's own classifier (LL variable y): Dense(10), logits."""

    classes: int = CLASSES

    @nn.compact
    def __call__(self, feats):
        return nn.Dense(self.classes)(feats)


_BODY, _HEAD = Body(), Head()


def _pixels(images):
    """uint8 pixels → [0, 1] (float input is passed through unchanged)."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) * (1.0 / 255.0)
    return images


def features(x, images):
    """Hidden features sigmoid(images·W1 + b1) of one body ``x``."""
    return _BODY.apply({"params": x}, _pixels(images))


def head_logits(y, feats):
    """Logits of one head ``y`` (an agent's LL variable) on hidden features ``feats``."""
    return _HEAD.apply({"params": y}, feats)


def predict(x, y, images):
    """Logits of one agent's network (x: body params, y: head params)."""
    return head_logits(y, features(x, images))


def cross_entropy(logits, labels):
    """Mean cross-entropy over the leading (sample) axis."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def _sq_norm(tree):
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def _accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, -1) == labels)


# ----------------------------------------------------------------------------------------
# the problem (cached per static configuration so that jit caches are shared across calls)
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def anil_problem(batch: int = 32, local_test: int = 1000) -> BilevelProblem:
    """The per-agent ANIL bilevel problem with minibatches of ``batch`` samples.

    ``local_test``: number of test images for the ``test_acc_local`` metric (0: off)."""
    batch, local_test = int(batch), int(local_test)

    def g(x, y, data, b):
        ce = cross_entropy(predict(x, y, b["images"]), b["labels"])
        return data.shared["scale"] * ce + 0.5 * data.shared["l2"] * _sq_norm(y)

    def f(x, y, data, b):
        return data.shared["scale"] * cross_entropy(predict(x, y, b["images"]), b["labels"])

    def sample(key, data):
        imgs, labels = data.agents["images"], data.agents["labels"]
        idx = jax.random.randint(key, (batch,), 0, labels.shape[0])
        return {"images": imgs[idx], "labels": labels[idx]}

    def metrics(x, y, data, consensus_x, consensus_y):
        return test_metrics(x, y, data.shared["test_images"], data.shared["test_labels"],
                            local_test)

    return BilevelProblem(f=f, g=g, sample=sample, cross_xy=cross_xy,
                          metrics=metrics, name=f"meta-anil-b{batch}")


# Hand-written second-order products of g (softmax regression on the body's features).
# With z = h W2 + b2, p = softmax(z), r = p − onehot and, for a head direction v = (V, c),
# dz = h V + c and S dz = p ⊙ dz − p ⟨p, dz⟩ (the softmax Jacobian):
#   ∇²_yy g · v = (s/B) (hᵀ S dz, Σ_b S dz) + l2 v
#   ∇²_xy g · v = ∇_x ⟨∇_y g, v⟩ = backprop of δh = (s/B)(r Vᵀ + S dz W2ᵀ) through the body.
# ``cross_xy`` is wired into the problem: one body forward and one backward instead of
# autodiff's second-order graph. ``hvp_yy`` is NOT (it is kept as a checked reference): inside the
# K-term solver the library's jax.linearize of ∇_y g computes the body features once, while the
# hvp_yy hook would recompute them for every product. Tests compare both with jax.hessian /
# jax.jacobian in float64.
def _head_terms(x, y, data, b, v):
    h = features(x, b["images"])
    W, b2 = y["Dense_0"]["kernel"], y["Dense_0"]["bias"]
    p = jax.nn.softmax(h @ W + b2)
    dz = h @ v["Dense_0"]["kernel"] + v["Dense_0"]["bias"]
    sdz = p * dz - p * jnp.sum(p * dz, axis=-1, keepdims=True)
    c = data.shared["scale"] / b["labels"].shape[0]
    return h, W, p, sdz, c


def hvp_yy(x, y, data, b, v):
    """Hand-written ∇²_yy g · v for the head direction ``v`` at body ``x``, head ``y`` and
    minibatch ``b`` (a checked reference; not wired into the problem, see the comment above)."""
    h, _, _, sdz, c = _head_terms(x, y, data, b, v)
    l2 = data.shared["l2"]
    return {"Dense_0": {"kernel": c * (h.T @ sdz) + l2 * v["Dense_0"]["kernel"],
                        "bias": c * jnp.sum(sdz, axis=0) + l2 * v["Dense_0"]["bias"]}}


def cross_xy(x, y, data, b, v):
    """Hand-written ∇²_xy g · v (a body-shaped pytree) for the head direction ``v`` at body
    ``x``, head ``y`` and minibatch ``b``: one body forward and one backward pass."""
    h, W, p, sdz, c = _head_terms(x, y, data, b, v)
    r = p - jax.nn.one_hot(b["labels"], p.shape[-1], dtype=p.dtype)
    dh = c * (r @ v["Dense_0"]["kernel"].T + sdz @ W.T)
    dpre = dh * h * (1.0 - h)                      # through the sigmoid
    imgs = _pixels(b["images"])
    return {"Dense_0": {"kernel": imgs.T @ dpre, "bias": jnp.sum(dpre, axis=0)}}


def test_metrics(x, y, images, labels, local_test: int = 1000) -> dict:
    """Test accuracies / loss of the stacked models (agent axis first); see the module doc."""
    xbar = jax.tree.map(lambda a: jnp.mean(a, axis=0), x)
    ybar = jax.tree.map(lambda a: jnp.mean(a, axis=0), y)
    feats = features(xbar, images)                                        # (N, 32)
    logits = jax.vmap(head_logits, in_axes=(0, None))(y, feats)           # (n, N, 10)
    acc = jax.vmap(_accuracy, in_axes=(0, None))(logits, labels)           # (n,)
    loss = jax.vmap(cross_entropy, in_axes=(0, None))(logits, labels)
    out = {"test_acc": jnp.mean(acc), "test_acc_min": jnp.min(acc),
           "test_acc_avg": _accuracy(head_logits(ybar, feats), labels),
           "test_loss": jnp.mean(loss)}
    if local_test:
        sub, sub_labels = images[:local_test], labels[:local_test]
        local = jax.vmap(predict, in_axes=(0, 0, None))(x, y, sub)
        out["test_acc_local"] = jnp.mean(jax.vmap(_accuracy, in_axes=(0, None))(local,
                                                                                sub_labels))
    return out


# ----------------------------------------------------------------------------------------
# construction (all checks on the host, before any array reaches the device)
# ----------------------------------------------------------------------------------------
def _int_ge1(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"make_meta_anil: {name} must be an integer ≥ 1, got {v!r}")
    return int(v)


def check_sizes(n, per_agent, batch, available: int, test_size=None,
                test_available: int | None = None) -> None:
    """Clear errors for sizes that cannot work."""
    n, per_agent, batch = (_int_ge1(k, v) for k, v in
                           (("n", n), ("per_agent", per_agent), ("batch", batch)))
    if n * per_agent > available:
        hint = (f"use at most n = {available // per_agent} agents with per_agent={per_agent}"
                if available >= per_agent else f"per_agent exceeds the whole training set")
        raise ValueError(
            f"make_meta_anil: n * per_agent = {n} * {per_agent} = {n * per_agent} training "
            f"samples requested, but the training set has only {available}; {hint}, or "
            f"per_agent ≤ {available // n} with n={n}")
    if batch > per_agent:
        raise ValueError(
            f"make_meta_anil: minibatch batch={batch} is larger than an agent's share "
            f"per_agent={per_agent}; use batch ≤ {per_agent} or give each agent more data")
    if test_size is not None:
        t = _int_ge1("test_size", test_size)
        if test_available is not None and t > test_available:
            raise ValueError(f"make_meta_anil: test_size={t} exceeds the {test_available} "
                             "test images")


def load_mnist_splits(path=None, dataset: str = "mnist", verify: bool = True):
    """``(train_images uint8 (N, 784), train_labels, test_images uint8, test_labels)``.

    Raises :class:`slamjax.data.DataNotFoundError` / :class:`~slamjax.data.CorruptDataError`
    with the searched places / the md5 mismatch (see :func:`slamjax.data.load_mnist`)."""
    from slamjax.data import load_mnist

    tr_x, tr_y = load_mnist("train", path=path, dataset=dataset, verify=verify, normalize=False)
    te_x, te_y = load_mnist("test", path=path, dataset=dataset, verify=verify, normalize=False)
    return tr_x, tr_y, te_x, te_y


def _as_uint8_images(a, what):
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[1:] == (28, 28):
        a = a.reshape(len(a), INPUT)
    if a.ndim != 2 or a.shape[1] != INPUT:
        raise ValueError(f"make_meta_anil: {what} images must have shape (N, {INPUT}) or "
                         f"(N, 28, 28), got {a.shape}")
    if a.dtype != np.uint8:  # float pixels in [0, 1]
        a = np.clip(np.rint(np.asarray(a, np.float64) * 255.0), 0, 255).astype(np.uint8)
    return a


def make_data(n: int, per_agent: int | None, batch: int, arrays, *, seed: int = 0,
              test_size: int | None = None, l2: float = L2, reduction: str = "sum",
              loss_scale: float | None = None, dtype=jnp.float32) -> ProblemData:
    """The :class:`ProblemData` of an instance (see :func:`make_meta_anil`)."""
    n, batch = _int_ge1("n", n), _int_ge1("batch", batch)
    if reduction not in REDUCTIONS:
        raise ValueError(f"make_meta_anil: reduction must be one of {REDUCTIONS}, got "
                         f"{reduction!r}")
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"make_meta_anil: l2 must be a finite number > 0 (it makes the LL "
                         f"problem strongly convex), got {l2}")
    tr_x, tr_y, te_x, te_y = arrays
    tr_x, te_x = _as_uint8_images(tr_x, "training"), _as_uint8_images(te_x, "test")
    tr_y, te_y = np.asarray(tr_y), np.asarray(te_y)
    if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
        raise ValueError("make_meta_anil: images and labels differ in length "
                         f"(train {len(tr_x)} vs {len(tr_y)}, test {len(te_x)} vs {len(te_y)})")
    if per_agent is None:
        if n > len(tr_x):
            raise ValueError(f"make_meta_anil: n={n} agents but the training set has only "
                             f"{len(tr_x)} samples")
        per_agent = len(tr_x) // n
    check_sizes(n, per_agent, batch, len(tr_x), test_size, len(te_x))
    per_agent = int(per_agent)

    from slamjax.data import partition

    imgs, labels = partition(tr_x, tr_y, n, per_agent, seed=seed)
    if test_size is not None:
        te_x, te_y = te_x[:int(test_size)], te_y[:int(test_size)]
    scale = (float(batch) if reduction == "sum" else 1.0) if loss_scale is None \
        else float(loss_scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"make_meta_anil: loss_scale must be a finite number > 0, got "
                         f"{loss_scale}")
    return ProblemData(
        shared={"test_images": jnp.asarray(te_x, dtype) * (1.0 / 255.0),
                "test_labels": jnp.asarray(te_y, jnp.int32),
                "l2": jnp.asarray(l2, dtype), "scale": jnp.asarray(scale, dtype)},
        agents={"images": jnp.asarray(imgs), "labels": jnp.asarray(labels, jnp.int32)})


def make_meta_anil(n: int, per_agent: int | None = None, batch: int = 32, *, seed: int = 0,
                   init_seed: int = 0, test_size: int | None = None, l2: float = L2,
                   reduction: str = "sum", loss_scale: float | None = None,
                   local_test: int = 1000, path=None,
                   dataset: str = "mnist", verify: bool = True, arrays=None,
                   dtype=jnp.float32):
    """An instance of decentralized ANIL on MNIST: returns ``(problem, data, x0, y0)``.

    * ``per_agent``: training samples per agent. Default ``None``: the training set split into
      n equal disjoint parts (60 000 // n each). ``per_agent=128`` is the literal reading of
      "each [part] only includes 128 data samples". Shards are drawn by a permutation
      seeded with ``seed``.
    * ``batch``: minibatch size of each gradient estimate (paper: 32).
    * ``reduction``: ``"sum"`` (default) or ``"mean"`` over the minibatch (module doc);
      ``loss_scale`` overrides the factor s directly (e.g. s = 32 with batch 320: the average
      of ten agents' summed 32-sample losses, the "ideal consensus" reference).
    * ``test_size``: evaluate on the first that many test images (default: all 10 000);
      ``local_test``: test images for ``test_acc_local`` (0 switches that metric off).
    * ``path`` / ``dataset`` / ``verify``: passed to :func:`slamjax.data.load_mnist`;
      ``arrays=(train_x, train_y, test_x, test_y)`` skips loading (uint8 or [0, 1] floats).

    Every size is checked, and the files are found and md5-verified, before anything is moved
    to the device or compiled.
    """
    _int_ge1("n", n), _int_ge1("batch", batch)
    if per_agent is not None:
        _int_ge1("per_agent", per_agent)
        if int(batch) > int(per_agent):  # fail before reading 50 MB of data
            check_sizes(n, per_agent, batch, 10 ** 12)
    if isinstance(local_test, bool) or int(local_test) < 0:
        raise ValueError(f"make_meta_anil: local_test must be an integer ≥ 0, got {local_test!r}")
    if arrays is None:
        arrays = load_mnist_splits(path, dataset, verify)
    data = make_data(n, per_agent, batch, arrays, seed=seed, test_size=test_size, l2=l2,
                     reduction=reduction, loss_scale=loss_scale, dtype=dtype)
    local = min(int(local_test), int(data.shared["test_labels"].shape[0]))
    x0, y0 = init_params(int(n), init_seed, dtype)
    return anil_problem(int(batch), local), data, x0, y0


def init_params(n: int, seed: int = 0, dtype=jnp.float32):
    """Flax initialisation of body and head, the same on all n agents (agent axis first)."""
    return _init(int(n), jnp.asarray(int(seed), jnp.uint32), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(n, seed, dtype):  # one compiled program instead of dozens of eager ops
    kb, kh = jax.random.split(jax.random.key(seed))
    x = _BODY.init(kb, jnp.zeros((1, INPUT), dtype))["params"]
    y = _HEAD.init(kh, jnp.zeros((1, HIDDEN), dtype))["params"]
    rep = lambda t: jax.tree.map(  # noqa: E731
        lambda a: jnp.broadcast_to(a.astype(dtype), (n,) + a.shape), t)
    return rep(x), rep(y)


# ----------------------------------------------------------------------------------------
# analysis of logged accuracies (Table 2: samples to the threshold, speed-up in n)
# ----------------------------------------------------------------------------------------
def first_crossing(steps, acc, threshold: float = PAPER_THRESHOLD) -> float:
    """First iteration at which ``acc`` (logged at ``steps``) reaches ``threshold``, linearly
    interpolated between logs; NaN if it never does."""
    acc = np.asarray(acc, float)
    hit = np.nonzero(acc >= threshold)[0]
    if len(hit) == 0:
        return float("nan")
    j = int(hit[0])
    if j == 0:
        return float(steps[0])
    a0, a1 = acc[j - 1], acc[j]
    frac = (threshold - a0) / (a1 - a0) if a1 > a0 else 1.0
    return float(steps[j - 1] + frac * (steps[j] - steps[j - 1]))


def crossing_stats(steps, hist_rows, batch: int, threshold: float = PAPER_THRESHOLD) -> dict:
    """:func:`first_crossing` of every row (one run each) in iterations and in samples passed
    per agent (× ``batch``): lists, how many reached it, mean and std (ddof 1) over those."""
    it = np.array([first_crossing(steps, a, threshold) for a in hist_rows])
    samples = it * batch
    ok = np.isfinite(samples)
    return {"iterations": it.tolist(), "samples": samples.tolist(),
            "reached": int(ok.sum()), "seeds": int(len(ok)),
            "mean": float(np.mean(samples[ok])) if ok.any() else None,
            "std": float(np.std(samples[ok], ddof=1)) if ok.sum() > 1 else None}


def loglog_slope(ns, values):
    """Least-squares slope and intercept of log(values) against log(ns) over the finite,
    positive values (−1 = linear speed-up); NaNs with fewer than two points."""
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    slope, icpt = np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)
    return float(slope), float(icpt)


def _crossings(steps, rows, threshold):
    return np.array([first_crossing(steps, r, threshold) for r in rows], float)


def selection_stop(num_points, num_seeds, threshold=PAPER_THRESHOLD, metric="test_acc_avg"):
    """``slamjax.run`` callback for a grid × seeds run (grid-major lanes): stop once the
    selection is decided — some point has crossed ``threshold`` on every seed and every
    unfinished point has a lower bound on its seed-mean crossing (seeds not yet crossed counted
    at the current step) at or above the best finished mean."""
    def callback(steps, hist):
        acc = np.asarray(hist[metric], float).reshape(num_points, num_seeds, -1)
        now = float(steps[-1])
        best, bounds = math.inf, []
        for rows in acc:
            c = _crossings(steps, rows, threshold)
            if np.isfinite(c).all():
                best = min(best, float(c.mean()))
            else:
                bounds.append(float(np.where(np.isfinite(c), c, now).mean()))
        return bool(math.isfinite(best) and all(b >= best for b in bounds))
    return callback


def all_crossed_stop(threshold=PAPER_THRESHOLD, metric="test_acc_avg"):
    """``slamjax.run`` callback: stop once every lane has crossed ``threshold``."""
    def callback(steps, hist):
        acc = np.asarray(hist[metric], float).reshape(-1, len(steps))
        return bool(np.isfinite(_crossings(steps, acc, threshold)).all())
    return callback
