"""Actor and critic networks (flax.linen), one per agent, parameters stacked on the agent axis.

Paper §C.2 (cooperative navigation): "Both the actor and critic networks maintained at each
agent have one hidden layer with 20 neurons followed by the ReLU activation function"; the
critic outputs one number, the actor the 5 action logits; all of them read the global state
(positions of the n agents and the n landmarks, 4n numbers).

* :class:`Actor` — π_{θ_i}(·|s): 4n → 20 (ReLU) → 5 logits.  Upper-level variable x_i.
* :class:`MLPHead` — V(s; w_i): 4n → 20 (ReLU) → 1 (value critic, lower-level task k = 1),
  and R̂(s, a; φ_i): [s, one-hot(a)] (4n + 5n) → 20 (ReLU) → 1 (reward estimator of eq. (211d),
  lower-level task k = 2).  The paper writes both with linear features (φ(s)ᵀw, ψ(s,a)ᵀφ) but
  uses neural critics in its experiments; we use the network outputs in their place.

Every agent's parameters are initialised from its own key (agents start from different
networks, so consensus has real work to do) and stacked: each leaf has the agent axis first.
:func:`apply_agents` applies agent i's network to an input with ``jax.vmap`` — no Python loop
over agents.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Actor", "MLPHead", "init_agents", "apply_agents", "reward_input", "HIDDEN"]

HIDDEN = 20  # paper §C.2
"""Hidden units of every network (paper §C.2)."""


class Actor(nn.Module):
    """Softmax policy: logits = Dense(num_actions)(relu(Dense(hidden)(s)))."""

    num_actions: int = 5
    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, s):
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(s))
        return nn.Dense(self.num_actions, name="logits")(h)


class MLPHead(nn.Module):
    """Scalar regressor: Dense(1)(relu(Dense(hidden)(z))) with the last axis squeezed."""

    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, z):
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(z))
        return nn.Dense(1, name="out")(h)[..., 0]


def init_agents(module: nn.Module, key, n: int, example_input) -> Any:
    """Parameters of ``n`` independent copies of ``module`` (one key each), agent axis first."""
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: module.init(k, example_input))(keys)


def apply_agents(module: nn.Module, params, z, *, shared_input: bool = True):
    """Apply agent i's copy of ``module`` for every i.

    ``shared_input=True``: ``z`` is one input (any leading batch axes) that every agent reads,
    the result has a new leading agent axis. ``False``: ``z`` has the agent axis first.
    """
    in_axes = (0, None) if shared_input else (0, 0)
    return jax.vmap(module.apply, in_axes=in_axes)(params, z)


def reward_input(obs, actions, num_actions: int = 5):
    """Input of the reward estimator R̂(s, a; φ): the global state and the one-hot joint action.

    ``obs`` (..., 4n), ``actions`` (..., n) integers -> (..., 4n + num_actions·n).
    """
    onehot = jax.nn.one_hot(actions, num_actions, dtype=obs.dtype)
    return jnp.concatenate([obs, onehot.reshape(onehot.shape[:-2] + (-1,))], axis=-1)
