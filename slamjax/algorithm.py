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
  key (the loop passes ``fold_in(run_key, t)``); ``params`` is a NamedTuple of traced arrays
  (step sizes, penalties): vmap over it for a grid, differentiate it. ``info`` is a dict the
  step computed anyway; the driver sums the counters ``"messages"`` (scalars sent over the
  network) and ``"minibatches"`` (per-agent minibatches drawn) and logs the others.
* ``metrics(state, data) -> dict`` (optional): what the driver logs every ``log_every`` steps.
* ``check(params, state, data)`` (optional): eager validation on concrete values (clear
  errors, stability warnings) run before anything is compiled.

The library builds every method from a **kernel** whose communication object is an argument,
``kernel(key, state, params, data, comm) -> (state, info)`` (blackjax's ``build_kernel``
shape); :func:`from_kernel` binds it to one ``comm`` and keeps both on the :class:`Algorithm`
(``alg.kernel``, ``alg.comm``), so a wrapper (:func:`slamjax.faults.with_faults`) can run the
same kernel on another communication object without looking inside any function. ``alg.problem``
names the :class:`~slamjax.BilevelProblem` the method solves (the input checks use it).

An :class:`Algorithm` is a pytree. The library's functions are :class:`jax.tree_util.Partial`
over the communication object, so the graph's edge arrays are *arguments* of the compiled
programs (never constants baked into them) and the static parts (problem, configuration) are
hashed for the compilation cache. A user's own algorithm can use plain closures: the driver
splits any algorithm into its array leaves (traced) and the rest (static, hashed).

The model is optax's ``GradientTransformation`` and blackjax's ``SamplingAlgorithm``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

__all__ = ["Algorithm", "Static", "from_kernel", "bind_comm", "evaluate", "split_static",
           "merge_static", "REGISTRY", "RegistryEntry", "make_algorithm", "register",
           "COUNTERS", "params_class_error"]

COUNTERS = ("messages", "minibatches")
"""``info`` entries that the driver sums over steps (every other entry is logged as is)."""


class Algorithm(NamedTuple):
    """A decentralized method (see the module docstring).

    Attributes:
      init: ``init(x0, y0, data) -> state``.
      step: ``step(key, state, params, data) -> (state, info)``.
      metrics: ``metrics(state, data) -> dict`` or ``None``.
      check: eager ``check(params, state, data)`` or ``None``.
      kernel: ``kernel(key, state, params, data, comm) -> (state, info)`` — the step with its
        communication object as an argument (``None`` for a closure-based user algorithm).
      comm: the communication object ``step`` runs on (a :class:`~slamjax.Graph`).
      problem: the :class:`~slamjax.BilevelProblem` solved, or ``None``.
    """

    init: Callable
    step: Callable
    metrics: Callable | None = None
    check: Callable | None = None
    kernel: Callable | None = None
    comm: Any = None
    problem: Any = None


# the problem is static data of the pytree (hashed by identity), not a leaf: an Algorithm can
# be passed to a jitted function like any other pytree of arrays and Partials
jax.tree_util.register_pytree_node(
    Algorithm, lambda a: (tuple(a[:6]), a.problem),
    lambda problem, children: Algorithm(*children, problem=problem))


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


def bind_comm(kernel: Callable, comm, key, state, params, data):
    """``kernel(key, state, params, data, comm)``: the step of :func:`from_kernel`."""
    return kernel(key, state, params, data, comm)


def from_kernel(init: Callable, kernel: Callable, comm, *, metrics: Callable | None = None,
                check: Callable | None = None, problem=None) -> Algorithm:
    """An :class:`Algorithm` whose ``step`` is ``kernel`` on ``comm``.

    ``kernel(key, state, params, data, comm) -> (state, info)``; ``init``, ``metrics`` and
    ``check`` have the contract's signatures (close them over ``comm`` where they need it).
    Pass pytrees (e.g. :class:`jax.tree_util.Partial`) to keep arrays out of the static part."""
    P = jax.tree_util.Partial
    return Algorithm(init=init, step=P(bind_comm, kernel, comm), metrics=metrics, check=check,
                     kernel=kernel, comm=comm, problem=problem)


def evaluate(algorithm: Algorithm, state, data) -> dict:
    """The algorithm's metrics of ``state`` (an empty dict if it has none). jit-able."""
    if algorithm.metrics is None:
        return {}
    return dict(algorithm.metrics(state, data))


def params_class_error(who: str, expected: type, params) -> TypeError:
    """The error for another method's (or no) params NamedTuple reaching ``who``."""
    return TypeError(
        f"{who} expects its params as {expected.__name__} (build them with "
        f"{expected.__name__}.create(...): fields {expected._fields}), got "
        f"{type(params).__name__}" + (f" with fields {params._fields}"
                                      if hasattr(params, "_fields") else ""))


# ----------------------------------------------------------------------------------------
# splitting an algorithm into traced leaves and static rest (equinox-style filtering)
# ----------------------------------------------------------------------------------------
def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


class StaticPart(NamedTuple):
    """The hashable rest of :func:`split_static`: tree structure and non-array leaves."""

    treedef: Any
    statics: tuple  # non-array leaves in order (hashed), None where an array leaf was


def split_static(tree) -> tuple[list, StaticPart]:
    """(array leaves, hashable rest). Non-array leaves (functions, strings, …) are static."""
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [leaf if _is_array(leaf) else None for leaf in leaves]
    statics = tuple(None if _is_array(leaf) else Hashed(leaf) for leaf in leaves)
    return arrays, StaticPart(treedef, statics)


def merge_static(arrays: list, static: StaticPart):
    """The inverse of :func:`split_static`."""
    leaves = [a if s is None else s.value for a, s in zip(arrays, static.statics)]
    return jax.tree.unflatten(static.treedef, leaves)


class Hashed:
    """A static leaf hashed by value when it is hashable, else by identity."""

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
        return isinstance(other, Hashed) and self._key == other._key


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
"""Every registered method by name (``slamjax.make_algorithm(name, problem, graph)``)."""


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
