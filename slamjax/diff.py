"""Derivatives of a whole run of any :class:`~slamjax.Algorithm` with respect to its
hyperparameters, data and start point.

A run ``(params, data, x0, y0, key) ↦ state_T`` (:func:`slamjax.solve`) is one pure
``lax.scan``; every number in it is traced, so a scalar loss of the final state (or of the
trajectory) can be differentiated end to end with ``jax.grad``, ``jax.jvp`` or ``jax.jacfwd``.
What to differentiate is a **pytree filter** or names (:mod:`slamjax.wrt`): an :class:`Inputs`
of booleans (``Inputs(params=SLAMParams(alpha=True, beta=False, rho=True, gamma=False),
x0=True)``; gradients come back as an :class:`Inputs`) or names (``"rho"``,
``"data.agents.b"``, ``"x0"``; a dict comes back). Any algorithm's params fields work, and a
field that is a schedule (:mod:`slamjax.schedules`) is differentiated through its numbers.

How the derivative of the inner solves is taken is the solver's business
(:mod:`slamjax.solvers`: CG implicitly through ``custom_linear_solve``, the Neumann series
unrolled, the exact solve as a dense solve). How the scan is differentiated is the
**adjoint**, an object that carries its behaviour (optimistix's ``AbstractAdjoint.apply``):

* :class:`Reverse` — ``jax.value_and_grad``; stores the residuals of every step, memory O(T);
* :class:`Checkpointed` (``every=c``) — reverse mode over T/c rematerialised chunks
  (``jax.checkpoint``): memory O(T/c + c) for one extra forward pass; ``c ≈ √T`` is best;
* :class:`Forward` — one JVP per differentiated scalar, vmapped: memory O(1) in T, the right
  choice for a handful of hyperparameters over very long horizons.

Losses: a callable ``loss(state, data) -> scalar``, or the name of one of the algorithm's
metrics. :func:`mean_f` is (1/n) Σ_i f_i(x_i, y_i) for any problem; closed forms of the
quadratic family live in :mod:`slamjax.problems.quadratic`.

    alg = slamjax.slam(problem, graph, config)
    loss = final_loss_fn(alg, num_steps, mean_f(problem))
    value, g = jax.value_and_grad(loss)(params, data, x0, y0, key)   # g: SLAMParams

    value, grads = value_and_grad_run(alg, params, data, x0, y0, key, num_steps=200,
                                      loss=loss_fn, wrt=Inputs(params=True),
                                      adjoint=Checkpointed(every=20))
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from slamjax.algorithm import Algorithm, evaluate, merge_static, split_static
from slamjax.loop import as_key, iterate
from slamjax.problem import BilevelProblem, ProblemData, per_agent
from slamjax.wrt import (DIFFERENTIABLE, Inputs, NotDifferentiableError, check_wrt,
                         float_params, hashable_wrt, split_filter, split_names, static_int)

__all__ = ["DIFFERENTIABLE", "NotDifferentiableError", "Inputs", "Reverse", "Checkpointed",
           "Forward", "final_loss_fn", "trajectory_loss_fn", "value_and_grad_run", "grad_run",
           "lower_value_and_grad", "check_wrt", "mean_f", "compiled_programs"]


# ----------------------------------------------------------------------------------------
# adjoints: each one knows how to differentiate a run
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reverse:
    """Reverse mode through the scan: memory O(T)."""

    def checkpoint_every(self, num_steps: int) -> int | None:
        """Chunk length of the rematerialised scan (``None``: no checkpointing)."""
        return None

    def apply(self, objective: Callable, diff) -> tuple[Any, Any]:
        """(value, gradient) of ``objective(diff)``."""
        return jax.value_and_grad(objective)(diff)


@dataclasses.dataclass(frozen=True)
class Checkpointed(Reverse):
    """Reverse mode over rematerialised chunks of ``every`` steps (``None``: ⌈√T⌉)."""

    every: int | None = None

    def checkpoint_every(self, num_steps: int) -> int | None:
        c = self.every if self.every is not None else int(np.ceil(np.sqrt(num_steps)))
        return static_int("Checkpointed.every", c)


@dataclasses.dataclass(frozen=True)
class Forward(Reverse):
    """Forward mode: one JVP per differentiated scalar (vmapped), memory O(1) in T."""

    def apply(self, objective: Callable, diff) -> tuple[Any, Any]:
        flat, unravel = ravel_pytree(diff)
        basis = jnp.eye(flat.size, dtype=flat.dtype)
        values, tangents = jax.vmap(
            lambda t: jax.jvp(lambda z: objective(unravel(z)), (flat,), (t,)))(basis)
        return values[0], unravel(tangents)


def _as_adjoint(adjoint):
    if adjoint is None:
        return Reverse()
    if not (callable(getattr(adjoint, "apply", None))
            and callable(getattr(adjoint, "checkpoint_every", None))):
        raise TypeError(f"adjoint must be an adjoint object such as slamjax.diff.Reverse(), "
                        f"Checkpointed(every=c) or Forward() (with .apply and "
                        f".checkpoint_every), got {adjoint!r}")
    return adjoint


# ----------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------
def mean_f(problem: BilevelProblem) -> Callable:
    """Loss ``(state, data) -> (1/n) Σ_i f_i(x_i, y_i)`` at the iterate, noise-free."""

    def loss(state, data):
        return jnp.mean(per_agent(lambda x, y, d, b: problem.f(x, y, d, None), state.x,
                                  state.y, data))

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
def _check_statics(algorithm, num_steps, log_every):
    if not isinstance(algorithm, Algorithm):
        from slamjax.comm import Graph

        hint = (" (build it with slamjax.slam(problem, graph, config))"
                if isinstance(algorithm, (BilevelProblem, Graph)) else "")
        raise TypeError(f"algorithm must be a slamjax.Algorithm, got "
                        f"{type(algorithm).__name__}{hint}")
    num_steps = static_int("num_steps", num_steps)
    if log_every is not None:
        log_every = static_int("log_every", log_every)
        if num_steps % log_every:
            raise ValueError(f"log_every={log_every} must divide num_steps={num_steps}")
    return num_steps, log_every


def _run_loss(algorithm, num_steps, loss_fn, log_every, checkpoint_every, params, data, x0,
              y0, key, with_state=False):
    key = as_key(key)
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
                  *, adjoint=None, log_every: int | None = None,
                  with_state: bool = False) -> Callable:
    """A pure function ``(params, data, x0, y0, key) -> scalar``: the loss after a run of
    ``num_steps`` steps of ``algorithm`` from ``(x0, y0)``.

    jit-, grad-, jvp-, jacfwd- and vmap-able in all five arguments (the key is not
    differentiable). ``loss``: a callable ``loss(state, data)`` or a metric name.
    ``log_every=L``: average the loss over the states at steps L, 2L, …, T (a trajectory
    loss; its hyperparameter gradients do not vanish once the run has converged).
    ``adjoint=Checkpointed(every=c)`` rematerialises chunks of c steps in reverse mode
    (memory O(T/c + c)); the gradient is the same up to round-off. ``with_state=True``
    returns ``(loss, final_state)``.
    """
    num_steps, log_every = _check_statics(algorithm, num_steps, log_every)
    ck = _as_adjoint(adjoint).checkpoint_every(num_steps)
    loss_fn = _make_loss(loss, algorithm)

    def run_loss(params, data, x0, y0, key=None):
        return _run_loss(algorithm, num_steps, loss_fn, log_every, ck, params, data, x0, y0,
                         key, with_state)

    run_loss.__doc__ = f"Loss {loss!r} after {num_steps} steps of the algorithm."
    return run_loss


def trajectory_loss_fn(algorithm: Algorithm, num_steps: int, loss: str | Callable,
                       *, log_every: int = 10, adjoint=None,
                       with_state: bool = False) -> Callable:
    """Like :func:`final_loss_fn`, averaging ``loss`` over the states at steps
    ``log_every, 2·log_every, …, num_steps`` (an area-under-the-curve objective)."""
    return final_loss_fn(algorithm, num_steps, loss, log_every=log_every, adjoint=adjoint,
                         with_state=with_state)


# ----------------------------------------------------------------------------------------
# value and gradient, compiled
# ----------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("static", "pstatic", "num_steps", "loss", "log_every",
                                   "adjoint", "wrt"))
def _value_and_grad_jit(dyn, params, data, x0, y0, key, *, static, pstatic, num_steps, loss,
                        log_every, adjoint, wrt):
    algorithm = merge_static(dyn, static)
    params = merge_static(params, pstatic)  # plain callables (schedules) are static
    loss_fn = _make_loss(loss, algorithm)
    if isinstance(wrt, Inputs):
        diff, rebuild, expand = split_filter(wrt, params, data, x0, y0)
    else:
        diff, rebuild, expand = split_names(wrt, params, data, x0, y0)
    ck = adjoint.checkpoint_every(num_steps)

    def objective(d):
        p, dt, x, y = rebuild(d)
        return _run_loss(algorithm, num_steps, loss_fn, log_every, ck, p, dt, x, y, key)

    value, g = adjoint.apply(objective, diff)
    return value, expand(g)


def _prepare(algorithm, params, data, x0, y0, key, *, num_steps, loss, wrt, adjoint,
             log_every, check):
    """(arguments, static options) of the compiled value-and-gradient program."""
    num_steps, log_every = _check_statics(algorithm, num_steps, log_every)
    if not hasattr(params, "_fields"):
        raise TypeError(f"params must be the algorithm's NamedTuple of hyperparameters, got "
                        f"{type(params).__name__}")
    wrt = hashable_wrt(check_wrt(params._fields if wrt is None else wrt, params._fields))
    adjoint = _as_adjoint(adjoint)
    if isinstance(loss, str):
        _make_loss(loss, algorithm)  # type check only
    params = float_params(params, x0)
    if check and algorithm.check is not None:
        from slamjax.schedules import at

        algorithm.check(at(params, 0), algorithm.init(x0, y0, data), data)
    if isinstance(wrt, Inputs):  # eager errors for bad filters
        split_filter(wrt, params, data, x0, y0)
    else:
        split_names(wrt, params, data, x0, y0)
    dyn, static = split_static(algorithm)
    pdyn, pstatic = split_static(params)
    return (dyn, pdyn, data, x0, y0, as_key(key)), dict(
        static=static, pstatic=pstatic, num_steps=num_steps, loss=loss, log_every=log_every,
        adjoint=adjoint, wrt=wrt)


def value_and_grad_run(algorithm: Algorithm, params, data: ProblemData, x0, y0, key=0, *,
                       num_steps: int, loss: str | Callable, wrt=None, adjoint=None,
                       log_every: int | None = None,
                       check: bool = True) -> tuple[jax.Array, Any]:
    """Loss of a run and its derivatives with respect to what ``wrt`` selects.

    ``wrt``: ``None`` (default: every field of the algorithm's params, as names), names
    (returns a dict: a scalar for a parameter field, the params NamedTuple for ``"params"``,
    the data pytree for ``"data"`` (``None`` at non-floating leaves), the leaf for a path such
    as ``"data.agents.b"``, arrays for ``"x0"``/``"y0"``) or an :class:`Inputs` filter
    (returns an :class:`Inputs` of gradients, ``None`` where not selected; it must select
    floating-point leaves only).

    ``adjoint``: :class:`Reverse` (default), :class:`Checkpointed` or :class:`Forward`.
    Compiled and cached on the static arguments: repeated calls with new numbers do not
    recompile (a callable ``loss`` is part of the cache key: pass the same function object).
    ``check=True`` runs the algorithm's eager checks first (clear errors, stability warnings).
    """
    args, statics = _prepare(algorithm, params, data, x0, y0, key, num_steps=num_steps,
                             loss=loss, wrt=wrt, adjoint=adjoint, log_every=log_every,
                             check=check)
    return _value_and_grad_jit(*args, **statics)


def lower_value_and_grad(algorithm: Algorithm, params, data: ProblemData, x0, y0, key=0, *,
                         num_steps: int, loss: str | Callable, wrt=None, adjoint=None,
                         log_every: int | None = None):
    """The program of :func:`value_and_grad_run`, lowered and not yet run: returns
    ``(lowered, args)``; ``lowered.compile()`` gives its memory and cost analyses and
    ``lowered.compile()(*args)`` its (value, gradients)."""
    args, statics = _prepare(algorithm, params, data, x0, y0, key, num_steps=num_steps,
                             loss=loss, wrt=wrt, adjoint=adjoint, log_every=log_every,
                             check=False)
    return _value_and_grad_jit.lower(*args, **statics), args


def grad_run(*args, **kwargs):
    """:func:`value_and_grad_run` without the value."""
    return value_and_grad_run(*args, **kwargs)[1]


def compiled_programs() -> int:
    """How many programs :func:`value_and_grad_run` has compiled in this process (new numbers
    with the same shapes and static configuration add none)."""
    return _value_and_grad_jit._cache_size()
