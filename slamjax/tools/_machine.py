"""Helpers of the tools: machine description, peak memory, timing, figures without pyplot,
and the environment of worker subprocesses."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import time
from pathlib import Path

import numpy as np


def machine_info(extra_packages=("scipy", "torch")) -> dict:
    """CPU model, cores, memory, load, Python/JAX/NumPy versions and devices (plus the
    versions of ``extra_packages``, ``None`` where one is not installed)."""
    import jax

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "mem_GiB": mem, "load_avg": load,
            "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "numpy": np.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "gpu": "none available on this machine (CPU only); nothing in the hot path is "
                   "CPU-specific"}
    for name in extra_packages:
        try:
            mod = __import__(name)
            info[name] = mod.__version__
            if name == "torch":
                info["torch_threads"] = mod.get_num_threads()
        except ImportError:
            info[name] = None
    return info


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process in MiB (VmHWM, else getrusage)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float | None:
    """Resident memory of this process now, in MiB (None off Linux)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def best_time(fn, repeats: int, min_time: float = 0.0) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls (each call blocks until done)."""
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (the ``plot`` extra)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


NO_PLOT_NOTE = ("matplotlib is not installed, so no figure is written (pip install "
                "'slamjax[plot]' for the figures)")


def new_figure(rows: int = 1, cols: int = 1, figsize=(6.4, 4.8), **subplots):
    """``(fig, axes)`` of a matplotlib ``Figure`` made without pyplot: no backend is selected
    and nothing is registered globally (safe in notebooks and worker processes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **subplots)


def colormap(name: str):
    """A matplotlib colormap by name (no pyplot)."""
    import matplotlib

    return matplotlib.colormaps[name]


def child_env(**extra) -> dict:
    """The environment of a worker subprocess (``python -m slamjax.tools...``): this
    process's, with the directory that holds the imported ``slamjax`` first on PYTHONPATH
    (so a source checkout that is not installed works too) and ``extra`` on top."""
    import slamjax

    root = str(Path(slamjax.__file__).resolve().parents[1])
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "")
                                                  .split(os.pathsep) if p])
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env
