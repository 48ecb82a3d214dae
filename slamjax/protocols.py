"""The library's contracts as :class:`typing.Protocol` types (for type checkers and readers).

Nothing here is required at run time: any object with these methods works (the library
duck-types), e.g. a user's own consensus rule, linear solver, adjoint or placement.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["InitFn", "StepFn", "KernelFn", "MetricsFn", "ConsensusRule", "LinearSolver",
           "Adjoint", "Placement"]


class InitFn(Protocol):
    """``init(x0, y0, data) -> state``."""

    def __call__(self, x0: Any, y0: Any, data: Any = None) -> Any: ...


class StepFn(Protocol):
    """``step(key, state, params, data) -> (state, info)``."""

    def __call__(self, key: Any, state: Any, params: Any, data: Any) -> tuple[Any, dict]: ...


class KernelFn(Protocol):
    """``kernel(key, state, params, data, comm) -> (state, info)``: a step whose
    communication object is an argument."""

    def __call__(self, key: Any, state: Any, params: Any, data: Any,
                 comm: Any) -> tuple[Any, dict]: ...


class MetricsFn(Protocol):
    """``metrics(state, data) -> dict of scalars``."""

    def __call__(self, state: Any, data: Any) -> dict: ...


@runtime_checkable
class ConsensusRule(Protocol):
    """A consensus transform (:mod:`slamjax.consensus`)."""

    def init(self, params: Any, comm: Any) -> Any:
        """The rule's state for the variable ``params``."""
        ...

    def update(self, grads: Any, state: Any, params: Any, comm: Any,
               hp: Any) -> tuple[Any, Any]:
        """(new variable, new state) after one step along ``grads``."""
        ...

    def messages(self, comm: Any, params: Any) -> int:
        """Scalars one update sends."""
        ...


@runtime_checkable
class LinearSolver(Protocol):
    """A solver of H v = b (:mod:`slamjax.solvers`)."""

    iterations: int

    def solve(self, op: Any, b: Any, x0: Any = None) -> Any:
        """H⁻¹ b for the operator ``op`` (``op.mv``, ``op.as_matrix``)."""
        ...


@runtime_checkable
class Adjoint(Protocol):
    """How a run is differentiated (:mod:`slamjax.diff`)."""

    def checkpoint_every(self, num_steps: int) -> int | None:
        """Chunk length of the rematerialised scan, or ``None``."""
        ...

    def apply(self, objective: Any, diff: Any) -> tuple[Any, Any]:
        """(value, gradient) of ``objective(diff)``."""
        ...


@runtime_checkable
class Placement(Protocol):
    """Where the driver's arrays live (:mod:`slamjax.placement`)."""

    @property
    def is_main(self) -> bool:
        """True on the process that prints and writes."""
        ...

    def place_inputs(self, data: Any, x0: Any, y0: Any) -> tuple[Any, Any, Any]:
        """The run's inputs, placed."""
        ...

    def place_state(self, state: Any) -> Any:
        """The initial state, placed."""
        ...

    def replicate(self, tree: Any) -> Any:
        """``tree`` on every device."""
        ...

    def solve(self, algorithm: Any, params: Any, data: Any, x0: Any, y0: Any, key: Any,
              num_steps: int, **kw: Any) -> Any:
        """:func:`slamjax.solve` with this placement."""
        ...
