"""Bad input (issue 16): every case fails with a message naming the argument and a valid
alternative, before any compute or compile where the input is concrete, and nothing already
written is lost."""

import json
import os
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import slamjax as sj
from slamjax import graphs
from slamjax.cli import REPRODUCE, SCRIPTS
from slamjax.cli import main as cli_main
from slamjax.problems.quadratic import make_quadratic
from slamjax.checks import CurvatureWarning, checked
from slamjax.driver import compiled_programs
from slamjax.io import check_output_dir, check_output_file, write_text

N = 8


@pytest.fixture(scope="module")
def setup():
    problem, data, x0, y0 = make_quadratic(N, 3, 2, seed=0)  # x0 (8, 3), y0 (8, 1, 2)
    return graphs.ring(N), problem, data, x0, y0


PARAMS = sj.SLAMParams.create(20.0, 20.0, 1.0, 1.0)


def _solve(setup, **kw):
    g, problem, data, x0, y0 = setup
    a = dict(params=PARAMS, data=data, x0=x0, y0=y0, key=jax.random.key(0))
    a.update(kw)
    return sj.solve(sj.slam(problem, g), a["params"], a["data"], a["x0"], a["y0"], a["key"], 10)


def _run(setup, **kw):
    g, problem, data, x0, y0 = setup
    a = dict(params=PARAMS, data=data, x0=x0, y0=y0)
    a.update(kw)
    return sj.run(sj.slam(problem, g), a["params"], a["data"], a["x0"], a["y0"],
                  num_steps=20, log_every=10, progress=False)


def _unwritable_dir():
    """A directory this process cannot create files in (root ignores permission bits, so
    look for a read-only file system); None if there is none."""
    for cand in ("/proc", "/sys"):
        try:
            with open(os.path.join(cand, "slamjax-probe"), "w"):
                pass
        except OSError:
            return Path(cand)
    return None


# ----------------------------------------------------------------------------------------
# item 1: output places checked before any compute; atomic writes
# ----------------------------------------------------------------------------------------
def test_output_dir_and_file_checks(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("earlier results")
    with pytest.raises(ValueError, match=r"--out .*afile is an existing file, not a directory: "
                                         r"pass a directory \(e.g. --out .*results\)"):
        check_output_dir(afile)
    with pytest.raises(ValueError, match=r"--out .*afile/sub/deeper: .*afile is a file, so "
                                         r"nothing can be created under it; pass a path under "
                                         r"a directory"):
        check_output_dir(afile / "sub" / "deeper")
    with pytest.raises(ValueError, match=r"path .* is a directory, but it names an output file: "
                                         r"pass a file path \(e.g. path .*results.json\)"):
        check_output_file(tmp_path, "path")
    with pytest.raises(ValueError, match=r"afile is a file"):
        check_output_file(afile / "x.json")
    assert check_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert check_output_file(afile) == afile  # an existing file is replaced, not refused
    assert afile.read_text() == "earlier results"
    ro = _unwritable_dir()
    if ro is not None:
        with pytest.raises(ValueError, match=r"--out .*: cannot write in .*; pass a writable "
                                             r"place \(e.g. --out .*slamjax-results\)"):
            check_output_dir(ro / "results")


def test_failed_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    target = tmp_path / "main.json"
    target.write_text("earlier results")

    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text(target, "new results")
    assert target.read_text() == "earlier results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.json"]  # no temporary left


def test_save_json_bad_path(setup, tmp_path):
    res = _run(setup)
    with pytest.raises(ValueError, match=r"save_json: path .* is a directory.*pass a file path"):
        res.save_json(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"save_json: path .*f/r.json: .*f is a file"):
        res.save_json(tmp_path / "f" / "r.json")
    out = res.save_json(tmp_path / "ok" / "r.json", note=1)
    saved = json.loads(out.read_text())
    assert saved["note"] == 1 and saved["final_step"] == 20 and saved["num_steps"] == 20


@pytest.fixture
def no_compute(monkeypatch):
    """Any compute (a run, an experiment script) fails the test."""
    def boom(*a, **k):
        raise AssertionError("computed before checking the output place")

    monkeypatch.setattr(sj, "run", boom)
    monkeypatch.setattr("runpy.run_path", boom)


def test_cli_run_bad_out_fails_before_compute(tmp_path, capsys, no_compute):
    afile = tmp_path / "results.json"
    afile.write_text("earlier results")
    assert cli_main(["run", "--no-progress", "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"slamjax: error: --out .*results.json is an existing file, not a "
                     r"directory: pass a directory", err), err
    assert cli_main(["run", "--no-progress", "--out", str(afile / "sub")]) == 2
    assert "is a file, so nothing can be created under it" in capsys.readouterr().err
    (tmp_path / "main.json").mkdir()  # the JSON's own name taken by a directory
    assert cli_main(["run", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "main.json is a directory, but it names an output file" in capsys.readouterr().err
    assert afile.read_text() == "earlier results"


@pytest.mark.parametrize("cmd", [[c] for c in SCRIPTS] + [["reproduce", r] for r in REPRODUCE])
def test_cli_scripts_bad_out_fail_before_running(cmd, tmp_path, capsys, no_compute):
    afile = tmp_path / "afile"
    afile.write_text("earlier results")
    script = SCRIPTS.get(cmd[0]) or REPRODUCE[cmd[-1]][0]
    if script in ("bench_grad.py", "tune_by_gradient.py"):  # --out names a JSON file
        bad, msg = str(afile / "out.json"), "afile is a file, so nothing can be created"
    else:
        bad, msg = str(afile), "afile is an existing file, not a directory: pass a directory"
    assert cli_main(cmd + ["--out", bad]) == 2
    assert msg in capsys.readouterr().err
    assert cli_main(cmd + [f"--out={afile}/x/y"]) == 2  # the --out=X spelling too
    assert "afile is a file" in capsys.readouterr().err
    assert afile.read_text() == "earlier results"


# ----------------------------------------------------------------------------------------
# item 2: NaN/Inf in data, x0, y0
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["run", "solve"])
@pytest.mark.parametrize("where,msg", [
    ("x0", r"x0 has 1 non-finite entry \(first: x0\[2, 1\] = inf\).*Pass finite values "
           r"\(e.g. jnp.nan_to_num\(x0\)"),
    ("y0", r"y0 has 1 non-finite entry \(first: y0\[0, 0, 1\] = nan\)"),
    ("data", r"data.agents\['p'\] has 1 non-finite entry \(first: data.agents\['p'\]\[3, 0\] "
             r"= nan\)"),
])
def test_nonfinite_inputs_fail_before_compile(setup, entry, where, msg):
    g, problem, data, x0, y0 = setup
    bad = {"x0": dict(x0=x0.at[2, 1].set(jnp.inf)), "y0": dict(y0=y0.at[0, 0, 1].set(jnp.nan)),
           "data": dict(data=data._replace(agents={**data.agents,
                                                   "p": data.agents["p"].at[3, 0].set(jnp.nan)}))}
    before = compiled_programs()
    with pytest.raises(ValueError, match=msg):
        (_run if entry == "run" else _solve)(setup, **bad[where])
    assert compiled_programs() == before


def test_lane_diverging_in_first_chunk_keeps_a_finite_state(setup):
    with pytest.warns(sj.DivergenceWarning, match=r"last finite state \(step 0\)"):
        res = _run(setup, params=sj.SLAMParams.create(0.02, 0.02, 1.0, 1.0))
    assert res.diverged_at == 10 and list(res.steps) == [0]
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(res.state))


# ----------------------------------------------------------------------------------------
# item 3: checks under jit (checkify)
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("vals,msg", [
    ((20.0, 20.0, -1.0, 1.0), r"SLAMParams.rho=-1.0 must be finite and > 0"),
    ((0.0, 20.0, 1.0, 1.0), r"SLAMParams.alpha=0.0 must be finite and > 0"),
    ((20.0, 20.0, 1.0, float("nan")), r"SLAMParams.gamma=nan must be finite and > 0"),
])
def test_checked_solve_under_jit(setup, vals, msg):
    g, problem, data, x0, y0 = setup
    alg = sj.slam(problem, g)
    fn = jax.jit(checked(sj.solve), static_argnames="num_steps")
    err, _ = fn(alg, sj.SLAMParams.create(*vals), data, x0, y0, jax.random.key(0), num_steps=10)
    with pytest.raises(Exception, match=msg):
        err.throw()
    # the same parameters go through plain jit without a word (what checked() is for)
    plain = jax.jit(sj.solve, static_argnames="num_steps")
    plain(alg, sj.SLAMParams.create(*vals), data, x0, y0, jax.random.key(0), num_steps=10)


def test_checked_solve_inputs_and_divergence(setup):
    g, problem, data, x0, y0 = setup
    alg = sj.slam(problem, g)
    fn = jax.jit(checked(sj.solve), static_argnames="num_steps")
    err, state = fn(alg, PARAMS, data, x0, y0, jax.random.key(0), num_steps=10)
    err.throw()  # valid input: no error, and the numbers of the unchecked solve
    ref = sj.solve(alg, PARAMS, data, x0, y0, jax.random.key(0), 10)
    np.testing.assert_array_equal(np.asarray(state.x), np.asarray(ref.x))
    err, _ = fn(alg, PARAMS, data, x0, y0.at[1, 0, 0].set(jnp.inf), jax.random.key(0),
                num_steps=10)
    with pytest.raises(Exception, match=r"y0 has NaN/Inf entries; pass finite values"):
        err.throw()
    err, _ = fn(alg, sj.SLAMParams.create(0.3, 0.3, 1.0, 1.0), data, x0, y0, jax.random.key(0),
                num_steps=50)
    with pytest.raises(Exception, match=r"state after 50 steps has NaN/Inf .*raise alpha/beta"):
        err.throw()
    # explicit form: check="traced" inside checkify
    f2 = jax.jit(checkify.checkify(lambda p: sj.solve(alg, p, data, x0, y0, 0, 5,
                                                      check="traced")))
    err, _ = f2(sj.SLAMParams.create(20.0, -2.0, 1.0, 1.0))
    with pytest.raises(Exception, match=r"SLAMParams.beta=-2.0 must be finite and > 0"):
        err.throw()
    with pytest.raises(TypeError, match=r"wrap the function before jit: use jax.jit\("):
        checked(jax.jit(sj.solve, static_argnames="num_steps"))
    with pytest.raises(ValueError, match="check must be True, False or 'traced'"):
        sj.solve(alg, PARAMS, data, x0, y0, 0, 5, check="yes")


# ----------------------------------------------------------------------------------------
# item 4: half precision, key forms, wrong per-agent shapes
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["run", "solve"])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("where", ["x0", "y0", "data"])
def test_half_precision_is_refused_with_the_fix(setup, entry, dtype, where):
    g, problem, data, x0, y0 = setup
    arg = {"x0": x0, "y0": y0, "data": data}[where]
    half = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                        else a, arg)
    name = {"x0": "x0", "y0": "y0", "data": r"data\.\w+\['\w+'\]"}[where]
    with pytest.raises(ValueError, match=rf"{name} has dtype {jnp.dtype(dtype).name}: half "
                                         rf"precision is not supported.*Pass {name}"
                                         r"\.astype\(jnp\.float32\)"):
        (_run if entry == "run" else _solve)(setup, **{where: half})


def test_key_forms_agree_in_solve_and_diff(setup):
    g, problem, data, x0, y0 = setup
    ref = np.asarray(_solve(setup, key=jax.random.key(3)).x)
    for key in (3, np.int64(3), jax.random.PRNGKey(3), jnp.asarray(3)):
        np.testing.assert_array_equal(np.asarray(_solve(setup, key=key).x), ref)
    jitted = jax.jit(sj.solve, static_argnames="num_steps")
    alg = sj.slam(problem, g)
    np.testing.assert_array_equal(
        np.asarray(jitted(alg, PARAMS, data, x0, y0, jax.random.PRNGKey(3), num_steps=10).x), ref)
    loss = sj.diff.final_loss_fn(alg, 10, lambda s, d: jnp.sum(s.x ** 2))
    vals = {float(loss(PARAMS, data, x0, y0, k)) for k in (3, jax.random.PRNGKey(3),
                                                           jax.random.key(3))}
    assert len(vals) == 1 and np.isclose(vals.pop(), float(jnp.sum(jnp.asarray(ref) ** 2)))
    with pytest.raises(TypeError, match=r"key must be an int seed, jax.random.key\(seed\) or "
                                        r"jax.random.PRNGKey\(seed\); got str"):
        _solve(setup, key="0")
    with pytest.raises(TypeError, match=r"got ndarray of shape \(3,\) and dtype float32"):
        _solve(setup, key=np.zeros(3, np.float32))


@pytest.mark.parametrize("entry", ["run", "solve"])
def test_wrong_per_agent_shapes_name_the_expected_one(setup, entry):
    g, problem, data, x0, y0 = setup
    fn = _run if entry == "run" else _solve
    before = compiled_programs()
    with pytest.raises(ValueError, match=r"y0\[0\] of shape \(2, 3\).*f and g evaluate with a "
                                         r"per-agent y0 of shape \(1, 2\): pass y0 of shape "
                                         r"\(8, 1, 2\)"):
        fn(setup, y0=jnp.zeros((N, 2, 3)))
    with pytest.raises(ValueError, match=r"x0\[0\] of shape \(4,\).*per-agent x0 of shape "
                                         r"\(3,\): pass x0 of shape \(8, 3\)"):
        fn(setup, x0=jnp.zeros((N, 4)))
    assert compiled_programs() == before


# ----------------------------------------------------------------------------------------
# item 5: the command line runs exactly --steps and names the step it shows
# ----------------------------------------------------------------------------------------
def test_cli_steps_not_a_multiple_is_refused(capsys, no_compute, tmp_path):
    assert cli_main(["run", "--steps", "30", "--log-every", "20", "--out", str(tmp_path)]) == 2
    assert ("--steps 30 is not a multiple of --log-every 20: pass --steps 40 or --steps 20, "
            "or --log-every 15 (a divisor of 30), or leave --log-every out"
            in capsys.readouterr().err)


def test_cli_runs_exactly_the_steps_asked_and_names_the_shown_step(tmp_path, capsys):
    common = ["--n", "8", "--dx", "3", "--dy", "2", "--variant", "slam", "--no-progress",
              "--no-plot", "--out", str(tmp_path)]
    assert cli_main(["run", "--steps", "30", "--name", "exact"] + common) == 0
    out = capsys.readouterr().out
    run = json.loads((tmp_path / "exact.json").read_text())["variants"]["slam"]
    assert run["steps"] == [0, 15, 30] and run["num_steps"] == 30 and run["final_step"] == 30
    assert re.search(r"T=30 requested.*\n.*step.*\n-+\nslam\s+30\s", out), out
    # diverges by step 20: the row shows step 0's values and says so
    with pytest.warns(sj.DivergenceWarning):
        rc = cli_main(["run", "--steps", "40", "--log-every", "20", "--beta", "1",
                       "--name", "div"] + common)
    assert rc == 1
    out = capsys.readouterr().out
    assert re.search(r"\nslam\s+0\s.*DIVERGED by step 20: values from step 0, the last finite "
                     r"log", out), out
    run = json.loads((tmp_path / "div.json").read_text())["variants"]["slam"]
    assert run["final_step"] == 0 and run["diverged_at"] == 20


# ----------------------------------------------------------------------------------------
# item 6: an indefinite LL Hessian is reported before the run
# ----------------------------------------------------------------------------------------
def _indefinite(data, shift):
    """``data`` with the shared LL Hessian shifted so that one eigenvalue is negative."""
    H = data.shared["H"]
    lam = np.linalg.eigvalsh(np.asarray(H[0]))
    H = H - (lam[0] + shift * (lam[1] - lam[0])) * jnp.eye(H.shape[-1])
    return data._replace(shared={**data.shared, "H": H})


@pytest.mark.parametrize("entry", ["run", "solve"])
def test_indefinite_ll_hessian_warns_before_the_run(entry):
    problem, data, x0, y0 = make_quadratic(N, 4, 6, seed=1)
    setup = (graphs.ring(N), problem, data, x0, y0)
    fn = _run if entry == "run" else _solve
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurvatureWarning)  # positive definite: no warning
        fn(setup)
    with pytest.warns(CurvatureWarning, match=r"∇²_yy g is not positive definite at "
                                              r"\(x0, y0\): conjugate gradients meets "
                                              r"curvature .* ≤ 0.*add a ridge \(mu/2\)·‖y‖² "
                                              r"to g"):
        fn(setup, data=_indefinite(data, 0.3))
