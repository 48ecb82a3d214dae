"""Pieces shared by the bilevel peers: per-agent oracles, minibatches, checks, builders."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from slamjax.algorithm import Algorithm, Static, from_kernel, params_class_error
from slamjax.comm import Graph
from slamjax.hypergrad import cross_xy, hvp_yy
from slamjax.metrics import bilevel_metrics
from slamjax.problem import DATA_AXES, BilevelProblem, check_agent_axis


def sample(problem: BilevelProblem, key, data, n: int):
    """One minibatch per agent (``None`` for an exact oracle)."""
    return jax.vmap(problem.sample_batch, in_axes=(0, DATA_AXES))(jax.random.split(key, n), data)


def per_agent(fn, x, y, z, data, batch_g, batch_f):
    """``vmap`` of ``fn(x_i, y_i, z_i, data_i, batch_g_i, batch_f_i)`` over the agents."""
    return jax.vmap(fn, in_axes=(0, 0, 0, DATA_AXES, 0, 0))(x, y, z, data, batch_g, batch_f)


def directions(problem, x, y, z, data, batch_g, batch_f):
    """Per agent, at (x, y, z): d_y = ∇_y g, d_z = ∇²_yy g·z − ∇_y f, d_x = ∇_x f − ∇²_xy g·z
    (the three directions of the SOBA family; g-terms on ``batch_g``, f-terms on ``batch_f``)."""
    def one(xi, yi, zi, di, bg, bf):
        gy = jax.grad(problem.g, argnums=1)(xi, yi, di, bg)
        fx, fy = jax.grad(problem.f, argnums=(0, 1))(xi, yi, di, bf)
        hz = hvp_yy(problem, xi, yi, di, bg, zi)
        cz = cross_xy(problem, xi, yi, di, bg, zi)
        return (jax.tree.map(jnp.subtract, fx, cz), gy, jax.tree.map(jnp.subtract, hz, fy))

    return per_agent(one, x, y, z, data, batch_g, batch_f)


def number(v, dtype=None):
    """A params field: a schedule (callable) as it is, else an array of ``dtype``."""
    return v if callable(v) else jnp.asarray(v, dtype=dtype)


def axpy(a, x, y):
    """y + a·x leafwise (a a traced scalar cast to each leaf's dtype)."""
    return jax.tree.map(lambda xi, yi: yi + jnp.asarray(a, yi.dtype) * xi, x, y)


def lin(*terms):
    """Σ c_k · tree_k leafwise for (c_k, tree_k) pairs."""
    out = None
    for c, t in terms:
        scaled = jax.tree.map(lambda v: jnp.asarray(c, v.dtype) * v, t)
        out = scaled if out is None else jax.tree.map(jnp.add, out, scaled)
    return out


def counts(comm: Graph, exchanged, minibatches_per_agent: float, problem) -> dict:
    """``info`` counters: scalars sent for the trees in ``exchanged`` (one exchange each) and
    per-agent minibatches drawn (0 with an exact oracle)."""
    sent = sum(comm.messages(t) for t in exchanged)
    mb = 0.0 if problem.sample is None else float(minibatches_per_agent * comm.n)
    return {"messages": jnp.asarray(float(sent), jnp.float32),
            "minibatches": jnp.asarray(mb, jnp.float32)}


CONSENSUS = ("both", "upper")


def check_consensus(name: str, consensus) -> None:
    """``consensus`` option of the peers: ``"both"`` levels or the ``"upper"`` level only."""
    if not isinstance(consensus, str) or consensus not in CONSENSUS:
        raise ValueError(f"{name}: consensus must be one of {CONSENSUS}, got {consensus!r}")


def check_inputs(name, comm, params, state, params_cls=None):
    """Agent axes of x and y; ``params`` of the method's class; every scalar field finite
    and ≥ 0."""
    if params_cls is not None and not isinstance(params, params_cls):
        raise params_class_error(name, params_cls, params)
    check_agent_axis("x", state.x, comm.n)
    check_agent_axis("y", state.y, comm.n)
    for field in params._fields:
        v = getattr(params, field)
        if jnp.ndim(v) != 0:
            continue
        try:
            v = float(v)
        except Exception:  # a tracer: cannot be checked here
            continue
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: {field}={v} must be finite and ≥ 0")


def build(problem, comm, options, init, kernel, name, params_cls, metrics=None,
          check=None) -> Algorithm:
    """An Algorithm over ``comm`` with ``(problem, options)`` static: ``init(static, comm, x0,
    y0, data)`` and ``kernel(static, key, state, params, data, comm)``. Default ``metrics``: as
    for SLAM with consensus on both levels (on x only if ``options.consensus == "upper"``);
    default ``check``: agent axes, the params class and non-negative parameters. Custom ones
    are called as ``fn(static, comm, ...)``."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be a slamjax.BilevelProblem, got {type(problem).__name__}")
    if not isinstance(comm, Graph):
        raise TypeError(f"comm must be a slamjax.Graph, got {type(comm).__name__}")
    st = Static((problem, options))
    P = jax.tree_util.Partial
    return from_kernel(P(init, st, comm), P(_checked_kernel, P(kernel, st), name, params_cls),
                       comm, metrics=P(metrics or _metrics, st, comm),
                       check=P(check, st, comm) if check else P(_check, st, comm, name,
                                                                   params_cls),
                       problem=problem)


def _checked_kernel(kernel, name, params_cls, key, state, params, data, comm):
    if not all(hasattr(params, f) for f in params_cls._fields):
        raise params_class_error(name, params_cls, params)
    return kernel(key, state, params, data, comm)


def _metrics(static, comm, state, data):
    both = getattr(static.value[1], "consensus", "both") == "both"
    return bilevel_metrics(static.value[0], comm, state.x, state.y, data, True, both)


def _check(static, comm, name, params_cls, params, state, data):
    check_inputs(name, comm, params, state, params_cls)
