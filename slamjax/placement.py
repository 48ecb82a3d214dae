"""Placements: where the driver's arrays live. One device is the default (no placement).

:class:`Sharded` splits the agent axis over a 1-D device mesh (axis ``"agents"``): the
state's and ``data.agents``' agent-first leaves are sharded, everything else (shared data,
params, keys, counters) replicated. The mesh may span several processes
(:func:`slamjax.distributed.global_mesh`); host values that every process holds in full are
then cut into the slices each process's devices own. Build the algorithm on the partitioned
communication object (``slam(problem, partition_graph(graph, mesh), config)``) so that its
Laplacian products run with explicit halo exchange; on a plain graph the partitioner's own
collectives are used. Same numbers as one device up to float round-off.

    placement = Sharded(mesh)
    state = slamjax.solve(alg, params, data, x0, y0, key, T, placement=placement)
    result = slamjax.run(alg, params, data, x0, y0, num_steps=T, placement=placement)
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from slamjax.algorithm import merge_static, split_static
from slamjax.loop import iterate
from slamjax.sharding import AXIS, agent_mesh, replicate, shard_problem_inputs

__all__ = ["Sharded", "check_divisible"]


def check_divisible(n: int, mesh: Mesh, graph=None) -> None:
    """Refuse (``ValueError``) an ``n`` that the mesh cannot split evenly (torus: its rows):
    padded phantom agents would change the graph, its λ_max and the metrics."""
    D = int(mesh.shape[AXIS])
    rows = graph.shape[0] if graph is not None and graph.kind == "torus" and graph.shape \
        else None
    if n % D or (rows is not None and rows % D):
        what = f"a torus with {rows} rows" if rows is not None and rows % D else f"n={n} agents"
        lo, hi = (n // D) * D, -(-n // D) * D
        procs = len({d.process_index for d in mesh.devices.flat})
        raise ValueError(
            f"{what} cannot be split evenly over the {D} devices of {procs} "
            f"process(es): refused (not padded — phantom agents would change the graph, its "
            f"λ_max and the metrics). Use a multiple of {D}"
            + (f", e.g. n={hi}" + (f" or n={lo}" if lo else "") if rows is None else
               f" rows") + ", or another device count.")


@partial(jax.jit, static_argnames=("static", "pstatic", "num_steps", "checkpoint_every"))
def _jit_iterate(dyn, params, data, state, key, *, static, pstatic, num_steps,
                 checkpoint_every):
    return iterate(merge_static(dyn, static), merge_static(params, pstatic), data, state, key,
                   num_steps, checkpoint_every=checkpoint_every)


@dataclasses.dataclass(frozen=True)
class Sharded:
    """The agent axis sharded over ``mesh`` (default: every device of this process)."""

    mesh: Mesh | None = None

    def __post_init__(self):
        if self.mesh is None:
            object.__setattr__(self, "mesh", agent_mesh())

    @property
    def is_main(self) -> bool:
        """True on process 0 (the one that prints and writes)."""
        return jax.process_index() == 0

    def place_inputs(self, data, x0, y0):
        """``data``, x0, y0 on the mesh (agent-first leaves sharded, the rest replicated)."""
        n = jnp.shape(jax.tree.leaves(x0)[0])[0]
        check_divisible(n, self.mesh)
        return shard_problem_inputs(self.mesh, data=data, x0=x0, y0=y0, n=n)

    def place_state(self, state):
        """An algorithm's state on the mesh (leaves with the agent axis sharded)."""
        n = jnp.shape(jax.tree.leaves(state.x)[0])[0]
        return shard_problem_inputs(self.mesh, state=state, n=n)

    def replicate(self, tree):
        """``tree`` on every device of the mesh."""
        return replicate(tree, self.mesh)

    def prepare_solve(self, algorithm, params, data, x0, y0, key, num_steps: int, *,
                      checkpoint_every: int | None = None, check: bool = True):
        """(jitted program, placed arguments, static options) of :meth:`solve`:
        ``program(*args, **statics)`` runs it, ``program.lower(*args, **statics)`` gives
        its HLO (one step's collectives sit once in the scan body)."""
        # inputs placed first, so that init's Laplacian products already run on the mesh (on
        # a mesh spanning several processes, unplaced arrays could not enter its shard_map)
        data, x0, y0 = self.place_inputs(data, x0, y0)
        state = algorithm.init(x0, y0, data)
        if check and algorithm.check is not None:
            algorithm.check(params, state, data)
        state = self.place_state(state)
        dyn, static = split_static(algorithm)
        pdyn, pstatic = split_static(params)
        args = (dyn, self.replicate(pdyn), data, state, self.replicate(key))
        return _jit_iterate, args, dict(static=static, pstatic=pstatic,
                                        num_steps=int(num_steps),
                                        checkpoint_every=checkpoint_every)

    def solve(self, algorithm, params, data, x0, y0, key, num_steps: int, *,
              checkpoint_every: int | None = None, check: bool = True):
        """:func:`slamjax.solve` on the mesh; returns the final state, sharded like its
        inputs (on several processes: global arrays, see
        :func:`slamjax.distributed.gather`)."""
        prog, args, statics = self.prepare_solve(algorithm, params, data, x0, y0, key,
                                                 num_steps, checkpoint_every=checkpoint_every,
                                                 check=check)
        return prog(*args, **statics)
