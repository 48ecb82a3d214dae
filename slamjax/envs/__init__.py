"""Vectorised JAX environments.

``navigation``: cooperative navigation with the rules of MPE ``simple_spread``
(mpe2 1.1.1), pure functions that ``jit`` and ``vmap``.
``pursuit``: pursuit-evasion with the rules of PettingZoo SISL ``pursuit_v5`` (PettingZoo 1.27),
:class:`PursuitEnv` (its action encoding differs from navigation's: use
``slamjax.envs.pursuit.ACTION_NAMES``).
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
from slamjax.envs.pursuit import PursuitEnv, PursuitState, PursuitStep, rectangle_map

__all__ = [
    "ACTION_NAMES",
    "NUM_ACTIONS",
    "NavigationEnv",
    "NavState",
    "PursuitEnv",
    "PursuitState",
    "PursuitStep",
    "agent_observations",
    "global_obs",
    "rectangle_map",
    "reset",
    "step",
    "validate_actions",
]
