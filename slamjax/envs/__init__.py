"""Vectorised JAX environments.

``navigation``: cooperative navigation with the rules of MPE ``simple_spread``
(mpe2 1.1.1), pure functions that ``jit`` and ``vmap``.
"""

from slamjax.envs.navigation import (
    ACTION_NAMES,
    NUM_ACTIONS,
    NavigationEnv,
    NavState,
    agent_observations,
    global_obs,
    reset,
    step,
    validate_actions,
)

__all__ = [
    "ACTION_NAMES",
    "NUM_ACTIONS",
    "NavigationEnv",
    "NavState",
    "agent_observations",
    "global_obs",
    "reset",
    "step",
    "validate_actions",
]
