"""Derivatives of a whole SLAM run with respect to its hyperparameters, data and start point.

A run ``(params, data, x0, y0, key) ↦ state_T`` (:func:`slamjax.solve`) is one pure
``lax.scan``; every number in it is traced, so a scalar loss of the final state (or of the
trajectory) can be differentiated end to end with ``jax.grad``, ``jax.jvp`` or ``jax.jacfwd``:

* ``params`` — the four fields of :class:`~slamjax.SLAMParams`: ``alpha``, ``beta`` (inverse
  step sizes), ``rho`` (penalty) and ``gamma`` (Lagrangian scaling);
* ``data`` — every floating-point leaf of the :class:`~slamjax.ProblemData` (e.g. the noise
  level σ of the quadratic family lives in ``data.shared["sigma"]``);
* ``x0``, ``y0`` — the initial UL and LL iterates.

Everything else is static (it changes the shape of the computation, not a number in it): the
problem, the graph, the :class:`~slamjax.SLAMConfig` (variant, solver, K, η, masks),
``num_steps``, ``log_every``, ``checkpoint_every`` and the loss. The random key is traced but
not differentiable. Asking for a derivative with respect to any of these raises
:class:`NotDifferentiableError` (a ``TypeError`` and a ``ValueError``), whose message lists what
*is* differentiable.

How the derivative of the inner solves is taken is the solver's business
(:mod:`slamjax.hypergrad`): CG solves are differentiated implicitly (``custom_linear_solve``:
one more CG solve with the same operator, nothing stored per CG iteration), the Neumann series
is unrolled, the exact solve is differentiated as a dense solve.

Memory. Reverse mode stores the residuals of every step: O(T). With ``checkpoint_every=c`` the
scan is split into T/c rematerialised chunks (``jax.checkpoint``), so memory is O(T/c + c) for
one extra forward pass; ``c ≈ √T`` minimises it. Forward mode (``mode="forward"``) stores
nothing per step — memory O(1) in T — and costs one tangent per differentiated scalar, so it
is the right choice for a handful of hyperparameters over very long horizons.

Public API::

    loss = final_loss_fn(problem, graph, config, num_steps, loss="ul_objective_agents")
    value, g = jax.value_and_grad(loss)(params, data, x0, y0, key)   # g: SLAMParams

    value, grads = value_and_grad_run(problem, graph, params, data, x0, y0, key,
                                      num_steps=200, wrt=("rho", "alpha", "data.agents.b"))
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from slamjax.graphs import Graph
from slamjax.metrics import evaluate
from slamjax.problem import DATA_AXES, BilevelProblem, ProblemData
from slamjax.slam import SLAMConfig, SLAMParams, SLAMState, init, scan_steps, validate

__all__ = ["DIFFERENTIABLE", "NotDifferentiableError", "BUILTIN_LOSSES", "final_loss_fn",
           "trajectory_loss_fn", "value_and_grad_run", "grad_run", "check_wrt"]

PARAM_FIELDS = SLAMParams._fields  # ("alpha", "beta", "rho", "gamma")

#: names accepted by ``wrt`` (plus dotted paths into the data, e.g. ``"data.agents.b"``)
DIFFERENTIABLE = PARAM_FIELDS + ("params", "data", "x0", "y0")

_DIFF_HELP = ("differentiable arguments are the SLAMParams fields 'alpha', 'beta', 'rho', "
              "'gamma' (or 'params' for all four), 'data' (every floating-point data leaf, or "
              "one leaf by path such as 'data.agents.b' / 'data.shared.sigma'), 'x0' and 'y0'")

#: static (or non-differentiable) arguments and why they cannot be differentiated
_STATIC_REASONS = {
    "problem": "the problem's functions are Python code (static)",
    "graph": "the communication graph is static: its edges are integer indices and λ_max(L) "
             "is a Python float",
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
    "loss": "the loss is a static function",
    "key": "the random key is traced but not differentiable (randomness is piecewise "
           "constant); differentiate with the key fixed, or average over keys",
    "seed": "the random seed is an integer (not differentiable)",
}


class NotDifferentiableError(TypeError, ValueError):
    """A derivative was requested with respect to a static or non-differentiable argument."""


# ----------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------
def _quadratic_check(data, name):
    agents, shared = data.agents, data.shared
    if not (isinstance(agents, dict) and {"b", "p", "t"} <= agents.keys()
            and isinstance(shared, dict) and "P" in shared):
        raise ValueError(
            f"loss={name!r} is a closed form of slamjax.problems.quadratic and needs its data "
            "layout; for other problems use loss='f' (mean UL loss at the final iterate), the "
            "name of a metric, or a callable loss(state, data) -> scalar")


def _quadratic_ul_objective(problem, config, graph, state, data):
    from slamjax.problems.quadratic import ul_objective

    _quadratic_check(data, "ul_objective")
    _, cy = config.level_consensus(state.x, state.y)
    return ul_objective(jnp.mean(state.x, axis=0), data, "H" in data.shared, cy)


def _quadratic_ul_objective_agents(problem, config, graph, state, data):
    from slamjax.problems.quadratic import ul_objective

    _quadratic_check(data, "ul_objective_agents")
    _, cy = config.level_consensus(state.x, state.y)
    per_agent = jax.vmap(lambda xi: ul_objective(xi, data, "H" in data.shared, cy))(state.x)
    return jnp.mean(per_agent)


def _mean_f(problem, config, graph, state, data):
    vals = jax.vmap(lambda x, y, d: problem.f(x, y, d, None),
                    in_axes=(0, 0, DATA_AXES))(state.x, state.y, data)
    return jnp.mean(vals)


#: built-in losses by name; any metric returned by :func:`slamjax.evaluate` (``grad_F_sq``,
#: ``ll_error``, ``consensus_x``, ``consensus_y``, …) is accepted as well.
BUILTIN_LOSSES = {
    "ul_objective": _quadratic_ul_objective,  # F(x̄_T), closed form (quadratic problems)
    # (1/n) Σ_i F(x_i): F at each agent's own iterate, averaged (sees the disagreement; for a
    # homogeneous quadratic x̄_T does not depend on ρ or γ, so F(x̄_T) is blind to them)
    "ul_objective_agents": _quadratic_ul_objective_agents,
    "f": _mean_f,                             # (1/n) Σ_i f_i(x_i, y_i) at the iterate, no noise
}


def _make_loss(loss, problem, config, graph) -> Callable[[SLAMState, ProblemData], Any]:
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a name or a callable loss(state, data) -> scalar, got "
                        f"{type(loss).__name__}")
    if loss in BUILTIN_LOSSES:
        return partial(BUILTIN_LOSSES[loss], problem, config, graph)

    def metric(state, data):
        mets = evaluate(problem, config, graph, state, data)
        if loss not in mets:
            raise ValueError(f"unknown loss {loss!r}: choose one of {tuple(BUILTIN_LOSSES)}, a "
                             f"metric of this problem {tuple(sorted(mets))}, or pass a callable "
                             "loss(state, data) -> scalar")
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


def _check_statics(problem, graph, config, num_steps, log_every, checkpoint_every):
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be a slamjax.BilevelProblem, got {type(problem).__name__}")
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a slamjax.Graph, got {type(graph).__name__}")
    if not isinstance(config, SLAMConfig):
        raise TypeError(f"config must be a slamjax.SLAMConfig, got {type(config).__name__}")
    num_steps = _static_int("num_steps", num_steps)
    if log_every is not None:
        log_every = _static_int("log_every", log_every)
        if num_steps % log_every:
            raise ValueError(f"log_every={log_every} must divide num_steps={num_steps}")
    if checkpoint_every is not None:
        checkpoint_every = _static_int("checkpoint_every", checkpoint_every)
    return num_steps, log_every, checkpoint_every


def _as_params(params) -> SLAMParams:
    if isinstance(params, SLAMParams):
        return params
    if isinstance(params, dict) and set(params) <= set(PARAM_FIELDS):
        return SLAMParams(**params)
    raise TypeError(f"params must be slamjax.SLAMParams(alpha, beta, rho, gamma), got "
                    f"{type(params).__name__}")


def _as_key(key):
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def _run_loss(problem, graph, config, num_steps, loss_fn, log_every, checkpoint_every,
              params, data, x0, y0, key, with_state=False):
    params = _as_params(params)
    key = _as_key(key)
    state = init(x0, y0)
    if log_every is None:
        state = scan_steps(problem, config, graph, params, state, data, key, num_steps,
                           checkpoint_every)
        value = loss_fn(state, data)
    else:
        inner_ck = checkpoint_every if checkpoint_every and checkpoint_every < log_every else None

        def segment(s, _):
            s = scan_steps(problem, config, graph, params, s, data, key, log_every, inner_ck)
            return s, loss_fn(s, data)

        if checkpoint_every:
            segment = jax.checkpoint(segment)
        state, values = lax.scan(segment, state, None, length=num_steps // log_every)
        value = jnp.mean(values)
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(f"the loss must return a scalar, got shape {value.shape}")
    return (value, state) if with_state else value


def final_loss_fn(problem: BilevelProblem, graph: Graph, config: SLAMConfig = SLAMConfig(),
                  num_steps: int = 100, loss: str | Callable = "ul_objective", *,
                  checkpoint_every: int | None = None, log_every: int | None = None,
                  with_state: bool = False) -> Callable:
    """A pure function ``(params, data, x0, y0, key) -> scalar``: the loss after a SLAM run.

    The run is ``num_steps`` iterations of ``config`` on ``graph`` from ``(x0, y0)``. The
    result is jit-, grad-, jvp-, jacfwd- and vmap-able in all five arguments (the key is not
    differentiable); ``params`` is a :class:`SLAMParams` whose fields are differentiated
    individually by ``jax.grad``.

    ``loss``: ``"ul_objective"`` (closed-form F(x̄_T) of the quadratic family), ``"f"``
    ((1/n) Σ_i f_i(x_i, y_i) at the final iterate, noise-free), the name of any metric of
    :func:`slamjax.evaluate` (``"grad_F_sq"``, ``"consensus_x"``, …), or a callable
    ``loss(state, data) -> scalar`` of the final :class:`SLAMState`.

    ``log_every=L``: instead of the final state, average the loss over the states at steps
    L, 2L, …, T (a trajectory loss; its hyperparameter gradients do not vanish once the run
    has converged). ``checkpoint_every=c``: rematerialise chunks of c steps in reverse mode
    (memory O(T/c + c)); the gradient is the same up to round-off. ``with_state=True``:
    return ``(loss, final_state)`` (use ``jax.value_and_grad(..., has_aux=True)``).

    Static arguments (problem, graph, config, num_steps, loss, log_every, checkpoint_every)
    are closed over; they cannot be differentiated.
    """
    num_steps, log_every, checkpoint_every = _check_statics(problem, graph, config, num_steps,
                                                            log_every, checkpoint_every)
    loss_fn = _make_loss(loss, problem, config, graph)

    def run_loss(params, data, x0, y0, key=None):
        return _run_loss(problem, graph, config, num_steps, loss_fn, log_every,
                         checkpoint_every, params, data, x0, y0, key, with_state)

    run_loss.__doc__ = (f"Loss {loss!r} after {num_steps} steps of {config.variant} "
                        f"({config.solver}) on a {graph.kind} graph with n={graph.n}.")
    return run_loss


def trajectory_loss_fn(problem: BilevelProblem, graph: Graph, config: SLAMConfig = SLAMConfig(),
                       num_steps: int = 100, loss: str | Callable = "ul_objective", *,
                       log_every: int = 10, checkpoint_every: int | None = None,
                       with_state: bool = False) -> Callable:
    """Like :func:`final_loss_fn`, averaging ``loss`` over the states at steps
    ``log_every, 2·log_every, …, num_steps`` (an area-under-the-curve objective)."""
    return final_loss_fn(problem, graph, config, num_steps, loss, log_every=log_every,
                         checkpoint_every=checkpoint_every, with_state=with_state)


# ----------------------------------------------------------------------------------------
# value_and_grad with named arguments
# ----------------------------------------------------------------------------------------
def _not_diff(name: str, reason: str | None = None) -> NotDifferentiableError:
    why = f": {reason}" if reason else ""
    return NotDifferentiableError(f"cannot differentiate a SLAM run with respect to "
                                  f"{name!r}{why}. The {_DIFF_HELP}.")


def check_wrt(wrt) -> tuple[str, ...]:
    """Validate a ``wrt`` specification and return it as a tuple of names.

    Raises :class:`NotDifferentiableError` for static arguments (graph, config, solver,
    num_steps, …), the key, and unknown names; the message lists the differentiable ones.
    """
    if isinstance(wrt, (str, Graph, SLAMConfig, BilevelProblem)):
        wrt = (wrt,)
    try:
        names = tuple(wrt)
    except TypeError:
        raise _not_diff(repr(wrt), "wrt must be a name or a sequence of names") from None
    if not names:
        raise ValueError(f"wrt is empty; the {_DIFF_HELP}")
    for name in names:
        if not isinstance(name, str):
            if isinstance(name, (Graph, SLAMConfig, BilevelProblem)):
                raise _not_diff(type(name).__name__, _STATIC_REASONS.get(
                    {Graph: "graph", SLAMConfig: "config", BilevelProblem: "problem"}[type(name)]))
            raise _not_diff(repr(name), "wrt entries must be argument names (strings)")
        if name in DIFFERENTIABLE or name.startswith("data."):
            continue
        head = name.split(".")[0].lower()
        if head in _STATIC_REASONS:
            raise _not_diff(name, _STATIC_REASONS[head])
        if name.startswith("params.") and name[7:] in PARAM_FIELDS:
            raise _not_diff(name, f"name the field directly: wrt={name[7:]!r}")
        if head in ("config", "solver") or name.lower().startswith(("config.", "solver.")):
            raise _not_diff(name, "part of the static configuration")
        raise _not_diff(name, "unknown argument")
    if len(set(names)) != len(names):
        raise ValueError(f"wrt has duplicates: {names}")
    if "params" in names and set(names) & set(PARAM_FIELDS):
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


def _split(names, params, data, x0, y0):
    """The differentiated inputs as a dict, and a function rebuilding all inputs from it."""
    diff = {}
    data_leaves, data_def = jax.tree.flatten(data)
    float_idx = [i for i, leaf in enumerate(data_leaves) if _is_float(leaf)]
    for name in names:
        if name in PARAM_FIELDS:
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
            p = _as_params(d["params"])
        for f in PARAM_FIELDS:
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
        x = d.get("x0", x)
        y = d.get("y0", y)
        return p, dt, x, y

    def expand(g):
        """Gradient dict in user-facing form ('data' back to the data's tree structure)."""
        g = dict(g)
        if "data" in g:
            leaves = [None] * len(data_leaves)
            for i, v in zip(float_idx, g["data"]):
                leaves[i] = v
            g["data"] = jax.tree.unflatten(data_def, leaves)
        if "params" in g:
            g["params"] = _as_params(g["params"])
        return g

    return diff, rebuild, expand


def _float_params(params, x0):
    """Python numbers in params -> arrays of the iterate's floating dtype (differentiable)."""
    dtype = jnp.result_type(jax.tree.leaves(x0)[0])
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    return SLAMParams(*(v if isinstance(v, jax.Array) and _is_float(v)
                        else jnp.asarray(v, dtype=dtype) for v in params))


@partial(jax.jit, static_argnames=("problem", "config", "num_steps", "loss", "log_every",
                                   "checkpoint_every", "wrt", "mode"))
def _value_and_grad_jit(params, data, x0, y0, key, graph, *, problem, config, num_steps, loss,
                        log_every, checkpoint_every, wrt, mode):
    loss_fn = _make_loss(loss, problem, config, graph)
    diff, rebuild, expand = _split(wrt, params, data, x0, y0)

    def objective(d):
        p, dt, x, y = rebuild(d)
        return _run_loss(problem, graph, config, num_steps, loss_fn, log_every,
                         checkpoint_every, p, dt, x, y, key)

    if mode == "reverse":
        value, g = jax.value_and_grad(objective)(diff)
    else:  # forward mode: one JVP per scalar, vmapped
        flat, unravel = ravel_pytree(diff)
        basis = jnp.eye(flat.size, dtype=flat.dtype)
        values, tangents = jax.vmap(
            lambda t: jax.jvp(lambda z: objective(unravel(z)), (flat,), (t,)))(basis)
        value, g = values[0], unravel(tangents)
    return value, expand(g)


def value_and_grad_run(problem: BilevelProblem, graph: Graph, params: SLAMParams,
                       data: ProblemData, x0, y0, key=0, *, num_steps: int,
                       config: SLAMConfig = SLAMConfig(), loss: str | Callable = "ul_objective",
                       wrt: str | Sequence[str] = ("alpha", "beta", "rho", "gamma"),
                       log_every: int | None = None, checkpoint_every: int | None = None,
                       mode: str = "reverse", check: bool = True) -> tuple[jax.Array, dict]:
    """Loss of a SLAM run and its derivatives with respect to the arguments named in ``wrt``.

    Returns ``(value, grads)`` with ``grads[name]`` shaped like the argument: a scalar for
    ``alpha``/``beta``/``rho``/``gamma``, a :class:`SLAMParams` for ``"params"``, the data
    pytree for ``"data"`` (``None`` at non-floating leaves), the leaf for a data path such as
    ``"data.agents.b"``, arrays for ``"x0"``/``"y0"``.

    ``mode="reverse"`` (``jax.value_and_grad``; memory O(T), or O(T/c + c) with
    ``checkpoint_every=c``) or ``"forward"`` (one JVP per differentiated scalar, memory O(1) in
    T: best for a few hyperparameters and long runs). ``loss``, ``log_every`` as in
    :func:`final_loss_fn`. The computation is jit-compiled and cached on the static
    arguments, so repeated calls (e.g. a tuning loop) do not recompile (a callable ``loss`` is
    part of that cache key: pass the same function object each time). ``check=True`` runs
    :func:`slamjax.validate` first (clear errors for bad shapes, a
    :class:`~slamjax.StabilityWarning` for unstable step sizes).
    """
    names = check_wrt(wrt)
    if mode not in ("reverse", "forward"):
        raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
    num_steps, log_every, checkpoint_every = _check_statics(problem, graph, config, num_steps,
                                                            log_every, checkpoint_every)
    if isinstance(loss, str):
        _make_loss(loss, problem, config, graph)  # type check only
    params = _float_params(_as_params(params), x0)
    if check:
        validate(problem, config, graph, params, init(x0, y0), data)
    _split(names, params, data, x0, y0)  # eager errors for bad paths / dtypes
    return _value_and_grad_jit(params, data, x0, y0, _as_key(key), graph, problem=problem,
                               config=config, num_steps=num_steps, loss=loss,
                               log_every=log_every, checkpoint_every=checkpoint_every,
                               wrt=names, mode=mode)


def grad_run(*args, **kwargs) -> dict:
    """:func:`value_and_grad_run` without the value."""
    return value_and_grad_run(*args, **kwargs)[1]
