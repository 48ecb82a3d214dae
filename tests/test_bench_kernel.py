"""The throughput benchmark's hand-written kernel computes the library's iterates.

``slamjax bench`` (:mod:`slamjax.tools.bench`, also ``experiments/bench_throughput.py``) times
every library path (autodiff HVPs, the user's own ``hvp_yy``/``cross_xy``, the built-in
quadratic) against a hand-written jit + scan kernel of the same recursion; the comparison only
means something if all of them compute the same numbers. These run the benchmark's own worker
at toy size (no timing assertions)."""

from __future__ import annotations

import numpy as np

from slamjax.tools import bench


def test_kernel_table_worker_agrees_with_every_library_path():
    spec = {"d": [6], "n": [40], "impls": list(bench.TABLE_IMPLS), "graph": "sw",
            "loop_max_n": 64, "repeats": 1, "target_s": 0.01}
    out = bench.table_worker(spec)
    (row,) = out["rows"]
    assert set(row["impls"]) == set(bench.TABLE_IMPLS)
    for impl in ("slamjax_autodiff", "slamjax_user_products", "slamjax_builtin"):
        e = row["impls"][impl]
        assert e["max_rel_diff_vs_kernel"] < 1e-5, (impl, e)
        assert e["agent_steps_per_s"] > 0 and e["compile_s"] > 0
    targets = bench.table_targets({"by_cores": {"1": out}})
    assert {t["path"] for t in targets} == {"slamjax_autodiff", "slamjax_user_products",
                                            "slamjax_builtin"}
    assert all(isinstance(t["met"], bool) for t in targets)


def test_kernel_matches_numpy_reference_many_steps():
    """The kernel against the batched-NumPy peer (an independent implementation) over enough
    steps that a wrong sign or a missing term would show."""
    n, d, steps = 24, 5, 30
    graph = bench.build_graph("sw", n)
    call, fresh, _ = bench.kernel_runner(graph, d, n, steps)
    xk = np.asarray(call(fresh())[0])
    _, data, x0, y0 = bench.make_quadratic(n, d, d, 1, seed=0)
    ref = bench.NumpyBatched(graph, data, x0, y0)
    for _ in range(steps):
        ref.step()
    np.testing.assert_allclose(xk, ref.x, rtol=1e-4, atol=1e-4 * np.abs(ref.x).max())
    assert np.abs(xk - np.asarray(x0)).max() > 1e-2  # it moved
