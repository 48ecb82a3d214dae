"""The per-agent bilevel problem interface.

A decentralized bilevel problem (paper eq. (1)) is described by what ONE agent computes; the
library vmaps it over the agent axis (and, through ``g`` being a sum, over the m LL tasks).

* ``f(x, y, data, batch) -> scalar``: agent i's upper-level loss f_i(x_i, y_i).
* ``g(x, y, data, batch) -> scalar``: agent i's lower-level loss **summed over its m tasks**,
  Σ_k g_{i,k}(x_i, y_{i,k}). Task k may only depend on its own part y_{i,k} of the LL pytree
  ``y`` (e.g. the k-th entry of a tuple, or row k of an (m, d) leaf). Because the tasks are
  separable, ∇_y of the sum stacks the per-task gradients h_{g,k}, the Hessian of the sum is
  block-diagonal, and one solve with it performs the m task solves of eq. (23) at once.
* ``sample(key, data) -> batch`` (optional): a stochastic oracle. SLAM calls it twice per step
  with independent keys (one batch for h_g, one for h_f), or once with
  ``SLAMConfig(minibatches=1)`` (one batch for both). ``None`` means exact gradients
  (``batch=None``).
* ``hvp_yy(x, y, data, batch, v)`` (optional): ∇²_yy g · v supplied by the user (autodiff of a
  quadratic costs about 2× a hand-written product).
* ``cross_xy(x, y, data, batch, v)`` (optional): ∇²_xy g · v (the x-gradient of ⟨∇_y g, v⟩).
* ``ul_grad(x, y, data, batch)`` (optional): a problem-specific estimator of the UL gradient
  h_f used *instead of* eq. (23) — e.g. a policy-gradient actor step (paper eq. (212)), where
  the implicit term is already folded into the estimator.
* ``metrics(x, y, data, consensus_x, consensus_y) -> dict`` (optional): problem-level metrics
  on the stacked variables (e.g. the Theorem-1 stationarity measures from a closed form).

``data`` is a :class:`ProblemData`: ``shared`` leaves are common to all agents (passed
unbatched), ``agents`` leaves carry the agent axis first (each agent sees its own slice).
Data is always an *argument* of the compiled functions, never a closure, so it can be traced,
changed without recompiling and differentiated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BilevelProblem", "ProblemData", "DATA_AXES", "agent_count", "agent_slice",
           "check_agent_axis", "check_finite", "check_precision", "per_agent"]


class ProblemData(NamedTuple):
    """Problem data: ``shared`` (same for every agent) and ``agents`` (agent axis first)."""

    shared: Any = None
    agents: Any = None


DATA_AXES = ProblemData(shared=None, agents=0)
"""``vmap`` axes of :class:`ProblemData`: shared unbatched, agents batched along axis 0."""


@dataclasses.dataclass(frozen=True, eq=False)
class BilevelProblem:
    """Per-agent bilevel problem. Hashable by identity, so it can be a static jit argument."""

    f: Callable[..., jax.Array]
    g: Callable[..., jax.Array]
    sample: Optional[Callable[..., Any]] = None
    hvp_yy: Optional[Callable[..., Any]] = None
    cross_xy: Optional[Callable[..., Any]] = None
    metrics: Optional[Callable[..., dict]] = None
    ul_grad: Optional[Callable[..., Any]] = None
    name: str = "problem"

    def sample_batch(self, key, data: ProblemData):
        """One agent's minibatch (``None`` for an exact oracle)."""
        return None if self.sample is None else self.sample(key, data)


def agent_count(tree) -> int:
    """The leading (agent) axis of the first leaf of ``tree`` (−1 for a scalar leaf)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("empty pytree: x and y need at least one array leaf")
    return int(jnp.shape(leaves[0])[0]) if jnp.ndim(leaves[0]) else -1


def check_agent_axis(name: str, tree, n: int) -> None:
    """Every leaf of ``tree`` must be an array with leading (agent) axis ``n``."""
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        raise ValueError(f"{name} is an empty pytree; it needs at least one array leaf")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    for path, leaf in zip(paths, leaves):
        shape = jnp.shape(leaf)
        if len(shape) == 0 or shape[0] != n:
            raise ValueError(
                f"{name}{path or ''} has shape {tuple(shape)}: every leaf needs the agent axis "
                f"first with size n={n} (the graph's number of agents)")
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise ValueError(f"{name}{path or ''} has dtype {jnp.result_type(leaf)}; "
                             "optimization variables must be floating point")
    check_precision(name, tree)


#: floating dtypes the library runs in (float64 needs ``jax.config.update("jax_enable_x64", True)``)
_HALF = ("float16", "bfloat16")


def check_precision(name: str, tree) -> None:
    """Half precision is refused (not upcast): the steps mix the variables with float32
    hyperparameters (a scan carry would change dtype), and metrics and exact solves need
    LAPACK, which has no float16. Use float32 (the default) or float64."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dt = jnp.result_type(leaf)
        if str(dt) in _HALF:
            where = f"{name}{jax.tree_util.keystr(path)}"
            raise ValueError(
                f"{where} has dtype {dt}: half precision is not supported (LAPACK solves and "
                f"the scan carry need float32 or float64). Pass {where}.astype(jnp.float32) "
                "(the default), or float64 with jax_enable_x64")


def _is_concrete(leaf) -> bool:
    return not isinstance(leaf, jax.core.Tracer)


def check_finite(name: str, tree) -> None:
    """Every floating leaf of ``tree`` is free of NaN/Inf (only concrete leaves are checked:
    under ``jit``/``grad`` tracing use :func:`slamjax.checked`). Checked on the host with
    NumPy, so nothing is compiled."""
    flat = [(p, leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if _is_concrete(leaf) and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    for path, leaf in flat:
        arr = np.asarray(leaf)  # host copy (free on CPU): no program to compile
        if np.isfinite(arr).all():
            continue
        bad = np.argwhere(~np.isfinite(arr))
        where = f"{name}{jax.tree_util.keystr(path)}"
        idx = f"[{', '.join(map(str, bad[0]))}]" if arr.ndim else ""
        raise ValueError(
            f"{where} has {len(bad)} non-finite entr{'y' if len(bad) == 1 else 'ies'} (first: "
            f"{where}{idx} = {arr[tuple(bad[0])] if arr.ndim else arr}): a run from it is NaN "
            f"from the first step. Pass finite values (e.g. jnp.nan_to_num({where}), or fix the "
            "source of the data)")


def agent_slice(tree):
    """One agent's shapes of an agent-first tree (abstract: nothing is sliced or computed)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)),
                        tree)


def per_agent(fn: Callable, x, y, data: ProblemData, batch=None):
    """``fn(x_i, y_i, data_i, batch_i)`` for every agent i, stacked (``jax.vmap`` with
    ``data.shared`` unbatched and ``data.agents`` / ``batch`` sliced per agent): the way to
    evaluate a problem's per-agent functions on stacked variables, e.g.
    ``per_agent(problem.f, state.x, state.y, data)`` gives every agent's f_i."""
    return jax.vmap(fn, in_axes=(0, 0, DATA_AXES, None if batch is None else 0))(
        x, y, data, batch)
