"""Compiled programs are bounded and releasable (``slamjax.caches``).

Why this exists: every live XLA CPU executable holds memory mappings; the runner's program
cache used to grow without bound, and a pytest-xdist worker that ran ~220 tests reached
Linux's ``vm.max_map_count`` (65,530) and died in the next compile (measured: the worker's
mappings climbed monotonically to 65,499, then "LLVM compilation error: Cannot allocate
memory" / a segmentation fault)."""

import sys
import warnings

import numpy as np
import pytest

import slamjax as sj
from slamjax import caches
from slamjax.problems.quadratic import make_quadratic

run_module = sys.modules["slamjax.driver"]  # the module of ``slamjax.run``


def _run(log_every, steps=4):
    problem, data, x0, y0 = make_quadratic(4, 2, 2, seed=0)
    alg = sj.slam(problem, sj.graphs.ring(4))
    params = sj.SLAMParams.create(2.0, 2.0, 0.1, 1.0)
    return sj.run(alg, params, data, x0, y0, num_steps=steps, log_every=log_every,
                  progress=False)


def test_program_cache_is_a_bounded_lru():
    built = []
    cache = caches.ProgramCache(maxsize=2)
    get = lambda k: cache.get(k, lambda: built.append(k) or f"program {k}")  # noqa: E731
    assert get("a") == "program a" and get("b") == "program b" and get("a") == "program a"
    assert built == ["a", "b"] and cache.compiles == 2
    get("c")  # evicts b, the least recently used
    assert len(cache) == 2 and built == ["a", "b", "c"]
    get("a")
    assert built == ["a", "b", "c"]  # a was kept
    get("b")
    assert built == ["a", "b", "c", "b"] and cache.compiles == 4
    cache.clear()
    assert len(cache) == 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="maxsize"):
            caches.ProgramCache(maxsize=bad)


def test_runner_cache_is_bounded_and_counts_every_compile(monkeypatch):
    monkeypatch.setattr(run_module, "_PROGRAMS", caches.ProgramCache(maxsize=2))
    for every in (1, 2, 4):  # log_every is static: three programs
        _run(every)
    assert len(run_module._PROGRAMS) == 2 and sj.run.__module__ == "slamjax.driver"
    assert run_module.compiled_programs() == 3
    _run(4)  # most recent: reused
    assert run_module.compiled_programs() == 3
    _run(1)  # evicted: compiled again
    assert run_module.compiled_programs() == 4


@pytest.mark.skipif(caches.memory_maps() is None, reason="needs Linux /proc")
def test_clear_caches_releases_the_programs_memory_mappings():
    sj.clear_caches()
    base = caches.memory_maps()[0]
    results = [_run(every, steps=8) for every in (1, 2, 4, 8)]
    held = caches.memory_maps()[0]
    assert held > base + 40, (base, held)  # four live programs hold mappings
    sj.clear_caches()
    released = caches.memory_maps()[0]
    assert released < held - 40, (base, held, released)
    # the numbers survive (results are arrays, not programs) and a new run recompiles
    before = run_module.compiled_programs()
    again = _run(1, steps=8)
    assert run_module.compiled_programs() == before + 1
    np.testing.assert_array_equal(np.asarray(again.state.x), np.asarray(results[0].state.x))


def test_warning_near_the_mapping_limit(monkeypatch):
    monkeypatch.setattr(caches, "memory_maps", lambda: (90, 100))
    with pytest.warns(caches.MemoryMapWarning, match="clear_caches"):
        assert caches.check_memory_maps() == (90, 100)
    monkeypatch.setattr(caches, "memory_maps", lambda: (70, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caches.check_memory_maps()
    # the runner checks before compiling a new program, and only then
    monkeypatch.setattr(caches, "memory_maps", lambda: (90, 100))
    monkeypatch.setattr(run_module, "_PROGRAMS", caches.ProgramCache(maxsize=4))
    with pytest.warns(caches.MemoryMapWarning):
        _run(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", caches.MemoryMapWarning)
        _run(2)
