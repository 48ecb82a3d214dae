"""Step-size and penalty schedules: any params leaf may be a function of the step count.

Stochastic bilevel solvers decrease their steps, e.g. SOBA's ρ_t = ρ₀/√(t+1). Put a
:class:`Schedule` (or any callable ``t -> value``, such as an optax schedule) in a params
field and :func:`slamjax.run`, :func:`slamjax.solve`, :mod:`slamjax.diff` and a grid accept
it: the loop evaluates every schedule at the step counter t (a traced int32) and the step
receives plain numbers (:func:`at`). A :class:`Schedule` keeps its numbers as traced pytree
leaves, so a grid can cross them (``grid={"rho.init": [0.5, 1.0]}``) and they can be
differentiated; a plain callable's numbers are static (part of the compiled program)::

    params = DSOBAParams.create(lr_x=schedules.inverse_sqrt(0.1), lr_y=0.05, lr_z=0.05)
    params = params._replace(lr_x=schedules.from_optax(optax.exponential_decay,
                                                       init_value=0.1, transition_steps=100,
                                                       decay_rate=0.5,
                                                       static=("transition_steps", "decay_rate")))
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["Schedule", "inverse_sqrt", "inverse_power", "from_optax", "at", "has_schedules",
           "is_schedule"]


@jax.tree_util.register_pytree_node_class
class Schedule:
    """``fn(t, **numbers)`` with ``numbers`` traced (pytree leaves) and ``fn`` static."""

    def __init__(self, fn: Callable, numbers: dict | None = None, statics: tuple = ()):
        self.fn = fn
        self.numbers = dict(numbers or {})
        self.statics = tuple(statics)

    def __call__(self, t):
        return self.fn(t, **self.numbers, **dict(self.statics))

    def replace(self, **numbers) -> "Schedule":
        """The same schedule with some numbers replaced (unknown names are an error)."""
        bad = set(numbers) - set(self.numbers)
        if bad:
            raise ValueError(f"schedule has no number(s) {sorted(bad)}; it has "
                             f"{sorted(self.numbers)}")
        return Schedule(self.fn, {**self.numbers, **numbers}, self.statics)

    def tree_flatten(self):
        names = tuple(sorted(self.numbers))
        return tuple(self.numbers[k] for k in names), (self.fn, names, self.statics)

    @classmethod
    def tree_unflatten(cls, aux, children):
        fn, names, statics = aux
        return cls(fn, dict(zip(names, children)), statics)

    def __repr__(self):
        name = getattr(self.fn, "__name__", repr(self.fn))
        return f"Schedule({name}, {self.numbers})"


def _inverse_power(t, init, power):
    return init / (jnp.asarray(t, jnp.result_type(init)) + 1.0) ** power


def _inverse_sqrt(t, init):
    return init / jnp.sqrt(jnp.asarray(t, jnp.result_type(init)) + 1.0)


def inverse_sqrt(init) -> Schedule:
    """init/√(t+1) (SOBA's decreasing step); ``init`` traced."""
    return Schedule(_inverse_sqrt, {"init": jnp.asarray(init)})


def inverse_power(init, power) -> Schedule:
    """init/(t+1)^power; both numbers traced."""
    return Schedule(_inverse_power, {"init": jnp.asarray(init), "power": jnp.asarray(power)})


def _optax_call(t, *, _make, **kw):
    return _make(**kw)(t)


def from_optax(make: Callable, static: tuple = (), **numbers) -> Schedule:
    """An optax schedule constructor (e.g. ``optax.exponential_decay``) with its numbers
    traced: ``make(**numbers)(t)`` is built inside the program. Names in ``static`` (integer
    arguments such as ``transition_steps``) stay Python values."""
    stat = tuple((k, numbers[k]) for k in static) + (("_make", make),)
    traced = {k: jnp.asarray(v) for k, v in numbers.items() if k not in static}
    return Schedule(_optax_call, traced, stat)


def is_schedule(v) -> bool:
    """True for a :class:`Schedule` or any other callable params leaf."""
    return isinstance(v, Schedule) or callable(v)


def has_schedules(params) -> bool:
    """True if some field of ``params`` is a schedule."""
    return any(is_schedule(v) for v in _fields(params))


def _fields(params):
    return tuple(params) if isinstance(params, tuple) else ()


def at(params, t) -> Any:
    """``params`` with every schedule evaluated at step ``t`` (the object itself when it has
    none, so a run without schedules is the same program as before)."""
    if not has_schedules(params):
        return params
    return type(params)(*(v(t) if is_schedule(v) else v for v in params))
