"""The command line from a wheel: build the wheel, install it (not editable) into a fresh
virtual environment and, from a directory outside the source tree, run every sub-command's
``--help``, ``slamjax --version``, ``slamjax run --steps 100`` and ``slamjax sweep --quick``.

The fresh venv gets the base install only (the wheel and its declared dependencies, from the
local pip index/cache); matplotlib (the ``plot`` extra) is added before the sweep, so both the
figure-less path of ``run`` and the figures of ``sweep`` are exercised. The transcript (every
command, its exit code and output) is printed; ``pytest -s`` shows it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "sweep", "tune", "bench", "bench-grad", "bench-envs", "reproduce")

pytestmark = pytest.mark.slow


def _source_version() -> str:
    text = (ROOT / "slamjax" / "__init__.py").read_text()
    return re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M).group(1)


def _copy_source(dst: Path) -> Path:
    """The files a wheel is built from (the package and the top-level metadata files), so
    that building writes nothing into the work tree."""
    shutil.copytree(ROOT / "slamjax", dst / "slamjax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CITATION.cff"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dst / name)
    return dst


class Shell:
    """Runs commands with a clean environment and keeps a transcript."""

    def __init__(self, venv: Path, cwd: Path):
        self.cwd, self.log = cwd, []
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "SLAMJAX_CACHE_DIR",
                            "JAX_COMPILATION_CACHE_DIR")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
        self.env = env

    def __call__(self, *cmd, timeout=900):
        proc = subprocess.run([str(c) for c in cmd], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        out = (proc.stdout + proc.stderr).strip()
        self.log.append(f"$ {' '.join(map(str, cmd))}\n[exit {proc.returncode}]\n{out}\n")
        return proc


def test_wheel_cli_from_outside_the_tree(tmp_path):
    src = _copy_source(tmp_path / "src")
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    assert not str(work.resolve()).startswith(str(ROOT))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("slamjax-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    sh = Shell(venv, work)
    py, slamjax = venv / "bin" / "python", venv / "bin" / "slamjax"
    try:
        p = sh(py, "-m", "pip", "install", "-q", wheel)
        assert p.returncode == 0, p.stderr[-3000:]
        p = sh(py, "-c", "import slamjax, sys; print(slamjax.__file__)")
        where = Path(p.stdout.strip())
        assert p.returncode == 0 and str(where).startswith(str(venv)), p.stdout + p.stderr
        assert "site-packages" in where.parts and not str(where).startswith(str(ROOT))
        _check_help_and_version(sh, py, slamjax)
        _check_run_and_sweep(sh, py, slamjax, work)
    finally:
        print("\n".join(sh.log))


def _check_help_and_version(sh, py, slamjax):
    version = _source_version()
    for argv in ([slamjax, "--version"], [py, "-m", "slamjax", "--version"]):
        p = sh(*argv)
        assert p.returncode == 0 and p.stdout.strip() == f"slamjax {version}", p.stdout
    p = sh(slamjax)
    assert p.returncode == 0 and p.stdout.startswith("usage: slamjax"), p.stdout + p.stderr
    for cmd in COMMANDS:
        p = sh(slamjax, cmd, "--help")
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
        assert p.stdout.startswith(f"usage: slamjax {cmd}"), (cmd, p.stdout)
        assert "Traceback" not in p.stderr
    p = sh(slamjax, "reproduce", "--list")
    assert p.returncode == 0 and "measured on a 2-core CPU" in p.stdout
    p = sh(slamjax, "reproduce", "fig1", "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: slamjax reproduce fig1")
    p = sh(slamjax, "reproduce", "fig1")  # needs the source tree: one line, exit 2
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "source checkout" in p.stderr
    p = sh(slamjax, "run", "--n", "1000000", "--graph", "complete", "--mixing", "dense")
    assert p.returncode == 2 and "largest n that fits" in p.stderr and "Traceback" not in p.stderr


def _check_run_and_sweep(sh, py, slamjax, work):
    p = sh(slamjax, "run", "--steps", "100", "--no-progress")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "final metrics" in p.stdout and (work / "results" / "main.json").is_file()
    has_mpl = sh(py, "-c", "import matplotlib").returncode == 0
    if not has_mpl:  # the base install has no plot extra: said once, JSON still written
        assert "matplotlib is not installed" in p.stderr
        p = sh(py, "-m", "pip", "install", "-q", "matplotlib")
        assert p.returncode == 0, p.stderr[-2000:]
    p = sh(slamjax, "sweep", "--quick", timeout=1800)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = work / "results"
    assert (out / "speedup_sweep.json").is_file() and (out / "speedup_sweep.png").is_file()
    assert sorted(x.name for x in work.iterdir()) == ["results"]  # nothing else written
