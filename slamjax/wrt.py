"""What to differentiate a run with respect to: names or :class:`Inputs` filters.

Differentiable inputs of a run ``(params, data, x0, y0, key) ↦ loss`` are the fields of the
algorithm's params NamedTuple (any method: SLAM's ``alpha``…, D-SOBA's ``lr_x``…, a schedule's
numbers), every floating-point leaf of the :class:`~slamjax.ProblemData` (or one by path,
``"data.agents.b"``), and ``x0``/``y0``. Static parts (the algorithm, its problem, graph and
configuration, ``num_steps``, ``log_every``, the loss) cannot be differentiated: asking for
them raises :class:`NotDifferentiableError` (a ``TypeError`` and a ``ValueError``) whose
message lists what *is* differentiable. The random key is traced but not differentiable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from slamjax.problem import ProblemData

__all__ = ["INPUTS", "DIFFERENTIABLE", "STATIC_REASONS", "NotDifferentiableError", "Inputs",
           "diff_help", "check_wrt", "split_filter", "split_names", "float_params",
           "hashable_wrt", "static_int"]

#: top-level names accepted by ``wrt`` (plus parameter fields and dotted data paths)
INPUTS = ("params", "data", "x0", "y0")
"""Top-level names ``wrt`` accepts besides the params' fields."""
DIFFERENTIABLE = INPUTS
"""What ``wrt`` accepts besides the fields of the algorithm's params."""


def diff_help(fields: Sequence[str] = ()) -> str:
    """The sentence that lists what is differentiable (``fields``: the params' fields)."""
    names = ", ".join(repr(f) for f in fields) if fields else "e.g. 'rho', 'lr_x'"
    return ("differentiable inputs are the fields of the algorithm's params (" + names +
            "; or 'params' for all, a schedule's numbers included), 'data' (every "
            "floating-point data leaf, or one leaf by path such as 'data.agents.b' / "
            "'data.shared.sigma'), 'x0' and 'y0' — as names or as a filter "
            "slamjax.diff.Inputs(params=..., data=..., x0=..., y0=...) of booleans")

STATIC_REASONS = {
    "algorithm": "the algorithm (problem, communication graph, configuration) is static",
    "problem": "the problem's functions are Python code (static)",
    "graph": "the communication graph is static: its edges are integer indices and λ_max(L) "
             "is a Python float",
    "comm": "the communication graph is static",
    "config": "the SLAMConfig (variant, solver, consensus masks) is static configuration",
    "variant": "the SLAM variant is a static choice",
    "solver": "the hypergradient solver is a static choice",
    "consensus_x": "consensus masks are static booleans",
    "consensus_y": "consensus masks are static booleans",
    "maxiter": "the CG iteration count is a static integer",
    "tol": "the CG tolerance is static solver configuration",
    "k": "the Neumann series length K is a static integer",
    "eta": "the Neumann step η is static solver configuration (part of the SLAMConfig)",
    "num_steps": "the number of steps T is a static integer (it sets the scan length)",
    "t": "the number of steps T is a static integer (it sets the scan length)",
    "log_every": "the logging interval is a static integer",
    "checkpoint_every": "the checkpoint interval is a static integer",
    "adjoint": "the adjoint is a static choice",
    "loss": "the loss is a static function",
    "key": "the random key is traced but not differentiable (randomness is piecewise "
           "constant); differentiate with the key fixed, or average over keys",
    "seed": "the random seed is an integer (not differentiable)",
}
"""Static (or non-differentiable) arguments and why they cannot be differentiated."""


class NotDifferentiableError(TypeError, ValueError):
    """A derivative was requested with respect to a static or non-differentiable argument."""


class Inputs(NamedTuple):
    """The differentiable inputs of a run — as a filter (booleans or prefix trees of
    booleans) in ``wrt``, and as the gradients returned (``None`` where not asked)."""

    params: Any = False
    data: Any = False
    x0: Any = False
    y0: Any = False


# ----------------------------------------------------------------------------------------
# what to differentiate: names (-> dict) or an Inputs filter (-> Inputs)
# ----------------------------------------------------------------------------------------
def _not_diff(name: str, reason: str | None = None, fields=()) -> NotDifferentiableError:
    why = f": {reason}" if reason else ""
    return NotDifferentiableError(f"cannot differentiate a run with respect to "
                                  f"{name!r}{why}. The {diff_help(fields)}.")


def check_wrt(wrt, param_fields: Sequence[str] = ()):
    """Validate ``wrt``: an :class:`Inputs` filter (returned as is) or names (returned as a
    tuple). Raises :class:`NotDifferentiableError` for static arguments (graph, config,
    solver, num_steps, …), the key and unknown names; the message lists what is
    differentiable."""
    if isinstance(wrt, Inputs):
        return wrt
    if isinstance(wrt, str) or hasattr(wrt, "_fields") or _static_kind(wrt) is not None:
        wrt = (wrt,)
    try:
        names = tuple(wrt)
    except TypeError:
        raise _not_diff(repr(wrt), "wrt must be an Inputs filter or a sequence of names",
                        param_fields) from None
    if not names:
        raise ValueError(f"wrt is empty; the {diff_help(param_fields)}")
    for name in names:
        if not isinstance(name, str):
            kind = _static_kind(name)
            if kind is not None:
                raise _not_diff(type(name).__name__, STATIC_REASONS[kind], param_fields)
            raise _not_diff(repr(name), "wrt entries must be argument names (strings)",
                            param_fields)
        if name in INPUTS or name in param_fields or name.startswith("data."):
            continue
        head = name.split(".")[0].lower()
        if head in STATIC_REASONS:
            raise _not_diff(name, STATIC_REASONS[head], param_fields)
        if name.startswith("params.") and name[7:] in param_fields:
            raise _not_diff(name, f"name the field directly: wrt={name[7:]!r}", param_fields)
        if head in ("config", "solver") or name.lower().startswith(("config.", "solver.")):
            raise _not_diff(name, "part of the static configuration", param_fields)
        raise _not_diff(name, "unknown argument", param_fields)
    if len(set(names)) != len(names):
        raise ValueError(f"wrt has duplicates: {names}")
    if "params" in names and set(names) & set(param_fields):
        raise ValueError("wrt: give 'params' or individual fields, not both")
    if "data" in names and any(n.startswith("data.") for n in names):
        raise ValueError("wrt: give 'data' or data paths, not both")
    return names


def _path_parts(name: str) -> tuple[str, ...]:
    parts = tuple(name.split(".")[1:])
    if not parts or parts[0] not in ProblemData._fields:
        raise NotDifferentiableError(f"data path {name!r} must start with 'data.shared' or "
                                     f"'data.agents'. The {diff_help()}.")
    return parts


def _get(tree, parts, name):
    for p in parts:
        try:
            if isinstance(tree, ProblemData):
                tree = getattr(tree, p)
            elif isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
                tree = tree[int(p)]
            elif hasattr(tree, "_fields"):
                tree = getattr(tree, p)
            else:
                tree = tree[p]
        except (KeyError, IndexError, AttributeError, TypeError, ValueError):
            raise NotDifferentiableError(f"data path {name!r}: no entry {p!r}. The "
                                         f"{diff_help()}.") from None
    return tree


def _set(tree, parts, value):
    if not parts:
        return value
    p, rest = parts[0], parts[1:]
    if isinstance(tree, ProblemData) or hasattr(tree, "_fields"):
        return tree._replace(**{p: _set(getattr(tree, p), rest, value)})
    if isinstance(tree, (list, tuple)):
        out = list(tree)
        out[int(p)] = _set(tree[int(p)], rest, value)
        return type(tree)(out)
    out = dict(tree)
    out[p] = _set(tree[p], rest, value)
    return out


def _is_float(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jnp.inexact)


def _float_leaves_filter(tree):
    return jax.tree.map(_is_float, tree)


def _broadcast_filter(spec, tree, name):
    """A prefix tree of booleans -> a full tree of booleans (True only at float leaves)."""
    try:
        full = jax.tree.map(lambda f, sub: jax.tree.map(lambda _: bool(f), sub), spec, tree,
                            is_leaf=lambda v: isinstance(v, bool))
    except (ValueError, TypeError) as e:
        raise NotDifferentiableError(f"wrt.{name} must be a bool or a prefix tree of bools "
                                     f"matching {name}'s structure ({e}). The {diff_help()}.") \
            from None
    for on, leaf in zip(jax.tree.leaves(full), jax.tree.leaves(tree)):
        if on and not _is_float(leaf):
            raise NotDifferentiableError(
                f"wrt.{name} selects a leaf of dtype {jnp.result_type(leaf)}; derivatives need "
                "floating point values (e.g. pass rho=1.0, not 1)")
    return full


def split_filter(spec: Inputs, params, data, x0, y0):
    """(differentiated leaves, rebuild, expand) for an :class:`Inputs` filter: ``rebuild``
    puts leaves back into (params, data, x0, y0), ``expand`` gradients into an Inputs."""
    trees = Inputs(params, data, x0, y0)
    masks = Inputs(*(_broadcast_filter(f, t, n) if f is not False else
                     jax.tree.map(lambda _: False, t)
                     for f, t, n in zip(spec, trees, Inputs._fields)))
    if not any(jax.tree.leaves(masks)):
        raise ValueError(f"wrt selects nothing; the {diff_help()}")
    flat_t, tdef = jax.tree.flatten(trees)
    flat_m = jax.tree.leaves(masks)
    diff = [t for t, m in zip(flat_t, flat_m) if m]

    def rebuild(d):
        it = iter(d)
        leaves = [next(it) if m else t for t, m in zip(flat_t, flat_m)]
        return tuple(jax.tree.unflatten(tdef, leaves))

    def expand(g):
        it = iter(g)
        leaves = [next(it) if m else None for m in flat_m]
        return Inputs(*(jax.tree.unflatten(jax.tree.structure(t), lv) if not _none(lv) else None
                        for t, lv in zip(trees, _chunks(leaves, trees))))

    return diff, rebuild, expand


def _none(leaves):
    return all(v is None for v in leaves)


def _chunks(leaves, trees):
    out, i = [], 0
    for t in trees:
        k = len(jax.tree.leaves(t))
        out.append(leaves[i:i + k])
        i += k
    return out


def split_names(names, params, data, x0, y0):
    """Names -> (dict of differentiated inputs, rebuild, expand to a user-facing dict)."""
    fields = params._fields
    diff = {}
    data_leaves, data_def = jax.tree.flatten(data)
    float_idx = [i for i, leaf in enumerate(data_leaves) if _is_float(leaf)]
    for name in names:
        if name in fields:
            diff[name] = getattr(params, name)
        elif name == "params":
            diff[name] = params
        elif name == "x0":
            diff[name] = x0
        elif name == "y0":
            diff[name] = y0
        elif name == "data":
            if not float_idx:
                raise NotDifferentiableError("wrt='data' but the data has no floating-point "
                                             "leaves")
            diff[name] = [data_leaves[i] for i in float_idx]
        else:
            leaf = _get(data, _path_parts(name), name)
            if not all(_is_float(v) for v in jax.tree.leaves(leaf)) or not jax.tree.leaves(leaf):
                raise NotDifferentiableError(f"{name!r} is not floating point data, so it has "
                                             f"no derivative. The {diff_help()}.")
            diff[name] = leaf
    for name, value in diff.items():  # integer arrays/Python ints cannot be differentiated
        for leaf in jax.tree.leaves(value):
            if not _is_float(leaf):
                raise NotDifferentiableError(
                    f"{name!r} has dtype {jnp.result_type(leaf)}; derivatives need floating "
                    f"point values (e.g. pass rho=1.0 or jnp.asarray(1, jnp.float32), not 1)")

    def rebuild(d):
        p, dt, x, y = params, data, x0, y0
        if "params" in d:
            p = type(params)(*d["params"])
        for f in fields:
            if f in d:
                p = p._replace(**{f: d[f]})
        if "data" in d:
            leaves = list(data_leaves)
            for i, v in zip(float_idx, d["data"]):
                leaves[i] = v
            dt = jax.tree.unflatten(data_def, leaves)
        for n_ in d:
            if n_.startswith("data."):
                dt = _set(dt, _path_parts(n_), d[n_])
        return p, dt, d.get("x0", x), d.get("y0", y)

    def expand(g):
        g = dict(g)
        if "data" in g:
            leaves = [None] * len(data_leaves)
            for i, v in zip(float_idx, g["data"]):
                leaves[i] = v
            g["data"] = jax.tree.unflatten(data_def, leaves)
        if "params" in g:
            g["params"] = type(params)(*g["params"])
        return g

    return diff, rebuild, expand


def float_params(params, x0):
    """Python numbers in params -> arrays of the iterate's floating dtype (differentiable);
    floating arrays and schedules' callables are kept."""
    dtype = jnp.result_type(jax.tree.leaves(x0)[0])
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)

    def one(v):
        if callable(v) or (isinstance(v, jax.Array) and _is_float(v)):
            return v
        return jnp.asarray(v, dtype=dtype)

    return jax.tree.map(one, params)


def static_int(name, value, minimum=1):
    """``value`` as a Python int ≥ ``minimum``; a traced value is a
    :class:`NotDifferentiableError` (it is a static argument)."""
    if isinstance(value, jax.core.Tracer):
        raise NotDifferentiableError(f"{name} must be a concrete Python int, got a traced "
                                     f"value: {STATIC_REASONS.get(name, 'it is static')}. "
                                     f"{diff_help()[0].upper()}{diff_help()[1:]}.")
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def hashable_wrt(wrt):
    """Inputs filters of plain booleans and NamedTuples of booleans are hashable; make lists
    into tuples so that the filter can be a static jit argument."""
    if isinstance(wrt, Inputs):
        try:
            hash(wrt)
        except TypeError:
            raise TypeError("wrt filter must be made of bools, tuples and NamedTuples (no "
                            "dicts or lists) to be hashable") from None
    return wrt


def _static_kind(obj) -> str | None:
    """Which static argument an object passed in ``wrt`` is (for the error message)."""
    from slamjax.algorithm import Algorithm
    from slamjax.comm import Graph
    from slamjax.problem import BilevelProblem

    for cls, kind in ((Algorithm, "algorithm"), (Graph, "graph"), (BilevelProblem, "problem")):
        if isinstance(obj, cls):
            return kind
    if dataclasses.is_dataclass(obj):
        return "config"
    return None
