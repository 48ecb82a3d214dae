"""Per-agent CNN actor and critic for the pursuit global state (paper supplement C.3, Fig 3).

Paper C.3: each agent keeps two CNNs, an actor and a critic, "including two convolutional
layers, one max-pooling layer, and one fully connected layer", ReLU in every hidden layer; the
3 x 15 x 15 state "processed by two convolutional layers and one max-pooling layer first and
then passed through a fully connected layer as the output layer"; outputs 5 logits (actor) or
1 value (critic).  The channel and kernel sizes are only drawn in the paper's Fig 3 image, so
they are chosen here:

* input ``(..., 3, X, Y)`` — :meth:`slamjax.envs.PursuitEnv.global_state` (counts of pursuers,
  evaders, obstacles), moved to channels-last inside the network;
* ``conv1``: 3 x 3, 8 channels, SAME padding, ReLU;
* ``conv2``: 3 x 3, 16 channels, SAME padding, ReLU;
* max-pool 2 x 2, stride 2 (VALID): 15 x 15 -> 7 x 7;
* ``out``: dense 7 * 7 * 16 = 784 -> 5 logits (actor, 3,925 weights and biases) or 1 value
  (critic, 785).  ``conv1`` 224 + ``conv2`` 1,168: 5,317 (actor) / 2,177 (critic) parameters.

Why these sizes: 3 x 3 kernels match the grid's 4-neighbourhood (moves, tag reward, surround
captures); two of them see 5 x 5 before pooling; 8 and 16 channels keep a per-agent forward
pass at ~0.3 M multiply-adds so that ten seeds of several agents train within the CPU budget
of the pursuit reproduction.  Both sizes are fields (``features``, ``kernel``) to change them.

The layer names (``conv1``, ``conv2``, ``out``) are the parameter-tree keys used to pick the
layers under consensus.  Parameters of several agents are stacked on a leading agent axis with
``slamjax.rl.nets.init_agents`` / ``apply_agents`` exactly as for the MLPs.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["CNNActor", "CNNCritic", "CNN_FEATURES", "CNN_KERNEL"]

CNN_FEATURES = (8, 16)
CNN_KERNEL = 3


def _trunk(s, features, kernel):
    """conv -> ReLU -> conv -> ReLU -> max-pool, flattened; input ``(..., C, X, Y)``.  Called
    inside a compact ``__call__``, so the layers are top-level parameters ``conv1``, ``conv2``."""
    if s.ndim < 3:
        raise ValueError(f"the CNN needs an input (..., channels, x, y), got shape {s.shape}")
    lead = s.shape[:-3]
    h = jnp.moveaxis(s.reshape((-1,) + s.shape[-3:]), 1, -1)  # (B, X, Y, C)
    for i, f in enumerate(features):
        h = nn.relu(nn.Conv(f, (kernel, kernel), padding="SAME", name=f"conv{i + 1}")(h))
    h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
    return h.reshape(lead + (-1,))


class CNNActor(nn.Module):
    """Softmax policy on the global state: ``(..., 3, X, Y) -> (..., num_actions)`` logits."""

    num_actions: int = 5
    features: Sequence[int] = CNN_FEATURES
    kernel: int = CNN_KERNEL

    @nn.compact
    def __call__(self, s):
        h = _trunk(s, self.features, self.kernel)
        return nn.Dense(self.num_actions, name="out")(h)


class CNNCritic(nn.Module):
    """Value critic on the global state: ``(..., 3, X, Y) -> (...)``."""

    features: Sequence[int] = CNN_FEATURES
    kernel: int = CNN_KERNEL

    @nn.compact
    def __call__(self, s):
        h = _trunk(s, self.features, self.kernel)
        return nn.Dense(1, name="out")(h)[..., 0]
