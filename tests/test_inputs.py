"""Bad input: clear errors before anything is compiled, and the command-line main job."""

import json
import math
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax import graphs
from slamjax.cli import main as cli_main
from slamjax.problems.quadratic import make_quadratic


@pytest.fixture(scope="module")
def setup():
    n = 8
    g = graphs.ring(n)
    problem, data, x0, y0 = make_quadratic(n, 3, 2, seed=0)
    return g, problem, data, x0, y0


def _run(setup, **kw):
    g, problem, data, x0, y0 = setup
    args = dict(graph=g, params=sj.SLAMParams.create(20.0, 20.0, 1.0, 1.0), data=data, x0=x0,
                y0=y0)
    args.update(kw)
    return sj.run(sj.slam(problem, args["graph"]), args["params"], args["data"], args["x0"],
                  args["y0"], num_steps=20, log_every=10, progress=False)


def test_agent_count_mismatch(setup):
    g, problem, data, x0, y0 = setup
    with pytest.raises(ValueError, match=r"x has shape \(7, 3\).*n=8"):
        _run(setup, x0=x0[:7])
    with pytest.raises(ValueError, match=r"y.*n=8"):
        _run(setup, y0=y0[:5])
    with pytest.raises(ValueError, match=r"data.agents\['b'\].*n=8"):
        _run(setup, data=data._replace(agents={**data.agents, "b": data.agents["b"][:4]}))
    with pytest.raises(ValueError, match="n=10"):
        _run(setup, graph=graphs.ring(10))


def test_wrong_pytree_shapes_and_types(setup):
    g, problem, data, x0, y0 = setup
    with pytest.raises(ValueError, match="agent axis first"):
        _run(setup, x0=jnp.asarray(1.0))
    with pytest.raises(ValueError, match="floating point"):
        _run(setup, x0=jnp.zeros((8, 3), jnp.int32))
    with pytest.raises(ValueError, match="empty pytree"):
        _run(setup, x0={})
    with pytest.raises(TypeError, match="ProblemData"):
        _run(setup, data={"b": 1})
    with pytest.raises(TypeError, match="Graph"):
        _run(setup, graph=np.eye(8))


@pytest.mark.parametrize("name", ["alpha", "beta", "rho", "gamma"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_bad_hyperparameters(setup, name, value):
    vals = dict(alpha=20.0, beta=20.0, rho=1.0, gamma=1.0)
    vals[name] = value
    with pytest.raises(ValueError, match=f"{name}=.*finite and > 0"):
        _run(setup, params=sj.SLAMParams.create(**vals))


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown SLAM variant"):
        sj.SLAMConfig(variant="slam_x")
    with pytest.raises(ValueError, match="solver must be"):
        sj.SLAMConfig(solver="cg")
    with pytest.raises(ValueError, match="unknown solver"):
        sj.make_solver("gmres")
    with pytest.raises(ValueError, match="unknown graph kind"):
        sj.make_graph("lattice", 9)
    assert sj.SLAMConfig(variant="SLAM-U").variant == "slam_u"


def test_stability_warning_states_bound_and_safe_value(setup):
    g = graphs.complete(8)  # λ_max = 8: with β = 5, γ = 1 the bound is ρ < 20/24
    _, problem, data, x0, y0 = setup
    with pytest.warns(sj.StabilityWarning) as rec:
        sj.validate(problem, sj.SLAMConfig(), g, sj.SLAMParams.create(50.0, 5.0, 1.0, 1.0),
                    sj.init(x0, y0), data)
    msg = str(rec[0].message)
    assert "lower-level" in msg and "rho < 0.8333" in msg and "beta >" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning inside the bound, none for SLAM-U's LL
        sj.validate(problem, sj.SLAMConfig(), g, sj.SLAMParams.create(50.0, 5.0, 0.8, 1.0),
                    sj.init(x0, y0), data)
        sj.validate(problem, sj.SLAMConfig(variant="slam_u"), g,
                    sj.SLAMParams.create(50.0, 5.0, 1.0, 1.0), sj.init(x0, y0), data)


def test_run_arguments(setup):
    g, problem, data, x0, y0 = setup
    # log_every need not divide num_steps: the last block is shorter (exactly 25 steps run)
    res = sj.run(sj.slam(problem, g), sj.SLAMParams.create(20.0, 20.0, 1.0), data, x0, y0,
                 num_steps=25, log_every=10, progress=False)
    assert list(res.steps) == [0, 10, 20, 25] and res.num_steps == 25
    with pytest.raises(ValueError, match="log_every"):
        sj.run(sj.slam(problem, g), sj.SLAMParams.create(20.0, 20.0, 1.0), data, x0, y0,
               num_steps=25, log_every=0, progress=False)
    with pytest.raises(TypeError, match="SLAMParams"):
        sj.run(sj.slam(problem, g), (20.0, 20.0, 1.0, 1.0), data, x0, y0, num_steps=20,
               log_every=10, progress=False)


def test_quadratic_generator_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dy must be"):
        make_quadratic(4, 3, 0)
    with pytest.raises(ValueError, match="noise"):
        make_quadratic(4, 3, 3, noise=-1.0)


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------
def test_cli_main_job_writes_json_and_png(tmp_path, capsys):
    rc = cli_main(["run", "--n", "8", "--steps", "60", "--log-every", "20", "--dx", "3",
                   "--dy", "3", "--no-progress", "--out", str(tmp_path), "--name", "smoke"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "final metrics" in out and "slam_u" in out
    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert set(payload["variants"]) == {"slam", "slam_l", "slam_u"}
    hist = payload["variants"]["slam"]["history"]
    assert set(hist) >= {"grad_F_sq", "consensus_x", "consensus_y", "ll_error"}
    assert len(hist["grad_F_sq"]) == 4  # steps 0, 20, 40, 60
    assert hist["grad_F_sq"][-1] < hist["grad_F_sq"][0]
    assert (tmp_path / "smoke.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv,msg", [
    (["run", "--graph", "hypercube"], "unknown graph kind"),
    (["run", "--solver", "lu"], "unknown solver"),
    (["run", "--variant", "slam_z"], "unknown SLAM variant"),
    (["run", "--alpha", "-1", "--steps", "20", "--log-every", "10"], "finite and > 0"),
])
def test_cli_bad_input_is_one_clear_line(argv, msg, capsys, tmp_path):
    rc = cli_main(argv + ["--no-progress", "--out", str(tmp_path)])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_cli_rejects_nonpositive_n():
    proc = subprocess.run([sys.executable, "-m", "slamjax.cli", "run", "--n", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "must be > 0" in proc.stderr
