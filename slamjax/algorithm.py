"""The algorithm contract: every method is an ``(init, step)`` pair of pure functions.

::

    alg = slamjax.slam(problem, graph, SLAMConfig("slam_u"))     # or a peer from baselines
    state = alg.init(x0, y0, data)                              # pytree, agent axis first
    state, info = alg.step(key, state, params, data)            # pure; params traced
    metrics = alg.metrics(state, data)                          # dict of scalars

* ``init(x0, y0, data) -> state``: any pytree (a NamedTuple by convention) whose bilevel
  iterates are ``state.x`` and ``state.y``; caches a method needs (e.g. SLAM's Laplacian
  products) live *inside* the state, so a step is the same function wherever it is called.
* ``step(key, state, params, data) -> (state, info)``: one iteration. ``key`` is this step's
  key (the runner passes ``fold_in(run_key, t)``); ``params`` is a NamedTuple of traced
  arrays (step sizes, penalties): vmap over it for a grid, differentiate it. ``info`` is a
  dict of scalars the step computed anyway; the runner accumulates the counters
  ``"messages"`` (scalars sent over the network) and ``"minibatches"`` (per-agent minibatches
  drawn) and logs the others.
* ``metrics(state, data) -> dict`` (optional): what the runner logs every ``log_every`` steps.
* ``check(params, state, data)`` (optional): eager validation on concrete values (clear
  errors, stability warnings) run by :func:`slamjax.run` and :func:`slamjax.solve`.

An :class:`Algorithm` is a pytree: the library builds its functions as
:class:`jax.tree_util.Partial` over the communication object, so the graph's edge arrays are
*arguments* of the compiled programs (never constants baked into them) and the static parts
(problem, configuration) are hashed for the compilation cache. A user's own algorithm can use
plain closures instead: the runner splits any algorithm into its array leaves (traced) and
everything else (static, hashed by identity).

The model is optax's ``GradientTransformation`` and blackjax's ``SamplingAlgorithm``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

__all__ = ["Algorithm", "Static", "evaluate", "split_static", "merge_static", "REGISTRY", "make_algorithm",
           "register", "COUNTERS", "problem_of"]

#: ``info`` entries that the runner sums over steps (every other scalar is logged as is)
COUNTERS = ("messages", "minibatches")


class Algorithm(NamedTuple):
    """A decentralized method: ``init(x0, y0, data)`` and ``step(key, state, params, data)``
    (see the module docstring), plus optional ``metrics(state, data)`` and eager
    ``check(params, state, data)``."""

    init: Callable
    step: Callable
    metrics: Callable | None = None
    check: Callable | None = None


@jax.tree_util.register_pytree_node_class
class Static:
    """A pytree node without leaves that carries a hashable Python value as static data
    (a problem, a frozen configuration): ``Partial(fn, Static(config), graph)``."""

    def __init__(self, value):
        self.value = value

    def tree_flatten(self):
        return (), self.value

    @classmethod
    def tree_unflatten(cls, value, _):
        return cls(value)

    def __repr__(self):
        return f"Static({self.value!r})"


def evaluate(algorithm: Algorithm, state, data) -> dict:
    """The algorithm's metrics of ``state`` (an empty dict if it has none). jit-able."""
    if algorithm.metrics is None:
        return {}
    return dict(algorithm.metrics(state, data))


def problem_of(algorithm: Algorithm):
    """The :class:`~slamjax.BilevelProblem` an algorithm was built on, or ``None``: the
    library's builders pass ``Static((problem, config))`` to the ``Partial`` of ``step``
    (a user's closure-based algorithm has none, and then only the generic checks run)."""
    from slamjax.problem import BilevelProblem

    for arg in getattr(algorithm.step, "args", ()):
        value = arg.value if isinstance(arg, Static) else arg
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, BilevelProblem):
                return item
    return None


# ----------------------------------------------------------------------------------------
# splitting an algorithm into traced leaves and static rest (equinox-style filtering)
# ----------------------------------------------------------------------------------------
def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


class _StaticPart(NamedTuple):
    treedef: Any
    statics: tuple  # non-array leaves in order, None where an array leaf was


def split_static(tree) -> tuple[list, _StaticPart]:
    """(array leaves, hashable rest). Non-array leaves (functions, strings, …) are static."""
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [leaf if _is_array(leaf) else None for leaf in leaves]
    statics = tuple(None if _is_array(leaf) else _Hashed(leaf) for leaf in leaves)
    return arrays, _StaticPart(treedef, statics)


def merge_static(arrays: list, static: _StaticPart):
    leaves = [a if s is None else s.value for a, s in zip(arrays, static.statics)]
    return jax.tree.unflatten(static.treedef, leaves)


class _Hashed:
    """Hash a static leaf by value when it is hashable, else by identity."""

    __slots__ = ("value", "_key")

    def __init__(self, value):
        self.value = value
        try:
            hash(value)
            self._key = (0, value)
        except TypeError:
            self._key = (1, id(value))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Hashed) and self._key == other._key


# ----------------------------------------------------------------------------------------
# registry (the contract test runs every entry)
# ----------------------------------------------------------------------------------------
class RegistryEntry(NamedTuple):
    """``build(problem, graph, **options) -> Algorithm`` and ``default_params(**kw)`` giving
    a params NamedTuple that converges on the default quadratic."""

    build: Callable
    default_params: Callable
    description: str


REGISTRY: dict[str, RegistryEntry] = {}


def register(name: str, build: Callable, default_params: Callable, description: str = ""):
    """Add a method to :data:`REGISTRY` (``slamjax.make_algorithm(name, ...)``)."""
    if name in REGISTRY:
        raise ValueError(f"algorithm {name!r} is already registered")
    REGISTRY[name] = RegistryEntry(build, default_params, description)
    return build


def make_algorithm(name: str, problem, graph, **options) -> Algorithm:
    """Build a registered algorithm by name (``slamjax.REGISTRY`` lists them)."""
    key = name.lower().replace("-", "_")
    if key not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[key].build(problem, graph, **options)
