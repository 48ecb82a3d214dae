"""Derivatives of a whole run of any :class:`~slamjax.Algorithm` with respect to its
hyperparameters, data and start point.

A run ``(params, data, x0, y0, key) ↦ state_T`` (:func:`slamjax.solve`) is one pure
``lax.scan``; every number in it is traced, so a scalar loss of the final state (or of the
trajectory) can be differentiated end to end with ``jax.grad``, ``jax.jvp`` or ``jax.jacfwd``:

* ``params`` — the algorithm's hyperparameter NamedTuple (for SLAM :class:`~slamjax.SLAMParams`:
  ``alpha``, ``beta`` (inverse step sizes), ``rho`` (penalty), ``gamma`` (scaling));
* ``data`` — every floating-point leaf of the :class:`~slamjax.ProblemData`;
* ``x0``, ``y0`` — the initial UL and LL iterates.

What to differentiate is a **pytree filter** (equinox-style): an :class:`Inputs` whose fields
are ``True``/``False`` or a prefix tree of booleans, e.g.
``Inputs(params=SLAMParams(alpha=True, beta=False, rho=True, gamma=False), x0=True)``;
gradients come back as an :class:`Inputs` of the same trees, ``None`` where not
differentiated. Names (``"rho"``, ``"data.agents.b"``, ``"x0"``) are accepted as a shorthand
and return a dict. Static parts (the algorithm's problem, graph and configuration,
``num_steps``, ``log_every``, the loss) cannot be differentiated: asking for them raises
:class:`NotDifferentiableError` (a ``TypeError`` and a ``ValueError``) whose message lists what
*is* differentiable. The random key is traced but not differentiable.

How the derivative of the inner solves is taken is the solver's business
(:mod:`slamjax.hypergrad`): CG solves are differentiated implicitly (``custom_linear_solve``),
the Neumann series is unrolled, the exact solve is differentiated as a dense solve.

The adjoint (how the scan is differentiated) is an object:

* :class:`Reverse` — ``jax.value_and_grad``; stores the residuals of every step, memory O(T);
* :class:`Checkpointed` (``every=c``) — reverse mode over T/c rematerialised chunks
  (``jax.checkpoint``): memory O(T/c + c) for one extra forward pass; ``c ≈ √T`` is best;
* :class:`Forward` — one JVP per differentiated scalar, vmapped: memory O(1) in T, the right
  choice for a handful of hyperparameters over very long horizons.

Losses: a callable ``loss(state, data) -> scalar``, or the name of one of the algorithm's
metrics. Closed-form losses of the quadratic family live in
:mod:`slamjax.problems.quadratic` (:func:`~slamjax.problems.quadratic.ul_objective_loss`);
:func:`mean_f` is (1/n) Σ_i f_i(x_i, y_i) for any problem.

Public API::

    alg = slamjax.slam(problem, graph, config)
    loss = final_loss_fn(alg, num_steps, quadratic.ul_objective_loss(per_agent=True))
    value, g = jax.value_and_grad(loss)(params, data, x0, y0, key)   # g: SLAMParams

    value, grads = value_and_grad_run(alg, params, data, x0, y0, key, num_steps=200,
                                      loss=loss_fn, wrt=Inputs(params=True),
                                      adjoint=Checkpointed(every=20))
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from slamjax.algorithm import Algorithm, evaluate, merge_static, split_static
from slamjax.graphs import Graph
from slamjax.problem import DATA_AXES, BilevelProblem, ProblemData
from slamjax.run import as_key, iterate
from slamjax.slam import SLAMConfig, SLAMParams

__all__ = ["DIFFERENTIABLE", "NotDifferentiableError", "Inputs", "Reverse", "Checkpointed",
           "Forward", "final_loss_fn", "trajectory_loss_fn", "value_and_grad_run", "grad_run",
           "check_wrt", "mean_f", "compiled_programs"]

#: top-level names accepted by ``wrt`` (plus parameter fields and dotted data paths)
INPUTS = ("params", "data", "x0", "y0")
DIFFERENTIABLE = SLAMParams._fields + INPUTS

_DIFF_HELP = ("differentiable inputs are the fields of the algorithm's params (for SLAM "
              "'alpha', 'beta', 'rho', 'gamma'; or 'params' for all), 'data' (every "
              "floating-point data leaf, or one leaf by path such as 'data.agents.b' / "
              "'data.shared.sigma'), 'x0' and 'y0' — as names or as a filter "
              "slamjax.diff.Inputs(params=..., data=..., x0=..., y0=...) of booleans")

#: static (or non-differentiable) arguments and why they cannot be differentiated
_STATIC_REASONS = {
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
# adjoints
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reverse:
    """Reverse mode through the scan: memory O(T)."""


@dataclasses.dataclass(frozen=True)
class Checkpointed:
    """Reverse mode over rematerialised chunks of ``every`` steps (``None``: ⌈√T⌉)."""

    every: int | None = None


@dataclasses.dataclass(frozen=True)
class Forward:
    """Forward mode: one JVP per differentiated scalar, memory O(1) in T."""


def _as_adjoint(adjoint, mode=None, checkpoint_every=None):
    if mode is not None:  # shorthand: mode="reverse" | "forward"
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
        adjoint = Forward() if mode == "forward" else adjoint
    if checkpoint_every is not None:
        adjoint = Checkpointed(_static_int("checkpoint_every", checkpoint_every))
    if adjoint is None:
        return Reverse()
    if not isinstance(adjoint, (Reverse, Checkpointed, Forward)):
        raise TypeError(f"adjoint must be slamjax.diff.Reverse(), Checkpointed(every=c) or "
                        f"Forward(), got {adjoint!r}")
    return adjoint


def _checkpoint_every(adjoint, num_steps):
    if isinstance(adjoint, Checkpointed):
        c = adjoint.every if adjoint.every is not None else int(np.ceil(np.sqrt(num_steps)))
        return _static_int("Checkpointed.every", c)
    return None


# ----------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------
def mean_f(problem: BilevelProblem) -> Callable:
    """Loss ``(state, data) -> (1/n) Σ_i f_i(x_i, y_i)`` at the iterate, noise-free."""

    def loss(state, data):
        vals = jax.vmap(lambda x, y, d: problem.f(x, y, d, None),
                        in_axes=(0, 0, DATA_AXES))(state.x, state.y, data)
        return jnp.mean(vals)

    return loss


def _make_loss(loss, algorithm) -> Callable[[Any, ProblemData], Any]:
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a metric name or a callable loss(state, data) -> "
                        f"scalar, got {type(loss).__name__}")

    def metric(state, data):
        mets = evaluate(algorithm, state, data)
        if loss not in mets:
            raise ValueError(f"unknown loss {loss!r}: choose a metric of this algorithm "
                             f"{tuple(sorted(mets))} or pass a callable loss(state, data) -> "
                             "scalar (closed forms of the quadratic family: "
                             "slamjax.problems.quadratic.ul_objective_loss; any problem: "
                             "slamjax.diff.mean_f(problem))")
        return mets[loss]

    return metric


# ----------------------------------------------------------------------------------------
# the pure run -> scalar
# ----------------------------------------------------------------------------------------
def _static_int(name, value, minimum=1):
    if isinstance(value, jax.core.Tracer):
        raise NotDifferentiableError(f"{name} must be a concrete Python int, got a traced "
                                     f"value: {_STATIC_REASONS.get(name, 'it is static')}. "
                                     f"{_DIFF_HELP[0].upper()}{_DIFF_HELP[1:]}.")
    if isinstance(value, (bool, np.bool_)) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _check_statics(algorithm, num_steps, log_every):
    if not isinstance(algorithm, Algorithm):
        hint = (" (build it with slamjax.slam(problem, graph, config))"
                if isinstance(algorithm, (BilevelProblem, Graph)) else "")
        raise TypeError(f"algorithm must be a slamjax.Algorithm, got "
                        f"{type(algorithm).__name__}{hint}")
    num_steps = _static_int("num_steps", num_steps)
    if log_every is not None:
        log_every = _static_int("log_every", log_every)
        if num_steps % log_every:
            raise ValueError(f"log_every={log_every} must divide num_steps={num_steps}")
    return num_steps, log_every


def _as_key(key):
    """The same key forms as :func:`slamjax.solve`: None, an int seed, ``jax.random.key``
    or a raw ``jax.random.PRNGKey`` (one rule: :func:`slamjax.run.as_key`)."""
    return as_key(key)


def _run_loss(algorithm, num_steps, loss_fn, log_every, checkpoint_every, params, data, x0,
              y0, key, with_state=False):
    key = _as_key(key)
    state = algorithm.init(x0, y0, data)
    if log_every is None:
        state = iterate(algorithm, params, data, state, key, num_steps,
                        checkpoint_every=checkpoint_every)
        value = loss_fn(state, data)
    else:
        inner_ck = checkpoint_every if checkpoint_every and checkpoint_every < log_every else None

        def segment(c, _):
            s, t = c
            s = iterate(algorithm, params, data, s, key, log_every, checkpoint_every=inner_ck,
                        start=t)
            return (s, t + log_every), loss_fn(s, data)

        if checkpoint_every:
            segment = jax.checkpoint(segment)
        (state, _), values = lax.scan(segment, (state, jnp.asarray(0, jnp.int32)), None,
                                      length=num_steps // log_every)
        value = jnp.mean(values)
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(f"the loss must return a scalar, got shape {value.shape}")
    return (value, state) if with_state else value


def final_loss_fn(algorithm: Algorithm, num_steps: int, loss: str | Callable,
                  *, adjoint=None, log_every: int | None = None, with_state: bool = False,
                  checkpoint_every: int | None = None) -> Callable:
    """A pure function ``(params, data, x0, y0, key) -> scalar``: the loss after a run of
    ``num_steps`` steps of ``algorithm`` from ``(x0, y0)``.

    jit-, grad-, jvp-, jacfwd- and vmap-able in all five arguments (the key is not
    differentiable). ``loss``: a callable ``loss(state, data)`` or a metric name.
    ``log_every=L``: average the loss over the states at steps L, 2L, …, T (a trajectory
    loss; its hyperparameter gradients do not vanish once the run has converged).
    ``adjoint=Checkpointed(every=c)`` (or ``checkpoint_every=c``) rematerialises chunks of c
    steps in reverse mode (memory O(T/c + c)); the gradient is the same up to round-off.
    ``with_state=True`` returns ``(loss, final_state)``.
    """
    num_steps, log_every = _check_statics(algorithm, num_steps, log_every)
    adjoint = _as_adjoint(adjoint, checkpoint_every=checkpoint_every)
    ck = _checkpoint_every(adjoint, num_steps)
    loss_fn = _make_loss(loss, algorithm)

    def run_loss(params, data, x0, y0, key=None):
        return _run_loss(algorithm, num_steps, loss_fn, log_every, ck, params, data, x0, y0,
                         key, with_state)

    run_loss.__doc__ = f"Loss {loss!r} after {num_steps} steps of the algorithm."
    return run_loss


def trajectory_loss_fn(algorithm: Algorithm, num_steps: int, loss: str | Callable,
                       *, log_every: int = 10, adjoint=None, with_state: bool = False,
                       checkpoint_every: int | None = None) -> Callable:
    """Like :func:`final_loss_fn`, averaging ``loss`` over the states at steps
    ``log_every, 2·log_every, …, num_steps`` (an area-under-the-curve objective)."""
    return final_loss_fn(algorithm, num_steps, loss, log_every=log_every, adjoint=adjoint,
                         with_state=with_state, checkpoint_every=checkpoint_every)


# ----------------------------------------------------------------------------------------
# what to differentiate: names (-> dict) or an Inputs filter (-> Inputs)
# ----------------------------------------------------------------------------------------
def _not_diff(name: str, reason: str | None = None) -> NotDifferentiableError:
    why = f": {reason}" if reason else ""
    return NotDifferentiableError(f"cannot differentiate a run with respect to "
                                  f"{name!r}{why}. The {_DIFF_HELP}.")


def check_wrt(wrt, param_fields: Sequence[str] = SLAMParams._fields):
    """Validate ``wrt``: an :class:`Inputs` filter (returned as is) or names (returned as a
    tuple). Raises :class:`NotDifferentiableError` for static arguments (graph, config,
    solver, num_steps, …), the key and unknown names; the message lists what is
    differentiable."""
    if isinstance(wrt, Inputs):
        return wrt
    if isinstance(wrt, (str, Graph, SLAMConfig, BilevelProblem, Algorithm)):
        wrt = (wrt,)
    try:
        names = tuple(wrt)
    except TypeError:
        raise _not_diff(repr(wrt), "wrt must be an Inputs filter or a sequence of names") \
            from None
    if not names:
        raise ValueError(f"wrt is empty; the {_DIFF_HELP}")
    kinds = {Graph: "graph", SLAMConfig: "config", BilevelProblem: "problem",
             Algorithm: "algorithm"}
    for name in names:
        if not isinstance(name, str):
            for cls, key in kinds.items():
                if isinstance(name, cls):
                    raise _not_diff(type(name).__name__, _STATIC_REASONS[key])
            raise _not_diff(repr(name), "wrt entries must be argument names (strings)")
        if name in INPUTS or name in param_fields or name.startswith("data."):
            continue
        head = name.split(".")[0].lower()
        if head in _STATIC_REASONS:
            raise _not_diff(name, _STATIC_REASONS[head])
        if name.startswith("params.") and name[7:] in param_fields:
            raise _not_diff(name, f"name the field directly: wrt={name[7:]!r}")
        if head in ("config", "solver") or name.lower().startswith(("config.", "solver.")):
            raise _not_diff(name, "part of the static configuration")
        raise _not_diff(name, "unknown argument")
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
                                     f"'data.agents'. The {_DIFF_HELP}.")
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
                                         f"{_DIFF_HELP}.") from None
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
                                     f"matching {name}'s structure ({e}). The {_DIFF_HELP}.") \
            from None
    for on, leaf in zip(jax.tree.leaves(full), jax.tree.leaves(tree)):
        if on and not _is_float(leaf):
            raise NotDifferentiableError(
                f"wrt.{name} selects a leaf of dtype {jnp.result_type(leaf)}; derivatives need "
                "floating point values (e.g. pass rho=1.0, not 1)")
    return full


def _split_filter(spec: Inputs, params, data, x0, y0):
    trees = Inputs(params, data, x0, y0)
    masks = Inputs(*(_broadcast_filter(f, t, n) if f is not False else
                     jax.tree.map(lambda _: False, t)
                     for f, t, n in zip(spec, trees, Inputs._fields)))
    if not any(jax.tree.leaves(masks)):
        raise ValueError(f"wrt selects nothing; the {_DIFF_HELP}")
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


def _split_names(names, params, data, x0, y0):
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
                                             f"no derivative. The {_DIFF_HELP}.")
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


def _float_params(params, x0):
    """Python numbers in params -> arrays of the iterate's floating dtype (differentiable)."""
    dtype = jnp.result_type(jax.tree.leaves(x0)[0])
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    return type(params)(*(v if isinstance(v, jax.Array) and _is_float(v)
                          else jnp.asarray(v, dtype=dtype) for v in params))


@partial(jax.jit, static_argnames=("static", "num_steps", "loss", "log_every", "adjoint", "wrt"))
def _value_and_grad_jit(dyn, params, data, x0, y0, key, *, static, num_steps, loss, log_every,
                        adjoint, wrt):
    algorithm = merge_static(dyn, static)
    loss_fn = _make_loss(loss, algorithm)
    if isinstance(wrt, Inputs):
        diff, rebuild, expand = _split_filter(wrt, params, data, x0, y0)
    else:
        diff, rebuild, expand = _split_names(wrt, params, data, x0, y0)
    ck = _checkpoint_every(adjoint, num_steps)

    def objective(d):
        p, dt, x, y = rebuild(d)
        return _run_loss(algorithm, num_steps, loss_fn, log_every, ck, p, dt, x, y, key)

    if not isinstance(adjoint, Forward):
        value, g = jax.value_and_grad(objective)(diff)
    else:  # forward mode: one JVP per scalar, vmapped
        flat, unravel = ravel_pytree(diff)
        basis = jnp.eye(flat.size, dtype=flat.dtype)
        values, tangents = jax.vmap(
            lambda t: jax.jvp(lambda z: objective(unravel(z)), (flat,), (t,)))(basis)
        value, g = values[0], unravel(tangents)
    return value, expand(g)


def _hashable_wrt(wrt):
    """Inputs filters of plain booleans and NamedTuples of booleans are hashable; make lists
    into tuples so that the filter can be a static jit argument."""
    if isinstance(wrt, Inputs):
        try:
            hash(wrt)
        except TypeError:
            raise TypeError("wrt filter must be made of bools, tuples and NamedTuples (no "
                            "dicts or lists) to be hashable") from None
    return wrt


def value_and_grad_run(algorithm: Algorithm, params, data: ProblemData, x0, y0, key=0, *,
                       num_steps: int, loss: str | Callable,
                       wrt=("alpha", "beta", "rho", "gamma"), adjoint=None,
                       log_every: int | None = None, check: bool = True,
                       mode: str | None = None,
                       checkpoint_every: int | None = None) -> tuple[jax.Array, Any]:
    """Loss of a run and its derivatives with respect to what ``wrt`` selects.

    A filter must select floating-point leaves only (``Inputs(data=True)`` over data with an
    integer leaf is an error: select the float leaves with a prefix tree); the name
    ``"data"`` selects every floating-point data leaf.

    ``wrt``: an :class:`Inputs` filter (returns an :class:`Inputs` of gradients, ``None``
    where not selected) or names (returns a dict: a scalar for a parameter field, the params
    NamedTuple for ``"params"``, the data pytree for ``"data"`` (``None`` at non-floating
    leaves), the leaf for a path such as ``"data.agents.b"``, arrays for ``"x0"``/``"y0"``).

    ``adjoint``: :class:`Reverse` (default), :class:`Checkpointed` or :class:`Forward`
    (``mode="forward"`` and ``checkpoint_every=c`` are shorthands). Compiled and cached on the
    static arguments: repeated calls with new numbers do not recompile (a callable ``loss`` is
    part of the cache key: pass the same function object). ``check=True`` runs the
    algorithm's eager checks first (clear errors, stability warnings).
    """
    num_steps, log_every = _check_statics(algorithm, num_steps, log_every)
    if not hasattr(params, "_fields"):
        raise TypeError(f"params must be the algorithm's NamedTuple of hyperparameters, got "
                        f"{type(params).__name__}")
    wrt = _hashable_wrt(check_wrt(wrt, params._fields))
    adjoint = _as_adjoint(adjoint, mode, checkpoint_every)
    if isinstance(loss, str):
        _make_loss(loss, algorithm)  # type check only
    params = _float_params(params, x0)
    if check and algorithm.check is not None:
        algorithm.check(params, algorithm.init(x0, y0, data), data)
    if isinstance(wrt, Inputs):  # eager errors for bad filters
        _split_filter(wrt, params, data, x0, y0)
    else:
        _split_names(wrt, params, data, x0, y0)
    dyn, static = split_static(algorithm)
    return _value_and_grad_jit(dyn, params, data, x0, y0, _as_key(key), static=static,
                               num_steps=num_steps, loss=loss, log_every=log_every,
                               adjoint=adjoint, wrt=wrt)


def grad_run(*args, **kwargs):
    """:func:`value_and_grad_run` without the value."""
    return value_and_grad_run(*args, **kwargs)[1]


def compiled_programs() -> int:
    """How many programs :func:`value_and_grad_run` has compiled in this process (new numbers
    with the same shapes and static configuration add none)."""
    return _value_and_grad_jit._cache_size()
