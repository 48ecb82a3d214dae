"""Per-agent CNN actor and critic for the pursuit global state (paper supplement C.3, Fig 3).

Paper C.3: each agent keeps two CNNs, an actor and a critic, "including two convolutional
layers, one max-pooling layer, and one fully connected layer", ReLU in every hidden layer; the
3 x 15 x 15 state "processed by two convolutional layers and one max-pooling layer first and
then passed through a fully connected layer as the output layer"; outputs 5 logits (actor) or
1 value (critic).  The channel and kernel sizes and the position of the pooling layer are only
drawn in the paper's Fig 3 image, so they are chosen here:

* input ``(..., C, X, Y)`` — e.g. :meth:`slamjax.envs.PursuitEnv.global_state` (C = 3: counts
  of pursuers, evaders, obstacles), moved to channels-last inside the network;
* ``conv1``: 3 x 3, 4 channels, SAME padding, ReLU;
* max-pool 2 x 2, stride 2 (VALID): 15 x 15 -> 7 x 7;
* ``conv2``: 3 x 3, 8 channels, SAME padding, ReLU;
* ``out``: dense 7 * 7 * 8 = 392 -> 5 logits (actor, 1,965 weights and biases) or 1 value
  (critic, 393).  With C = 3: ``conv1`` 112, ``conv2`` 296 — 2,373 (actor) / 801 (critic).

Why these sizes: a forward pass costs ~0.04 M multiply-adds (counted: 15·15·27·4 + 7·7·36·8
+ 392) against ~0.31 M for 8/16 channels with the pool at the end, and the whole pursuit
reproduction (ten seeds, several algorithms, two figures) has to train within 45 minutes.  3 x 3 kernels match the grid's 4-neighbourhood
(moves, tag reward, captures).  ``features`` and ``kernel`` are fields to change them.

**Convolution as a matrix product.**  The convolutions are written as explicit patch
extraction (``kernel**2`` shifted slices) followed by one matrix product, not ``lax.conv``:
under ``vmap`` over the agents' parameters, XLA turns ``lax.conv`` into a grouped convolution
whose gradient ran 24x slower on the 2-core CPU (1,285 against 30,940 agent-samples/s for
this network, 4 agents x 10 seeds; ``experiments/bench_conv.py``); a batched matrix product
vectorises well on every backend.  The result equals
``flax.linen.Conv(features, (k, k), padding="SAME")`` with the same ``kernel`` ``(k, k, C, F)``
and ``bias`` parameters (tested).

The layer names (``conv1``, ``conv2``, ``out``) are the parameter-tree keys used to pick the
layers under consensus.  Parameters of several agents are stacked on a leading agent axis with
``slamjax.rl.nets.init_agents`` / ``apply_agents`` exactly as for the MLPs.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["CNNActor", "CNNCritic", "PatchConv", "CNN_FEATURES", "CNN_KERNEL"]

CNN_FEATURES = (4, 8)
"""Channels of the two convolutions of every network."""
CNN_KERNEL = 3
"""Kernel size of both convolutions."""


def _patches(h, k: int):
    """(B, X, Y, C) -> (B, X, Y, k*k*C): the SAME-padded k x k neighbourhood of every cell,
    ordered (dx, dy, c) like a flattened ``(k, k, C)`` kernel."""
    lo = (k - 1) // 2
    hi = k - 1 - lo
    hp = jnp.pad(h, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    X, Y = h.shape[1], h.shape[2]
    return jnp.concatenate([hp[:, i:i + X, j:j + Y, :] for i in range(k) for j in range(k)],
                           axis=-1)


class PatchConv(nn.Module):
    """2-D convolution, stride 1, SAME padding, as patches @ kernel (see the module docstring).
    Parameters ``kernel`` ``(k, k, C, F)`` (LeCun-normal, flax's default) and ``bias`` ``(F,)``."""

    features: int
    kernel_size: int = CNN_KERNEL

    @nn.compact
    def __call__(self, h):
        k, c = self.kernel_size, h.shape[-1]
        kern = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return _patches(h, k) @ kern.reshape(k * k * c, self.features).astype(h.dtype) + bias


def _trunk(s, features, kernel):
    """conv -> ReLU -> max-pool -> conv -> ReLU, flattened; input ``(..., C, X, Y)``.  Called
    inside a compact ``__call__``, so the layers are top-level parameters ``conv1``, ``conv2``."""
    if s.ndim < 3:
        raise ValueError(f"the CNN needs an input (..., channels, x, y), got shape {s.shape}")
    if len(features) != 2:
        raise ValueError(f"the CNN has two convolutional layers: features needs 2 entries, "
                         f"got {tuple(features)}")
    lead = s.shape[:-3]
    h = jnp.moveaxis(s.reshape((-1,) + s.shape[-3:]), 1, -1)  # (B, X, Y, C)
    h = nn.relu(PatchConv(features[0], kernel, name="conv1")(h))
    h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
    h = nn.relu(PatchConv(features[1], kernel, name="conv2")(h))
    return h.reshape(lead + (-1,))


class CNNActor(nn.Module):
    """Softmax policy on an image state: ``(..., C, X, Y) -> (..., num_actions)`` logits."""

    num_actions: int = 5
    features: Sequence[int] = CNN_FEATURES
    kernel: int = CNN_KERNEL

    @nn.compact
    def __call__(self, s):
        h = _trunk(s, self.features, self.kernel)
        return nn.Dense(self.num_actions, name="out")(h)


class CNNCritic(nn.Module):
    """Scalar regressor on an image state (value critic, reward estimator):
    ``(..., C, X, Y) -> (...)``.  ``zero_out=True`` initialises the output layer to zero, so
    the network starts as the constant 0 (see :mod:`slamjax.rl.pursuit_ac`: a random
    critic's spatial variations bias the actors' advantage before the critic has learned)."""

    features: Sequence[int] = CNN_FEATURES
    kernel: int = CNN_KERNEL
    zero_out: bool = False

    @nn.compact
    def __call__(self, s):
        h = _trunk(s, self.features, self.kernel)
        init = nn.initializers.zeros if self.zero_out else nn.linear.default_kernel_init
        return nn.Dense(1, kernel_init=init, name="out")(h)[..., 0]
