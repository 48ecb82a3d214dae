"""The Algorithm contract, checked for every registered method (optax's tests over all
transforms are the model): jit, vmap over seeds, a hyperparameter grid in one program,
lax.scan, jax.grad of a final loss (against central differences), dtypes kept, and the
README's "add your own method" example executed as written."""

import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.problems.quadratic import make_quadratic

NAMES = sorted(sj.REGISTRY)
N = 6


def _setup(name, dtype=jnp.float32, noise=0.1):
    g = sj.graphs.ring(N)
    problem, data, x0, y0 = make_quadratic(N, 3, 2, 2, seed=1, noise=noise, dtype=dtype)
    alg = sj.make_algorithm(name, problem, g)
    params = sj.REGISTRY[name].default_params(dtype=dtype)
    return alg, params, data, x0, y0


def test_registry_has_slam_variants_and_a_peer():
    assert {"slam", "slam_l", "slam_u", "dsgd"} <= set(NAMES)
    with pytest.raises(ValueError, match="registered"):
        sj.make_algorithm("nope", None, sj.graphs.ring(4))


@pytest.mark.parametrize("name", NAMES)
def test_jit_step_equals_eager_and_info_is_scalars(name):
    alg, params, data, x0, y0 = _setup(name)
    state = alg.init(x0, y0, data)
    key = jax.random.key(3)
    s_eager, info = alg.step(key, state, params, data)
    s_jit, info_jit = jax.jit(alg.step)(key, state, params, data)
    chex.assert_trees_all_close(s_eager, s_jit, rtol=1e-5, atol=1e-6)
    assert isinstance(info, dict)
    for k, v in info.items():
        assert jnp.shape(v) == (), k
    chex.assert_trees_all_equal_structs(state, s_jit)  # the step keeps the state's structure


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_seeds_equals_single_runs(name):
    alg, params, data, x0, y0 = _setup(name)
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    run = lambda k: sj.solve(alg, params, data, x0, y0, k, 5, check=False)  # noqa: E731
    batched = jax.jit(jax.vmap(run))(keys)
    for i in range(3):
        one = jax.jit(run)(keys[i])
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], batched), one, rtol=1e-5,
                                    atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_scan_equals_python_loop(name):
    alg, params, data, x0, y0 = _setup(name)
    key = jax.random.key(0)
    state = alg.init(x0, y0, data)
    loop = state
    for t in range(4):
        loop, _ = alg.step(jax.random.fold_in(key, t), loop, params, data)
    scanned = sj.iterate(alg, params, data, state, key, 4)
    chex.assert_trees_all_close(loop, scanned, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_grid_times_seeds_in_one_program_equals_separate_runs(name):
    alg, params, data, x0, y0 = _setup(name)
    field = params._fields[0]
    base = float(getattr(params, field))
    grid = {field: [base, 1.25 * base]}
    res = sj.run(alg, params, data, x0, y0, num_steps=20, log_every=10, seeds=[0, 1],
                 grid=grid, progress=False)
    for key_ in res.history:
        assert res.history[key_].shape == (2, 2, 3), key_
    assert res.grid == [{field: base}, {field: 1.25 * base}]
    for gi, val in enumerate(grid[field]):
        for si, seed in enumerate([0, 1]):
            one = sj.run(alg, params._replace(**{field: val}), data, x0, y0, num_steps=20,
                         log_every=10, seed=seed, progress=False)
            for key_, h in one.history.items():
                np.testing.assert_allclose(res.history[key_][gi, si], h, rtol=2e-4,
                                           atol=1e-6, err_msg=f"{key_} {gi} {si}")


@pytest.mark.parametrize("name", NAMES)
def test_grad_of_final_loss_matches_finite_differences(x64, name):
    alg, params, data, x0, y0 = _setup(name, jnp.float64, noise=0.0)
    field = params._fields[0]
    loss = sj.diff.final_loss_fn(alg, 8, sj.diff.mean_f(alg_problem(alg)))

    def f(v):
        return loss(params._replace(**{field: v}), data, x0, y0, jax.random.key(0))

    v0 = jnp.asarray(getattr(params, field), jnp.float64)
    g = jax.grad(f)(v0)
    h = 1e-5 * max(1.0, abs(float(v0)))
    fd = (f(v0 + h) - f(v0 - h)) / (2 * h)
    assert np.isfinite(float(g))
    assert abs(float(fd)) > 1e-8, "derivative ~ 0: bad test"
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-6)


def alg_problem(alg):
    """The problem an algorithm was built with (the first static of its step)."""
    return alg.problem


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtypes_are_kept(x64, name, dtype):
    alg, params, data, x0, y0 = _setup(name, dtype)
    state = sj.solve(alg, params, data, x0, y0, jax.random.key(0), 3)
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
def test_changing_numbers_does_not_recompile_the_runner(name):
    from slamjax.driver import compiled_programs

    alg, params, data, x0, y0 = _setup(name)
    sj.run(alg, params, data, x0, y0, num_steps=10, log_every=5, progress=False)
    before = compiled_programs()
    p2 = type(params)(*(v * 1.1 for v in params))
    d2 = jax.tree.map(lambda a: a * 1.01 if jnp.issubdtype(a.dtype, jnp.floating) else a, data)
    # a new algorithm object on an equal graph and the same problem hits the same cache
    alg2 = sj.make_algorithm(name, alg_problem(alg), sj.graphs.ring(N))
    sj.run(alg2, p2, d2, x0, y0, num_steps=10, log_every=5, progress=False)
    assert compiled_programs() == before
    sj.run(alg2, p2, d2, x0, y0, num_steps=10, log_every=2, progress=False)  # other statics
    assert compiled_programs() == before + 1  # the check can fail


def test_diverged_grid_point_is_marked_and_the_others_go_on():
    g = sj.graphs.ring(N)
    problem, data, x0, y0 = make_quadratic(N, 3, 2, seed=0)
    alg = sj.slam(problem, g)
    params = sj.SLAMParams.create(20.0, 20.0, 0.5, 1.0)
    with pytest.warns(sj.DivergenceWarning, match="1 of 2 lanes"):
        res = sj.run(alg, params, data, x0, y0, num_steps=200, log_every=20,
                     grid=[{"alpha": 20.0}, {"alpha": 0.01}], progress=False)
    assert res.diverged_at[0] == -1 and res.diverged_at[1] > 0
    assert np.all(np.isfinite(np.asarray(res.state.x[1])))     # last finite state kept
    assert np.isfinite(res.history["grad_F_sq"][0]).all()
    assert np.isnan(res.history["grad_F_sq"][1, -1])           # marked after divergence
    assert res.history["grad_F_sq"][0, -1] < 1e-3              # the stable point converged


def test_messages_and_minibatches_are_counted():
    g = sj.graphs.ring(N)
    problem, data, x0, y0 = make_quadratic(N, 3, 2, 2, seed=0, noise=0.1)
    res = sj.run(sj.slam(problem, g), sj.SLAMParams.create(20.0, 20.0, 0.5, 1.0), data, x0,
                 y0, num_steps=30, log_every=10, progress=False)
    per_step = g.messages(x0) + g.messages(y0)  # one exchange of x⁺ and of y⁺
    np.testing.assert_allclose(res.history["messages"], per_step * res.steps)
    np.testing.assert_allclose(res.history["minibatches"], 2 * N * res.steps)
    slam_u = sj.run(sj.slam(problem, g, sj.SLAMConfig("slam_u")),
                    sj.SLAMParams.create(20.0, 20.0, 0.5, 1.0), data, x0, y0, num_steps=30,
                    log_every=10, progress=False)
    np.testing.assert_allclose(slam_u.history["messages"], g.messages(x0) * slam_u.steps)


def test_readme_custom_algorithm_example_runs():
    """The README's "add your own method" block, executed as written (≤ 40 lines)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(r"<!-- custom-algorithm -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its custom-algorithm example"
    code = m.group(1)
    assert len(code.strip().splitlines()) <= 40
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    res = ns["result"]
    assert res.history["grad_F_sq"][-1] < 0.05 * res.history["grad_F_sq"][0]
    assert res.history["messages"][-1] > 0
