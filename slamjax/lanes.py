"""Lanes of one compiled program: seeds × a hyperparameter grid, flattened grid-major into
one vmapped axis (the driver's layout), and the grids themselves (crossed dicts or point
lists; a schedule's numbers are named ``"field.number"``)."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slamjax.loop import check_seed
from slamjax.schedules import Schedule

__all__ = ["Lanes", "grid_points", "stack_points", "with_point", "as_arrays", "lane_keys",
           "lane_states", "reshape_lanes"]


class Lanes(NamedTuple):
    """How the lanes of one program are laid out: ``grid`` points (labels, or ``None``: no
    grid axis) × ``seeds`` (or ``None``: no seed axis), flattened grid-major into one vmapped
    axis. ``params_batched``: the params carry the lane axis (with a grid)."""

    grid: list | None = None
    seeds: list | None = None

    @property
    def shape(self) -> tuple:
        """(G, S), (G,), (S,) or () as the lanes have a grid and seeds."""
        return tuple(len(v) for v in (self.grid, self.seeds) if v is not None)

    @property
    def count(self) -> int | None:
        """Number of lanes (``None``: one unbatched run)."""
        return int(np.prod(self.shape)) if self.shape else None

    def label(self, flat: int) -> str:
        """A readable name of the lane with flat index ``flat``."""
        idx = list(np.unravel_index(flat, self.shape)) if self.shape else []
        parts = []
        if self.grid is not None:
            parts.append(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in self.grid[idx.pop(0)].items()))
        if self.seeds is not None:
            parts.append(f"seed {self.seeds[idx.pop(0)]}")
        return "(" + "; ".join(parts) + ")"


def _field_names(params) -> tuple:
    names = list(params._fields)
    for f in params._fields:
        v = getattr(params, f)
        if isinstance(v, Schedule):
            names += [f"{f}.{k}" for k in v.numbers]
    return tuple(names)


def grid_points(params, grid) -> list[dict] | None:
    """The grid as a list of points: a dict of value lists is crossed (in the order given),
    a list of dicts is taken as it is. Names are fields of ``params`` or, for a schedule
    field, ``"field.number"`` (e.g. ``"rho.init"``)."""
    if grid is None:
        return None
    if getattr(params, "_fields", None) is None:
        raise TypeError("grid needs params to be a NamedTuple (e.g. SLAMParams)")
    if isinstance(grid, dict):
        names = list(grid)
        values = [list(np.atleast_1d(np.asarray(v, dtype=float))) for v in grid.values()]
        points = [dict(zip(names, map(float, c))) for c in itertools.product(*values)]
    else:
        points = [{k: float(v) for k, v in dict(p).items()} for p in grid]
    if not points:
        raise ValueError("grid is empty")
    fields = _field_names(params)
    for p in points:
        bad = set(p) - set(fields)
        if bad:
            raise ValueError(f"grid names {sorted(bad)} are not fields of "
                             f"{type(params).__name__} {fields}")
    return points


def with_point(params, point: dict):
    """``params`` with the values of one grid point (``"field.number"`` for a schedule)."""
    for name, v in point.items():
        field, _, number = name.partition(".")
        old = getattr(params, field)
        params = params._replace(**{field: old.replace(**{number: v}) if number else v})
    return params


def stack_points(params, points: list[dict]):
    """One params tree with a leading axis over ``points`` (each leaf keeps its dtype)."""
    each = [with_point(params, p) for p in points]

    def stack(*v):
        if callable(v[0]):  # a plain schedule: static, the same at every point
            return v[0]
        return jnp.asarray(np.stack([np.asarray(a) for a in v]), dtype=jnp.result_type(v[0]))

    return jax.tree.map(stack, *each)


def as_arrays(params):
    """Strong-typed arrays at every array-like leaf (a Python float and a float32 array give
    the same program); callables (plain schedules) stay as they are."""
    return jax.tree.map(lambda p: p if callable(p) else jnp.asarray(np.asarray(p)), params)


def lane_keys(seed, seeds):
    """One PRNG key (``seeds`` None) or a stacked key per seed."""
    if seeds is None:
        return jax.random.key(check_seed(seed))
    return jnp.stack([jax.random.key(s) for s in seeds])


def reshape_lanes(tree, lanes: Lanes):
    """Flat lane axis (L, ...) -> (G, S, ...) as ``lanes`` says."""
    if len(lanes.shape) < 2:
        return tree
    return jax.tree.map(lambda a: a.reshape(lanes.shape + a.shape[1:]), tree)


def lane_states(algorithm, data, x0, y0, seeds, batched_init, lanes: Lanes):
    """(the lanes' initial state, one lane's state for the checks)."""
    if batched_init:
        state0 = jax.vmap(algorithm.init, in_axes=(0, 0, None))(x0, y0, data)
        one = jax.tree.map(lambda a: a[0], state0)
    else:
        state0 = one = algorithm.init(x0, y0, data)
    if lanes.count is None:
        return state0, one
    G = len(lanes.grid) if lanes.grid is not None else 1
    S = len(seeds) if seeds is not None else 1
    if batched_init:  # (S, ...) -> (G·S, ...)
        state = jax.tree.map(lambda a: jnp.reshape(jnp.broadcast_to(a, (G,) + a.shape),
                                                   (G * S,) + a.shape[1:]), state0)
    else:
        state = jax.tree.map(lambda a: jnp.broadcast_to(a, (G * S,) + jnp.shape(a)), state0)
    return state, one
