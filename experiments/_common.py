"""Shared helpers of the experiment and benchmark scripts: paths, machine info, peak memory,
timing, JSON and figure writing. (Scripts import it as ``from _common import ...``; they put
their own directory on ``sys.path`` first, which ``python experiments/x.py`` does anyway.)"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def machine_info(extra_packages=("scipy", "torch")) -> dict:
    """CPU model, cores, memory, load, Python/JAX/NumPy versions and devices."""
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


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return repr(o)


def write_json(name_or_path, payload: dict) -> Path:
    """Write ``payload`` to ``results/<name>.json`` (or the given path); returns the path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = RESULTS / f"{name_or_path}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_jsonable))
    return path


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name_or_path, dpi: int = 130) -> Path:
    """Save ``fig`` to ``results/<name>.png`` (or the given path), close it, return the path."""
    path = Path(name_or_path)
    if path.suffix != ".png":
        path = RESULTS / f"{name_or_path}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def out_dir_error(out: Path, script: str) -> bool:
    """True (after printing ``script: error: ...``) if ``--out`` names an existing file."""
    if out.exists() and not out.is_dir():
        print(f"{script}: error: --out {out} is an existing file, not a directory",
              file=sys.stderr)
        return True
    return False


def replot(path: Path, script: str, redo) -> int:
    """``--replot``: ``redo(payload)`` on the JSON at ``path`` (0), or a clear error if no run
    wrote it yet (2)."""
    if not path.exists():
        print(f"{script}: error: {path} does not exist; run without --replot first",
              file=sys.stderr)
        return 2
    redo(json.loads(path.read_text()))
    return 0
