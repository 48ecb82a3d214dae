"""Small input checks shared by the environments and the RL configuration."""

from __future__ import annotations

import jax
import numpy as np


def is_tracer(x) -> bool:
    """True inside jit/vmap (values cannot be inspected there)."""
    return isinstance(x, jax.core.Tracer)


def check_int(name: str, v, minimum: int = 1) -> int:
    """``v`` as a Python int, or a ValueError naming ``name`` if it is not an int >= minimum
    (bools are refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)
