"""slamjax.distributed: the sharded run on jax.distributed, with real processes.

Two processes on 127.0.0.1 (gloo CPU collectives), each with 2 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``): 4 devices, agents split 1024 per
device. Every test picks a free port at run time, writes only under its own ``tmp_path``,
bounds every process by a timeout and kills what is left in ``finally`` (safe under
pytest-xdist). The single-process references are computed in the test process itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import slamjax as sj
from slamjax import distributed as dist
from slamjax.problems.quadratic import make_quadratic

N = 4096
STEPS = 200
# the oracle's noise σ per graph of the CI test: exact gradients (the stochastic oracle's
# per-agent key streams compile ~3x slower; that they survive the split across processes is
# checked by the slow tests: D-SOBA and SLAM's gradient with σ = 0.3)
NOISE = {"ring": 0.0, "small_world": 0.0}
PROC_TIMEOUT = 240  # seconds, per multi-process launch

# every process runs this; process 0 writes the gathered results (once)
WORKER = textwrap.dedent("""
    import json, sys, time
    from slamjax import distributed as dist
    launch = dist.initialize(timeout=60)
    import jax, jax.numpy as jnp, numpy as np
    import slamjax as sj
    from slamjax import sharding as sh
    from slamjax.problems.quadratic import make_quadratic

    out, n, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mesh = dist.global_mesh()
    report = {"process": jax.process_index(), "processes": jax.process_count(),
              "devices": mesh.size, "local_devices": jax.local_device_count()}
    rows = dist.process_rows(n, mesh)
    report["rows"] = [rows.start, rows.stop]
    arrays = {}
    graphs = {"ring": sj.graphs.ring(n), "small_world": sj.graphs.small_world(n, seed=1)}
    params = sj.SLAMParams.create(30.0, 30.0, 0.5, 1.0)
    noise = json.loads(sys.argv[4])
    for name, g in graphs.items():
        problem, data, x0, y0 = make_quadratic(n, 3, 4, 2, seed=0, noise=noise[name])
        # each process feeds only its own agents' rows
        x0, y0, data = dist.from_local(mesh, n, *dist.local_rows((x0, y0, data), n, mesh))
        report[name + "_local_shards"] = [list(s.index[0].indices(n)[:2])
                                          for s in x0.addressable_shards]
        pg = sh.partition_graph(g, mesh)
        alg = sj.slam(problem, pg, sj.SLAMConfig())
        t = time.perf_counter()
        prog, args = dist.compile_solve(alg, params, data, x0, y0, jax.random.key(0), steps,
                                        mesh=mesh)
        t1 = time.perf_counter()
        state = jax.block_until_ready(prog(*args))
        report[name + "_seconds"] = {"compile": t1 - t, "run": time.perf_counter() - t1}
        full = dist.gather({"x": state.x, "y": state.y, "u_x": state.u_x, "u_y": state.u_y})
        arrays.update({f"{name}/{k}": v for k, v in full.items()})
        # bytes moved by one step (the scan body's collectives), read from the compiled
        # program, and the formula
        hlo = prog.as_text()
        proc = [d.process_index for d in mesh.devices.flat]
        report[name + "_bytes"] = {"measured": dist.collective_bytes(hlo, proc),
                                   "formula": dist.predicted_bytes(pg, 3 + 2 * 4),
                                   "scheme": pg.scheme, "halo": pg.halo}
    # n not divisible by the 4 devices: refused with a clear error
    try:
        dist.process_rows(n + 2, mesh)
        report["not_divisible"] = None
    except ValueError as e:
        report["not_divisible"] = str(e)
    if dist.is_main():
        np.savez(out + ".npz", **arrays)
        with open(out + ".json", "w") as fh:
            json.dump(report, fh)
    print("REPORT" + json.dumps(report), flush=True)
""")


# a peer (D-SOBA: gossip with Metropolis weights) on both schemes (ring and torus: halo;
# small world: partitioned edges), and jax.grad through the sharded solve
PEER_STEPS, GRAD_STEPS = 50, 20
WORKER_PEER_GRAD = textwrap.dedent("""
    import json, sys
    from slamjax import distributed as dist
    dist.initialize(timeout=60)
    import jax, jax.numpy as jnp, numpy as np
    import slamjax as sj
    from slamjax import sharding as sh
    from slamjax.algorithm import merge_static, split_static
    from slamjax.problems.quadratic import make_quadratic

    out, n, peer_steps, grad_steps = sys.argv[1], *map(int, sys.argv[2:5])
    mesh = dist.global_mesh()
    arrays, report = {}, {}
    graphs = {"ring": sj.graphs.ring(n), "small_world": sj.graphs.small_world(n, seed=1),
              "torus": sj.graphs.torus(64, n // 64)}
    for name, g in graphs.items():
        problem, data, x0, y0 = make_quadratic(n, 3, 4, 2, seed=0, noise=0.3)
        x0, y0, data = dist.from_local(mesh, n, *dist.local_rows((x0, y0, data), n, mesh))
        pg = sh.partition_graph(g, mesh)
        alg = sj.make_algorithm("dsoba", problem, pg)
        params = sj.REGISTRY["dsoba"].default_params()
        prog, args = dist.compile_solve(alg, params, data, x0, y0, jax.random.key(0),
                                        peer_steps, mesh=mesh)
        state = prog(*args)
        report[name + "_ops"] = dist.collective_bytes(
            prog.as_text(), [d.process_index for d in mesh.devices.flat])["ops"]
        arrays.update({f"dsoba/{name}/{k}": v for k, v in
                       dist.gather({"x": state.x, "y": state.y, "z": state.z}).items()})
    # d(mean_i |x_i|^2 after T SLAM steps) / d(alpha, beta, rho, gamma) on the small world
    pg = sh.partition_graph(graphs["small_world"], mesh)
    slam = sj.slam(problem, pg, sj.SLAMConfig())
    dyn, static = split_static(slam)

    def loss(p, dyn, data, x0, y0):
        st = sj.solve(merge_static(dyn, static), p, data, x0, y0, jax.random.key(0),
                      grad_steps, check=False)
        return jnp.mean(jnp.sum(st.x ** 2, axis=-1))

    p = sh.replicate(sj.SLAMParams.create(30.0, 30.0, 0.5, 1.0), mesh)
    val, grad = jax.jit(jax.value_and_grad(loss))(p, dyn, data, x0, y0)
    report["loss"] = float(val)
    report["grad"] = [float(v) for v in grad]
    if dist.is_main():
        np.savez(out + ".npz", **arrays)
    print("REPORT" + json.dumps(report), flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argvs, envs, timeout=PROC_TIMEOUT):
    """Start one process per argv (with its env), wait for all (bounded), always kill what is
    left. Returns [(returncode, stdout, stderr, seconds)]."""
    procs, t0 = [], time.monotonic()
    try:
        for argv, env in zip(argvs, envs):
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        out = []
        for p in procs:
            left = max(1.0, timeout - (time.monotonic() - t0))
            o, e = p.communicate(timeout=left)
            out.append((p.returncode, o, e, time.monotonic() - t0))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def proc_env(devices=2, **extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def two_process_envs(port, num=2):
    return [proc_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=num,
                     JAX_PROCESS_ID=k) for k in range(2)]


@pytest.fixture(scope="module")
def peer_and_grad(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist_peer") / "result")
    res = launch([[sys.executable, "-c", WORKER_PEER_GRAD, out, str(N), str(PEER_STEPS),
                   str(GRAD_STEPS)]] * 2, two_process_envs(free_port()))
    for rc, o, e, _ in res:
        assert rc == 0, e[-3000:]
    reports = [json.loads([ln for ln in o.splitlines() if ln.startswith("REPORT")][-1][6:])
               for _, o, _, _ in res]
    return np.load(out + ".npz"), reports


def _reference(name):
    g = {"ring": sj.graphs.ring(N), "small_world": sj.graphs.small_world(N, seed=1)}[name]
    problem, data, x0, y0 = make_quadratic(N, 3, 4, 2, seed=0, noise=NOISE[name])
    params = sj.SLAMParams.create(30.0, 30.0, 0.5, 1.0)
    return _solve_one_device(sj.slam(problem, g, sj.SLAMConfig()), params, data, x0, y0, STEPS)


def _solve_one_device(alg, params, data, x0, y0, steps):
    """slamjax.solve under one jit (no eager checks: the reference only)."""
    from slamjax.algorithm import merge_static, split_static

    dyn, static = split_static(alg)
    fn = jax.jit(lambda dyn, p, d, x, y: sj.solve(merge_static(dyn, static), p, d, x, y,
                                                  jax.random.key(0), steps, check=False))
    return fn(dyn, params, data, x0, y0)


def test_two_processes_match_one_process(tmp_path):
    """The must-show run: 2 processes × 2 devices, n = 4096, 200 SLAM steps on a ring (halo
    exchange) and a small world (partitioned edges) equal one process to ≤ 1e-6 relative;
    bytes per step from the compiled program equal the formula; n not divisible is refused.
    One test function, so that the processes start once even under pytest-xdist."""
    out = str(tmp_path / "result")
    res = launch([[sys.executable, "-c", WORKER, out, str(N), str(STEPS), json.dumps(NOISE)]]
                 * 2, two_process_envs(free_port()))
    for rc, o, e, _ in res:
        assert rc == 0, e[-3000:]
    reports = [json.loads([ln for ln in o.splitlines() if ln.startswith("REPORT")][-1][6:])
               for _, o, _, _ in res]

    # the launch: 2 processes, 4 devices; each process owns one contiguous half and holds
    # only its own rows on its devices
    assert [r["process"] for r in reports] == [0, 1]
    for r in reports:
        assert r["processes"] == 2 and r["devices"] == 4 and r["local_devices"] == 2
    assert reports[0]["rows"] == [0, N // 2] and reports[1]["rows"] == [N // 2, N]
    assert reports[0]["ring_local_shards"] == [[0, 1024], [1024, 2048]]
    assert reports[1]["ring_local_shards"] == [[2048, 3072], [3072, 4096]]
    # written once, by process 0
    assert os.path.exists(out + ".npz")
    assert json.load(open(out + ".json"))["process"] == 0

    # the numbers equal one process (all of x, y and the duals)
    got = np.load(out + ".npz")
    x_init = make_quadratic(N, 3, 4, 2, seed=0)[2]
    for name in ("ring", "small_world"):
        ref = _reference(name)
        for field in ("x", "y", "u_x", "u_y"):
            a, b = got[f"{name}/{field}"], np.asarray(getattr(ref, field))
            assert a.shape == b.shape == ((N, 3) if field in ("x", "u_x") else (N, 2, 4))
            rel = np.max(np.abs(a - b)) / np.max(np.abs(b))
            assert rel <= 1e-6, (name, field, rel)
        # 200 steps moved the iterates (a run that did nothing could not match by accident)
        assert np.max(np.abs(got[f"{name}/x"] - x_init)) > 0.1

    # bytes moved per step, from the compiled program, equal the formula
    for name, scheme in (("ring", "halo"), ("small_world", "edges")):
        b = reports[0][name + "_bytes"]
        assert b["scheme"] == scheme
        m, f = b["measured"], b["formula"]
        assert m["total"] == f["total"] > 0, b
        assert m["inter_process"] == f["inter_process"] > 0, b
        if scheme == "halo":   # 2 products (x, y) × 2 directions × 4 devices, one row each
            assert f["total"] == 2 * 4 * (3 + 2 * 4) * 4
            assert f["inter_process"] == 2 * 2 * (3 + 2 * 4) * 4
        else:                  # the all-to-all pads every pair to the largest halo
            assert f["useful"] < f["total"]

    # n not divisible by the 4 devices: refused, with the reason and a fix
    msg = reports[0]["not_divisible"]
    assert msg and "refused" in msg and "4 devices" in msg and f"n={N + 4}" in msg


@pytest.mark.slow
@pytest.mark.parametrize("name,collective", [("ring", "collective-permute"),
                                             ("small_world", "all-to-all"),
                                             ("torus", "collective-permute")])
def test_peer_two_processes_match_one_process(peer_and_grad, name, collective):
    got, reports = peer_and_grad
    g = {"ring": sj.graphs.ring(N), "small_world": sj.graphs.small_world(N, seed=1),
         "torus": sj.graphs.torus(64, N // 64)}[name]
    problem, data, x0, y0 = make_quadratic(N, 3, 4, 2, seed=0, noise=0.3)
    alg = sj.make_algorithm("dsoba", problem, g)
    params = sj.REGISTRY["dsoba"].default_params()
    ref = _solve_one_device(alg, params, data, x0, y0, PEER_STEPS)
    for field in ("x", "y", "z"):
        a, b = got[f"dsoba/{name}/{field}"], np.asarray(getattr(ref, field))
        rel = np.max(np.abs(a - b)) / np.max(np.abs(b))
        assert rel <= 1e-6, (name, field, rel)
    # gossip ran on the partitioned graph's own collectives (no all-gather of the state)
    ops = reports[0][name + "_ops"]
    assert ops.get(collective, 0) >= 1 and "all-gather" not in ops, ops


@pytest.mark.slow
def test_grad_through_the_distributed_solve(peer_and_grad):
    _, reports = peer_and_grad
    g = sj.graphs.small_world(N, seed=1)
    problem, data, x0, y0 = make_quadratic(N, 3, 4, 2, seed=0, noise=0.3)
    alg = sj.slam(problem, g, sj.SLAMConfig())

    def loss(p):
        st = sj.solve(alg, p, data, x0, y0, jax.random.key(0), GRAD_STEPS, check=False)
        return jax.numpy.mean(jax.numpy.sum(st.x ** 2, axis=-1))

    val, grad = jax.jit(jax.value_and_grad(loss))(sj.SLAMParams.create(30.0, 30.0, 0.5, 1.0))
    for r in reports:   # both processes hold the same (replicated) numbers
        np.testing.assert_allclose(r["loss"], float(val), rtol=1e-5)
        np.testing.assert_allclose(r["grad"], [float(v) for v in grad], rtol=1e-4, atol=1e-7)
    assert max(abs(float(v)) for v in grad) > 0


ERROR_CASES = {
    # process 1 of 2, nobody listens at the coordinator's port
    "unreachable": ("from slamjax import distributed as d\n"
                    "d.initialize('127.0.0.1:{port}', 2, 1, timeout=3)\n", [()]),
    # process 0 of 2, process 1 never starts
    "missing": ("from slamjax import distributed as d\n"
                "d.initialize('127.0.0.1:{port}', 2, 0, timeout=3)\nprint('joined')\n", [()]),
    # process 0 says 2 processes, process 1 says 3
    "mismatch": ("import sys\nfrom slamjax import distributed as d\n"
                 "d.initialize('127.0.0.1:{port}', int(sys.argv[1]), int(sys.argv[2]), "
                 "timeout=30)\nprint('joined')\n", [("2", "0"), ("3", "1")]),
    # both join, but were given different problem settings (n)
    "settings": ("import sys\nfrom slamjax import distributed as d\n"
                 "d.initialize('127.0.0.1:{port}', 2, int(sys.argv[1]), timeout=30)\n"
                 "d.check_consistent({'n': int(sys.argv[2]), 'graph': 'ring'})\n"
                 "print('consistent')\n", [("0", "64"), ("1", "128")]),
}


def test_startup_errors_are_clear_and_bounded():
    """Unreachable coordinator, a process that never starts, a process told another count,
    processes given different settings: each a clear message within a bounded time
    (launched together: they mostly wait)."""
    procs, out = {}, {}
    t0 = time.monotonic()
    try:
        for name, (code, argvs) in ERROR_CASES.items():
            code = code.replace("{port}", str(free_port()))
            procs[name] = [subprocess.Popen([sys.executable, "-c", code, *a], env=proc_env(1),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True) for a in argvs]
        for name, ps in procs.items():
            out[name] = []
            for p in ps:
                o, e = p.communicate(timeout=max(1.0, 120 - (time.monotonic() - t0)))
                out[name].append((p.returncode, o, e, time.monotonic() - t0))
    finally:
        for ps in procs.values():
            for p in ps:
                if p.poll() is None:
                    p.kill()
                    p.communicate()

    # process 1 and no coordinator: a Python exception after the 3 s timeout
    (rc, o, e, secs), = out["unreachable"]
    assert rc != 0
    assert "CoordinatorUnreachable" in e and "did not accept a connection within 3 s" in e, \
        e[-2000:]
    assert secs < 60
    # process 0 waits for a process that never comes: the watchdog's message and exit code
    (rc, o, e, secs), = out["missing"]
    assert rc == dist.EXIT_JOIN_TIMEOUT, (rc, e[-2000:])
    assert "not all processes joined" in e and "Expected 2 processes" in e
    assert "joined" not in o
    assert secs < 60
    # a process started with another count than the coordinator's
    rc1, _, e1, _ = out["mismatch"][1]
    assert rc1 != 0 and "process count mismatch" in e1, e1[-2000:]
    assert "num_processes=3" in e1 and "runs 2" in e1
    # processes given different settings: both refuse, naming the process that differs
    for rc, o, e, _ in out["settings"]:
        assert rc != 0 and "processes disagree on the settings" in e, e[-2000:]
        assert "process(es) [1] differ from process 0" in e and "consistent" not in o


def test_resolve_launch_settings():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:12355", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert dist.resolve(env=env) == dist.Launch("10.0.0.1:12355", 4, 3)
    assert dist.resolve(process_id=1, env=env).process_id == 1   # arguments win
    assert dist.resolve(env={}) == dist.Launch(None, None, None)  # cluster auto-detection
    assert dist.resolve(num_processes=1, env={}) == dist.Launch(None, 1, 0)  # one process
    with pytest.raises(ValueError, match="missing --num-processes"):
        dist.resolve("h:1", None, 0, env={})
    with pytest.raises(ValueError, match="outside 0..3"):
        dist.resolve("h:1", 4, 4, env={})
    with pytest.raises(ValueError, match="host:port"):
        dist.resolve("h", 2, 0, env={})
    with pytest.raises(ValueError, match="not an integer"):
        dist.resolve(env={**env, "JAX_PROCESS_ID": "x"})


@pytest.mark.slow
def test_cli_distributed_matches_cli(tmp_path):
    """`slamjax run --distributed` on 2 processes × 2 devices gives the metrics of the
    single-process `slamjax run`; process 0 alone prints the table and writes the JSON."""
    common = ["run", "--n", "64", "--steps", "20", "--log-every", "10", "--graph",
              "small_world", "--variant", "slam", "--no-plot", "--no-progress"]
    port = free_port()
    argvs = [[sys.executable, "-m", "slamjax.cli", *common, "--out", str(tmp_path / "dist"),
              "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
              "--process-id", str(k)] for k in range(2)]
    res = launch(argvs, [proc_env(2), proc_env(2)])
    for rc, o, e, _ in res:
        assert rc == 0, e[-3000:]
    assert "final metrics" in res[0][1] and "final metrics" not in res[1][1]
    assert "2 process(es), 4 devices" in res[0][1]
    (rc, o, e, _), = launch([[sys.executable, "-m", "slamjax.cli", *common, "--out",
                              str(tmp_path / "one")]], [proc_env(1)])
    assert rc == 0, e[-3000:]
    d = json.load(open(tmp_path / "dist" / "main.json"))
    one = json.load(open(tmp_path / "one" / "main.json"))
    assert d["distributed"]["processes"] == 2 and d["distributed"]["scheme"] == "edges"
    fd, f1 = d["variants"]["slam"]["final"], one["variants"]["slam"]["final"]
    for k in ("grad_F_sq", "consensus_x", "consensus_y", "ll_error"):
        assert abs(fd[k] - f1[k]) <= 1e-5 * abs(f1[k]) + 1e-9, (k, fd[k], f1[k])
    assert sorted(os.listdir(tmp_path / "dist")) == ["main.json"]
