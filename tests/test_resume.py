"""Checkpoint and resume (slamjax.checkpoint through slamjax.run): a run of 10⁵ steps killed
with SIGKILL at a random point and resumed gives the uninterrupted run's final state and
history bit for bit (float32 SLAM, float64 D-SOBA on a faulty network; seeds × grid lanes);
a first SIGINT stops at a chunk boundary with a checkpoint and the partial results; a
checkpoint of another run is refused, naming what differs."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import slamjax as sj
from slamjax import checkpoint as ckpt
from slamjax.problems.quadratic import make_quadratic

WORKER = textwrap.dedent("""
    import sys, numpy as np, jax
    method, bits, mode, directory, out = sys.argv[1:6]
    jax.config.update("jax_enable_x64", bits == "64")
    import jax.numpy as jnp
    import slamjax as sj
    from slamjax import faults as F
    from slamjax.problems.quadratic import make_quadratic
    dtype = jnp.float64 if bits == "64" else jnp.float32
    g = sj.graphs.ring(4)
    problem, data, x0, y0 = make_quadratic(4, 2, 2, 1, seed=0, noise=0.1, dtype=dtype)
    if method == "slam":
        alg = sj.slam(problem, g, sj.SLAMConfig(solver=sj.CG(2)))
        p = sj.SLAMParams.create(20.0, 20.0, 0.5, dtype=dtype)
        grid = {"rho": [0.4, 0.5]}
    else:
        alg = F.with_faults(sj.baselines.dsoba(problem, g), F.LinkDrops(0.2),
                            F.Compress(bits=4, error_feedback=True))
        p = sj.baselines.DSOBAParams.create(0.05, 0.05, 0.05, dtype=dtype)
        grid = {"lr_x": [0.04, 0.05]}
    kw = dict(num_steps=100_000, log_every=1000, seeds=[0, 1], grid=grid, progress=False,
              logs_per_chunk=2)
    if mode == "resume":
        kw.update(checkpoint=directory, resume=True)
    r = sj.run(alg, p, data, x0, y0, **kw)
    flat = {f"state{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(r.state))}
    np.savez(out, steps=r.steps, **flat, **{"h_" + k: v for k, v in r.history.items()})
""")


def _launch(tmp_path, method, bits, mode, out):
    return subprocess.Popen([sys.executable, "-c", WORKER, method, bits, mode,
                             str(tmp_path / "ck"), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("method,bits", [("slam", "32"), ("dsoba_faults", "64")])
def test_sigkill_at_a_random_point_then_resume_is_bit_identical(tmp_path, method, bits):
    ref = _launch(tmp_path, method, bits, "full", tmp_path / "full.npz")
    first = _launch(tmp_path, method, bits, "resume", tmp_path / "never.npz")
    marker = tmp_path / "ck" / "checkpoint.json"
    t0 = time.time()
    while not marker.exists() and first.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert marker.exists(), first.communicate()[1][-2000:]
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = json.loads(marker.read_text())  # where the killed run stood
    assert 0 < saved["done"] < 100_000 or first.returncode == 0
    second = _launch(tmp_path, method, bits, "resume", tmp_path / "resumed.npz")
    for proc in (second, ref):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["steps"][-1] == 100_000


def _setup():
    g = sj.graphs.ring(6)
    problem, data, x0, y0 = make_quadratic(6, 2, 2, 1, seed=0)
    return sj.slam(problem, g), sj.SLAMParams.create(20.0, 20.0, 0.5), data, x0, y0


def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(tmp_path):
    alg, p, data, x0, y0 = _setup()
    kw = dict(num_steps=200, log_every=50, progress=False, checkpoint=tmp_path)
    sj.run(alg, p, data, x0, y0, **kw)
    with pytest.raises(ckpt.CheckpointMismatch, match="params differs"):
        sj.run(alg, p._replace(rho=p.rho * 0 + 0.4), data, x0, y0, resume=True, **kw)
    with pytest.raises(ckpt.CheckpointMismatch, match="settings"):
        sj.run(alg, p, data, x0, y0, resume=True, **{**kw, "num_steps": 400})
    done = sj.run(alg, p, data, x0, y0, resume=True, **kw)  # finished: nothing left to run
    full = sj.run(alg, p, data, x0, y0, num_steps=200, log_every=50, progress=False)
    np.testing.assert_array_equal(np.asarray(done.state.x), np.asarray(full.state.x))
    (tmp_path / "checkpoint.npz").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointMismatch, match="does not match"):
        sj.run(alg, p, data, x0, y0, resume=True, **kw)


def test_first_sigint_stops_at_a_chunk_boundary_with_partial_results(tmp_path):
    alg, p, data, x0, y0 = _setup()

    def interrupt_once(steps, history):
        if steps[-1] == 100:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: only a flag is set

    with pytest.raises(ckpt.Interrupted) as info:
        sj.run(alg, p, data, x0, y0, num_steps=400, log_every=50, logs_per_chunk=1,
               progress=False, checkpoint=tmp_path, callback=interrupt_once)
    part = info.value.result
    assert info.value.checkpoint == tmp_path and 100 <= part.steps[-1] < 400
    assert "resume from" in str(info.value)
    res = sj.run(alg, p, data, x0, y0, num_steps=400, log_every=50, logs_per_chunk=1,
                 progress=False, checkpoint=tmp_path, resume=True)
    full = sj.run(alg, p, data, x0, y0, num_steps=400, log_every=50, progress=False)
    np.testing.assert_array_equal(np.asarray(res.state.x), np.asarray(full.state.x))
    for k in full.history:
        np.testing.assert_array_equal(res.history[k], full.history[k])
    # the handlers are restored: a later SIGINT is an ordinary KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


RL_WORKER = textwrap.dedent("""
    import sys, numpy as np, jax
    from slamjax import rl
    directory, out = sys.argv[1:3]
    r = rl.run("slam_ac", seeds=2, num_updates=200, chunk=2, progress=False, num_envs=4,
               max_steps=10, iters_per_round=4, checkpoint=directory, resume=True)
    np.savez(out, **{k: np.asarray(v) for k, v in r.metrics.items()},
             **{f"s{i}": np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(
                 v.dtype, jax.dtypes.prng_key) else v)
                for i, v in enumerate(jax.tree.leaves(r.state))})
""")


def test_an_rl_trainer_killed_and_resumed_is_bit_identical(tmp_path):
    def launch(directory, out):
        return subprocess.Popen([sys.executable, "-c", RL_WORKER, str(directory), str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ref = launch(tmp_path / "ref", tmp_path / "full.npz")   # uninterrupted (fresh directory)
    first = launch(tmp_path / "ck", tmp_path / "never.npz")
    marker = tmp_path / "ck" / "checkpoint.json"
    t0 = time.time()
    while not marker.exists() and first.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert marker.exists(), first.communicate()[1][-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads(marker.read_text())["done"] < 200
    second = launch(tmp_path / "ck", tmp_path / "resumed.npz")
    for proc in (second, ref):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files) and "return" in a.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
