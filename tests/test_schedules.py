"""Schedules: a params leaf that is a function of the step count (slamjax.schedules).

A 1/√(t+1) step through the public ``run`` and ``solve`` (D-SOBA's η_x and SLAM's ρ) equals a
hand-written scan with the same per-step parameters bit for bit, a grid crosses a schedule's
own number, and the derivative with respect to that number matches central differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slamjax as sj
from slamjax import schedules
from slamjax.baselines import DSOBAParams, dsoba
from slamjax.problems.quadratic import make_quadratic

N, T = 6, 12


def _setup(dtype=jnp.float32, noise=0.1):
    g = sj.graphs.ring(N)
    problem, data, x0, y0 = make_quadratic(N, 3, 2, 1, seed=1, noise=noise, dtype=dtype)
    return g, problem, data, x0, y0


def _hand_scan(alg, params_at, data, x0, y0, key, steps):
    """The loop a user writes by hand: parameters computed from t, then alg.step."""
    def body(carry, _):
        s, t = carry
        s, _ = alg.step(jax.random.fold_in(key, t), s, params_at(t), data)
        return (s, t + 1), None

    return jax.lax.scan(body, (alg.init(x0, y0, data), jnp.int32(0)), None, length=steps)[0][0]


@pytest.mark.parametrize("method", ["dsoba", "slam"])
def test_inverse_sqrt_schedule_equals_a_hand_written_scan_bit_for_bit(method):
    g, problem, data, x0, y0 = _setup()
    key = jax.random.key(3)
    init = jnp.float32(0.05 if method == "dsoba" else 0.5)
    if method == "dsoba":
        alg = dsoba(problem, g)
        base, field = DSOBAParams.create(0.05, 0.05, 0.05), "lr_x"
    else:
        alg = sj.slam(problem, g)
        base, field = sj.SLAMParams.create(20.0, 20.0, 0.5, 1.0), "rho"
    params = base._replace(**{field: schedules.inverse_sqrt(init)})

    def hand(p, data, x0, y0, key):  # a user's loop: the schedule at t, then alg.step
        return _hand_scan(alg, lambda t: p._replace(**{field: getattr(p, field)(t)}), data,
                          x0, y0, key, T)

    # everything passed as arguments (closed-over constants let XLA fold differently)
    args = (params, data, x0, y0, key)
    want = jax.jit(hand)(*args)
    got = jax.jit(lambda *a: sj.solve(alg, *a, T, check=False))(*args)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    res = sj.run(alg, params, data, x0, y0, num_steps=T, log_every=T, seed=3, progress=False)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(res.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the schedule matters: a constant step gives other numbers (the test can fail)
    const = sj.solve(alg, base._replace(**{field: init}), data, x0, y0, key, T, check=False)
    assert not np.array_equal(np.asarray(const.x), np.asarray(got.x))


def test_a_grid_crosses_a_schedules_number_and_equals_separate_runs():
    g, problem, data, x0, y0 = _setup()
    alg = dsoba(problem, g)
    params = DSOBAParams.create(schedules.inverse_sqrt(0.05), 0.05, 0.05)
    res = sj.run(alg, params, data, x0, y0, num_steps=T, log_every=4, seeds=[0, 1],
                 grid={"lr_x.init": [0.02, 0.05]}, progress=False)
    assert res.grid == [{"lr_x.init": 0.02}, {"lr_x.init": 0.05}]
    for gi, v in enumerate((0.02, 0.05)):
        for si, seed in enumerate((0, 1)):
            one = sj.run(alg, params._replace(lr_x=schedules.inverse_sqrt(v)), data, x0, y0,
                         num_steps=T, log_every=4, seed=seed, progress=False)
            np.testing.assert_allclose(res.history["grad_F_sq"][gi, si],
                                       one.history["grad_F_sq"], rtol=1e-5)
    with pytest.raises(ValueError, match="not fields"):
        sj.run(alg, params, data, x0, y0, num_steps=T, log_every=4,
               grid={"lr_x.nope": [0.1]}, progress=False)


def test_schedule_numbers_are_differentiable(x64):
    g, problem, data, x0, y0 = _setup(jnp.float64, noise=0.0)
    alg = sj.slam(problem, g)
    loss = sj.diff.final_loss_fn(alg, 20, sj.diff.mean_f(problem))

    def f(rho0):
        p = sj.SLAMParams.create(20.0, 20.0, schedules.inverse_sqrt(rho0), 1.0)
        return loss(p, data, x0, y0, jax.random.key(0))

    g0 = jax.grad(f)(0.5)
    h = 1e-5
    fd = (f(0.5 + h) - f(0.5 - h)) / (2 * h)
    assert abs(float(fd)) > 1e-9
    np.testing.assert_allclose(float(g0), float(fd), rtol=1e-6)
    # and through value_and_grad_run by name: the gradient is a Schedule of gradients
    _, grads = sj.diff.value_and_grad_run(
        alg, sj.SLAMParams.create(20.0, 20.0, schedules.inverse_sqrt(0.5), 1.0), data, x0, y0,
        num_steps=20, loss=sj.diff.mean_f(problem), wrt=("rho",))
    np.testing.assert_allclose(float(grads["rho"].numbers["init"]), float(g0), rtol=1e-10)


def test_optax_schedules_plain_and_traced():
    g, problem, data, x0, y0 = _setup()
    alg = dsoba(problem, g)
    key = jax.random.key(0)
    plain = DSOBAParams.create(optax.exponential_decay(0.05, 4, 0.5), 0.05, 0.05)
    traced = DSOBAParams.create(schedules.from_optax(optax.exponential_decay, init_value=0.05,
                                                     transition_steps=4, decay_rate=0.5,
                                                     static=("transition_steps", "decay_rate")),
                         0.05, 0.05)
    a = sj.solve(alg, plain, data, x0, y0, key, T)
    b = sj.solve(alg, traced, data, x0, y0, key, T)
    np.testing.assert_allclose(np.asarray(a.x), np.asarray(b.x), rtol=1e-6)
    assert schedules.at(plain, 4).lr_x == pytest.approx(0.025)
    res = sj.run(alg, plain, data, x0, y0, num_steps=T, log_every=6, progress=False)
    np.testing.assert_allclose(np.asarray(res.state.x), np.asarray(a.x), rtol=1e-6)


def test_params_without_schedules_are_passed_through_unchanged():
    p = sj.SLAMParams.create(1.0, 2.0, 3.0)
    assert schedules.at(p, 5) is p
    s = schedules.inverse_power(2.0, 1.0)
    assert float(s(jnp.int32(3))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no number"):
        s.replace(nope=1.0)
