"""The pure loop every algorithm and trainer uses: keys, ``iterate`` and ``solve``.

* :func:`as_key` — a PRNG key from any form JAX users hold (None, an int seed, a typed key,
  a raw ``uint32[2]`` key); seeds outside the key range are refused with the rule.
* :func:`iterate` — ``num_steps`` steps with ``lax.scan``; step t uses ``fold_in(key, t)``
  and the params with every schedule evaluated at t (:mod:`slamjax.schedules`); optional
  rematerialised chunks for reverse mode.
* :func:`solve` — input checks, ``init`` and :func:`iterate` from (x0, y0): the pure
  end-to-end function (differentiable with respect to params, data, x0, y0).

No I/O and no caches here; the host driver (:mod:`slamjax.driver`) adds lanes, chunks,
progress, divergence handling and placements.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slamjax.algorithm import Algorithm
from slamjax.checks import (all_finite, check_inputs, eager_checks, traced_checks,
                            tracing_checks)
from slamjax.schedules import at

__all__ = ["as_key", "check_seed", "iterate", "solve", "step_body", "SEED_RANGE"]

SEED_RANGE = (-(2 ** 63), 2 ** 64)
"""Seeds a key is made from: ``jax.random.key`` takes any int in [−2⁶³, 2⁶⁴)."""


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as a Python int in :data:`SEED_RANGE`, else a ValueError that says the rule
    (an int, or a float with an integer value such as 1e3)."""
    if isinstance(seed, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {seed!r}")
    if isinstance(seed, (float, np.floating)):
        if not np.isfinite(seed) or seed != int(seed):
            raise ValueError(f"{name} must be an integer, got {seed!r}")
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {seed!r}") from None
    lo, hi = SEED_RANGE
    if not lo <= value < hi:
        raise ValueError(f"{name}={value} is outside the range of a PRNG seed [-2**63, 2**64); "
                         f"pass a smaller seed (e.g. {value % 2 ** 32})")
    return value


def as_key(key, name: str = "key"):
    """A PRNG key from any of the forms JAX users hold: ``None`` (seed 0), an int seed, a
    typed key (``jax.random.key``) or a raw ``uint32[2]`` key (``jax.random.PRNGKey``)."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(check_seed(key, name))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    shape = tuple(jnp.shape(key)) if dtype is not None else None
    if shape == () and jnp.issubdtype(dtype, jnp.integer):
        return jax.random.key(key)  # an integer seed array (traced or not)
    if shape == (2,) and dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)  # jax.random.PRNGKey(seed)
    raise TypeError(f"{name} must be an int seed, jax.random.key(seed) or "
                    f"jax.random.PRNGKey(seed); got {type(key).__name__}"
                    + (f" of shape {shape} and dtype {dtype}" if dtype is not None else ""))


def check_algorithm(algorithm) -> None:
    """A TypeError unless ``algorithm`` is a :class:`~slamjax.Algorithm`."""
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"expected a slamjax.Algorithm (e.g. slamjax.slam(problem, graph, "
                        f"config)), got {type(algorithm).__name__}")


def step_body(algorithm: Algorithm, params, data, key):
    """``((state, t), _) -> ((state', t + 1), info)``: one step t with ``fold_in(key, t)``
    and the params at t (the scan body of :func:`iterate` and of the driver's chunks)."""
    def body(carry, _):
        s, t = carry
        s, info = algorithm.step(jax.random.fold_in(key, t), s, at(params, t), data)
        return (s, t + 1), info

    return body


def iterate(algorithm: Algorithm, params, data, state, key, num_steps: int, *,
            checkpoint_every: int | None = None, start=0):
    """``num_steps`` steps of ``algorithm`` from ``state`` with ``lax.scan``; step t (counted
    from ``start``) uses ``fold_in(key, t)``. Pure and differentiable.

    ``checkpoint_every=c`` runs an outer scan over T/c rematerialised chunks of c steps, so
    reverse-mode memory grows like O(T/c + c) instead of O(T).
    """
    num_steps = int(num_steps)
    step = step_body(algorithm, params, data, key)

    def body(carry, x):
        return step(carry, x)[0], None

    carry = (state, jnp.asarray(start, jnp.int32))
    if not checkpoint_every or checkpoint_every >= num_steps:
        return lax.scan(body, carry, None, length=num_steps)[0][0]
    c = int(checkpoint_every)
    outer, rem = divmod(num_steps, c)

    @jax.checkpoint
    def chunk(cr, _):
        return lax.scan(body, cr, None, length=c)[0], None

    carry = lax.scan(chunk, carry, None, length=outer)[0]
    if rem:
        carry = lax.scan(body, carry, None, length=rem)[0]
    return carry[0]


def solve(algorithm: Algorithm, params, data, x0, y0, key, num_steps: int, *,
          checkpoint_every: int | None = None, check: bool | str = True, placement=None):
    """Pure end-to-end solve: ``init`` then ``num_steps`` steps. Differentiable with respect
    to ``params``, ``data``, ``x0`` and ``y0`` (``jax.grad`` / ``jax.jvp``). ``key``: an int
    seed, ``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``.

    ``check=True`` validates eagerly whatever is concrete (shapes and dtypes always;
    hyperparameter values, NaN/Inf in x0/y0/data, the problem's f and g at the per-agent
    shapes and the LL curvature when the values are concrete — skipped under tracing).
    ``check="traced"`` also emits the value checks as ``checkify.check`` s so that they run
    inside a compiled program (the call must then be inside ``jax.experimental.checkify``;
    :func:`slamjax.checked` does both). ``check=False`` checks nothing.

    ``placement`` (e.g. :class:`slamjax.placement.Sharded`): place the inputs on devices
    (the agent axis sharded) and run one compiled program there; returns the placed state.
    """
    check_algorithm(algorithm)
    if check not in (True, False, "traced"):
        raise ValueError(f"check must be True, False or 'traced', got {check!r}")
    if placement is not None:
        return placement.solve(algorithm, params, data, x0, y0, as_key(key), int(num_steps),
                               checkpoint_every=checkpoint_every, check=bool(check))
    key = as_key(key)
    if check:
        check_inputs(data, x0, y0)
    state = algorithm.init(x0, y0, data)
    traced = check == "traced" or (check is True and tracing_checks())
    if check:
        eager_checks(algorithm, params, data, x0, y0, state)
    if traced:
        traced_checks(params, data, x0, y0)
    out = iterate(algorithm, params, data, state, key, num_steps,
                  checkpoint_every=checkpoint_every)
    if traced:
        from jax.experimental import checkify

        checkify.check(all_finite(out), f"solve (checked under jit): the state after "
                       f"{int(num_steps)} steps has NaN/Inf (the run diverged): reduce the "
                       "step sizes or the penalty (for SLAM: raise alpha/beta or lower rho), "
                       "or use slamjax.run, which stops a diverged lane at its last finite "
                       "state")
    return out
