"""``slamjax --cache-dir DIR`` / ``SLAMJAX_CACHE_DIR``: JAX's persistent compilation cache.

The cache is process-global JAX state, so the runs that turn it on happen in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slamjax.cli import _pop_cache_dir, enable_compilation_cache, main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def test_cache_dir_option_is_parsed_anywhere():
    assert _pop_cache_dir(["--cache-dir", "/tmp/c", "run", "--n", "8"]) == \
        (["run", "--n", "8"], "/tmp/c")
    assert _pop_cache_dir(["bench", "--quick", "--cache-dir=/x"]) == (["bench", "--quick"], "/x")
    assert _pop_cache_dir(["run"]) == (["run"], None)
    with pytest.raises(ValueError, match="--cache-dir needs a directory"):
        _pop_cache_dir(["run", "--cache-dir"])
    assert enable_compilation_cache(None) is None
    assert enable_compilation_cache("off") is None


def test_unusable_cache_dir_is_one_clear_line(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    rc = cli_main(["--cache-dir", str(f / "sub"), "run", "--n", "8", "--steps", "10"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--cache-dir" in err and "writable directory" in err and "Traceback" not in err


def _run(args, env):
    return subprocess.run([sys.executable, "-m", "slamjax.cli"] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("how", ["option", "env"])
def test_cli_run_fills_and_reuses_the_cache(tmp_path, how):
    cache = tmp_path / "xla-cache"
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("SLAMJAX_CACHE_DIR", None)
    base = ["run", "--n", "8", "--steps", "20", "--log-every", "10", "--dx", "2", "--dy", "2",
            "--m", "1", "--variant", "slam", "--no-progress", "--no-plot"]
    if how == "option":
        pre = ["--cache-dir", str(cache)]
    else:
        pre = []
        env["SLAMJAX_CACHE_DIR"] = str(cache)
    r1 = _run(pre + base + ["--out", str(tmp_path / "a")], env)
    assert r1.returncode == 0, r1.stderr[-2000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first run wrote no cache entries"
    r2 = _run(pre + base + ["--out", str(tmp_path / "b")], env)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir()) == entries  # served from the cache


def test_off_by_default_and_env_turns_it_on(tmp_path):
    code = ("import jax, slamjax.cli as c\n"
            "try:\n    c.main(['run', '--n', '0'])\n"
            "except SystemExit:\n    pass\n"
            "print('CACHE', jax.config.jax_compilation_cache_dir)")
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("SLAMJAX_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300).stdout
    assert "CACHE None" in out
    env["SLAMJAX_CACHE_DIR"] = str(tmp_path / "c")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300).stdout
    assert f"CACHE {tmp_path / 'c'}" in out
