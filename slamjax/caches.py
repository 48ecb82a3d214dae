"""Compiled-program caches and the memory mappings they hold.

Every live XLA CPU executable keeps its JIT-compiled code in its own memory mappings — about
a hundred for a small scanned program and over a thousand for an RL trainer (measured on
jaxlib 0.10.2). Linux caps mappings per process (``vm.max_map_count``, 65,530 by default);
past the cap LLVM fails to allocate ("LLVM compilation error: Cannot allocate memory",
"Failed to materialize symbols") and the process often dies with a segmentation fault in
the next compile. A long notebook session or a test worker that compiles hundreds of
programs reaches it if every program stays alive, so:

* :class:`ProgramCache` — the runner's cache of compiled programs is a bounded LRU (it used
  to grow without limit);
* :func:`clear_caches` — drops slamjax's program caches and JAX's, releasing the mappings;
* :func:`check_memory_maps` — called before each compile by the runner and the RL trainers:
  warns (:class:`MemoryMapWarning`) when the process is close to the cap, with what to do.
"""

from __future__ import annotations

import collections
import gc
import warnings
from pathlib import Path
from typing import Any, Callable, Hashable

import jax

__all__ = ["MemoryMapWarning", "LRUCache", "ProgramCache", "clear_caches", "memory_maps",
           "check_memory_maps"]


class MemoryMapWarning(RuntimeWarning):
    """The process holds most of the memory mappings Linux allows it (``vm.max_map_count``);
    the next compiles may fail or crash."""


_CACHES: list["LRUCache"] = []


class LRUCache:
    """A bounded least-recently-used map from a key to a value built on a miss; every
    instance is emptied by :func:`clear_caches`. ``builds`` counts the misses."""

    def __init__(self, maxsize: int = 32):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        self.maxsize = maxsize
        self.builds = 0
        self._items: collections.OrderedDict = collections.OrderedDict()
        _CACHES.append(self)

    def _before_build(self) -> None:
        """Hook run before each build (a compile for :class:`ProgramCache`)."""

    def get(self, key: Hashable, build: Callable[[], Any]):
        """The value for ``key``: the cached one (now the most recently used), or
        ``build()`` on a miss, stored and counted in ``builds`` (the oldest entry is evicted
        when the cache is full)."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        self._before_build()
        value = build()
        self.builds += 1
        self._items[key] = value
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drop every entry (``builds`` keeps counting)."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class ProgramCache(LRUCache):
    """A bounded LRU of compiled programs. ``compiles`` counts every build (a program evicted
    and needed again counts twice), so it can tell whether new numbers caused a recompile;
    the memory-map check runs before each compile."""

    @property
    def compiles(self) -> int:
        """Number of programs compiled so far (every miss, evicted programs included)."""
        return self.builds

    def _before_build(self) -> None:
        check_memory_maps()


def clear_caches() -> None:
    """Drop every compiled program slamjax and JAX keep (``jax.clear_caches()`` included) and
    collect garbage, which unmaps their code. The next call of each function recompiles."""
    for cache in _CACHES:
        cache.clear()
    jax.clear_caches()
    gc.collect()


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def memory_maps() -> tuple[int, int] | None:
    """``(mappings held by this process, vm.max_map_count)`` on Linux, ``None`` elsewhere."""
    limit = _read_int("/proc/sys/vm/max_map_count")
    try:
        with open("/proc/self/maps", "rb") as f:
            count = sum(1 for _ in f)
    except OSError:
        return None
    return (count, limit) if limit else None


def check_memory_maps(fraction: float = 0.8) -> tuple[int, int] | None:
    """Warn with :class:`MemoryMapWarning` if the process holds more than ``fraction`` of the
    mappings Linux allows it. Host-side; called before compiles, never inside a step."""
    maps = memory_maps()
    if maps is not None and maps[0] > fraction * maps[1]:
        warnings.warn(
            f"this process holds {maps[0]:,} memory mappings of the {maps[1]:,} Linux allows "
            "(vm.max_map_count); every live compiled XLA program holds some, and past the limit "
            "compiles fail or crash. Call slamjax.clear_caches() (or jax.clear_caches()) to "
            "release programs you no longer need, drop references to compiled objects, or "
            "raise the limit: sysctl -w vm.max_map_count=262144", MemoryMapWarning,
            stacklevel=3)
    return maps
