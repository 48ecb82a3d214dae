"""Tune SLAM's penalty ρ and UL step 1/α by gradient descent through the solver.

The objective is what a user of a decentralized solver cares about after a fixed budget: the
excess upper-level loss of every agent's own model after T = 200 SLAM steps on a *stochastic*
quadratic problem (noisy gradient oracle, σ = 1),

    L(ρ, α) = E_{instance, noise} [ (1/n) Σ_i F(x_i^T) − F* ],

estimated on 4 training instances (data seeds) × 4 noise keys, vmapped. ``slamjax.diff``
differentiates the whole 200-step run of ``alg = sj.slam(problem, graph, config)``
(``final_loss_fn(alg, T, quadratic.ul_objective_loss(per_agent=True))``) with respect to
log ρ and log α, and Adam (optax; gradient clipping, cosine-decayed learning rate,
updates skipped if a loss is not finite) updates them. Then default and tuned values are
compared on held-out runs: 8 *new* problem instances × 4 *new* noise keys (no overlap with
training). Also drawn: the held-out loss as a function of ρ (a grid, forward runs only), to
show where the tuned ρ sits and how close it is to the stability bound.

Writes ``results/tune_by_gradient.json`` and ``results/tune_by_gradient.png`` (``--out`` sets
the JSON path; the figure goes next to it).

    python experiments/tune_by_gradient.py           # ~1–2 min on 2 cores
    python experiments/tune_by_gradient.py --quick --out /tmp/tune.json   # fewer iterations
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from _common import RESULTS, ROOT, machine_info, pyplot, save_figure, write_json  # noqa: E402

if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

import slamjax as sj  # noqa: E402
from slamjax.diff import final_loss_fn  # noqa: E402
from slamjax.problems.quadratic import (fixed_point, make_quadratic, ul_objective,  # noqa: E402
                                        ul_objective_loss)


@jax.jit
def _optimal_value(data):
    """F* = F(x*) of one homogeneous instance (SLAM's fixed point is the optimum here)."""
    return ul_objective(fixed_point(data, True, True, True)[0], data, True, True)


def make_instances(n, d, sigma, data_seeds):
    """Stacked problem instances (leading axis = instance) and their optimal values F*."""
    insts = [make_quadratic(n, d, d, 1, seed=int(s), noise=sigma) for s in data_seeds]
    problem = insts[0][0]
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    data = jax.tree.map(stack, *[i[1] for i in insts])
    x0 = jnp.stack([i[2] for i in insts])
    y0 = jnp.stack([i[3] for i in insts])
    fstar = jax.vmap(_optimal_value)(data)
    return problem, data, x0, y0, fstar


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="30 Adam steps instead of 100")
    ap.add_argument("--n", type=int, default=16, help="agents")
    ap.add_argument("--d", type=int, default=5, help="d_x = d_y")
    ap.add_argument("--T", type=int, default=200, help="SLAM steps per run")
    ap.add_argument("--sigma", type=float, default=1.0, help="oracle noise σ")
    ap.add_argument("--steps", type=int, default=None, help="Adam steps (default 100)")
    ap.add_argument("--lr", type=float, default=0.05,
                    help="initial Adam learning rate (log space), cosine-decayed to 10%%")
    ap.add_argument("--out", default=str(RESULTS / "tune_by_gradient.json"),
                    help="JSON path (the figure is written next to it, .png)")
    args = ap.parse_args(argv)
    steps = args.steps or (30 if args.quick else 100)
    t_start = time.perf_counter()

    graph = sj.graphs.small_world(args.n, 4, 0.1, seed=0)
    config = sj.SLAMConfig("slam", sj.CG(args.d))
    beta, gamma = 10.0, 1.0
    alpha0 = 20.0
    bound = lambda a: min(sj.stability_bound(graph.lam_max, a, gamma),  # noqa: E731
                          sj.stability_bound(graph.lam_max, beta, gamma))
    rho0 = 0.2 * bound(alpha0)  # a conservative default: 20% of the stability bound
    default = {"rho": rho0, "alpha": alpha0}

    train_seeds, train_keys = range(4), range(4)
    test_seeds, test_keys = range(100, 108), range(1000, 1004)
    problem, train_data, train_x0, train_y0, train_fstar = make_instances(
        args.n, args.d, args.sigma, train_seeds)
    _, test_data, test_x0, test_y0, test_fstar = make_instances(
        args.n, args.d, args.sigma, test_seeds)
    keys = lambda ks: jax.vmap(jax.random.key)(jnp.asarray(list(ks), jnp.uint32))  # noqa: E731

    alg = sj.slam(problem, graph, config)
    # (1/n) Σ_i F(x_i^T) with the LL in consensus (SLAM)
    run_loss = final_loss_fn(alg, args.T, ul_objective_loss(consensus_y=True, per_agent=True))

    def excess(theta, data, x0, y0, fstar, ks):
        """Mean excess loss over instances × keys; also the per-run losses."""
        params = sj.SLAMParams(jnp.exp(theta["log_alpha"]), beta, jnp.exp(theta["log_rho"]),
                               gamma)
        over_keys = jax.vmap(run_loss, in_axes=(None, None, None, None, 0))
        per_run = jax.vmap(over_keys, in_axes=(None, 0, 0, 0, None))(params, data, x0, y0, ks)
        per_run = per_run - fstar[:, None]
        return jnp.mean(per_run), per_run

    train_ks, test_ks = keys(train_keys), keys(test_keys)
    train_args = (train_data, train_x0, train_y0, train_fstar, train_ks)
    test_args = (test_data, test_x0, test_y0, test_fstar, test_ks)
    evaluate = jax.jit(excess)

    theta = {"log_rho": jnp.log(jnp.float32(rho0)), "log_alpha": jnp.log(jnp.float32(alpha0))}
    schedule = optax.cosine_decay_schedule(args.lr, max(steps, 1), alpha=0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt = optax.apply_if_finite(opt, max_consecutive_errors=5)
    opt_state = opt.init(theta)

    @jax.jit
    def train_step(theta, opt_state):
        """One SLAM run per training (instance, key), its gradient, one Adam update."""
        (loss, _), grad = jax.value_and_grad(excess, has_aux=True)(theta, *train_args)
        updates, opt_state = opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, loss, grad

    t0 = time.perf_counter()
    jax.block_until_ready(train_step(theta, opt_state))
    compile_s = time.perf_counter() - t0
    history = {"step": [], "train_loss": [], "rho": [], "alpha": [], "grad_log_rho": [],
               "grad_log_alpha": [], "heldout_step": [], "heldout_loss": []}
    print(f"graph: {graph.kind} n={graph.n} lam_max={graph.lam_max:.3f}; stability bound on "
          f"rho at alpha={alpha0}: {bound(alpha0):.3f}; default rho={rho0:.3f}")
    print(f"{'step':>5} {'train excess':>12} {'rho':>8} {'alpha':>8} {'dL/dlog rho':>12} "
          f"{'dL/dlog alpha':>13}")
    t0 = time.perf_counter()
    for it in range(steps + 1):
        new_theta, new_opt_state, loss, grad = train_step(theta, opt_state)
        history["step"].append(it)  # loss and gradient at theta (before the update)
        history["train_loss"].append(float(loss))
        history["rho"].append(float(jnp.exp(theta["log_rho"])))
        history["alpha"].append(float(jnp.exp(theta["log_alpha"])))
        history["grad_log_rho"].append(float(grad["log_rho"]))
        history["grad_log_alpha"].append(float(grad["log_alpha"]))
        if it % 10 == 0:
            held, _ = evaluate(theta, *test_args)
            history["heldout_step"].append(it)
            history["heldout_loss"].append(float(held))
            print(f"{it:>5} {float(loss):>12.5f} {history['rho'][-1]:>8.4f} "
                  f"{history['alpha'][-1]:>8.3f} {float(grad['log_rho']):>12.3e} "
                  f"{float(grad['log_alpha']):>13.3e}", flush=True)
        if it == steps:
            break
        theta, opt_state = new_theta, new_opt_state
    tune_s = time.perf_counter() - t0

    tuned = {"rho": float(jnp.exp(theta["log_rho"])), "alpha": float(jnp.exp(theta["log_alpha"]))}
    as_theta = lambda v: {"log_rho": jnp.log(jnp.float32(v["rho"])),  # noqa: E731
                          "log_alpha": jnp.log(jnp.float32(v["alpha"]))}
    results = {}
    for name, vals in (("default", default), ("tuned", tuned)):
        tr, _ = evaluate(as_theta(vals), *train_args)
        te, per_run = evaluate(as_theta(vals), *test_args)
        per_run = np.asarray(per_run).ravel()
        results[name] = {**vals, "rho_over_bound": vals["rho"] / bound(vals["alpha"]),
                         "train_excess": float(tr), "heldout_excess": float(te),
                         "heldout_excess_std": float(per_run.std()),
                         "heldout_per_run": per_run.tolist()}
    d_runs = np.asarray(results["default"]["heldout_per_run"])
    t_runs = np.asarray(results["tuned"]["heldout_per_run"])
    improvement = 1 - results["tuned"]["heldout_excess"] / results["default"]["heldout_excess"]
    wins = float(np.mean(t_runs < d_runs))

    # held-out landscape over rho (forward runs only), at the default and at the tuned alpha
    grid = {}
    for name, a in (("default_alpha", default["alpha"]), ("tuned_alpha", tuned["alpha"])):
        rhos = np.geomspace(0.02 * bound(a), 0.98 * bound(a), 25)
        thetas = {"log_rho": jnp.log(jnp.asarray(rhos, jnp.float32)),
                  "log_alpha": jnp.full((len(rhos),), jnp.log(jnp.float32(a)))}
        vals = jax.jit(jax.vmap(lambda th: excess(th, *test_args)[0]))(thetas)
        vals = np.asarray(vals)
        too_big = 10 * results["default"]["heldout_excess"]
        blown = np.nonzero(~np.isfinite(vals) | (vals > too_big))[0]
        cliff = float(rhos[blown[0]]) if blown.size else None
        grid[name] = {"alpha": a, "bound": bound(a), "rho": rhos.tolist(),
                      "heldout_excess": vals.tolist(), "first_rho_blown_up": cliff}

    print()
    print(f"{'':>8} {'rho':>8} {'rho/bound':>9} {'alpha':>8} {'train':>9} {'held-out':>9} "
          f"{'± std':>8}")
    for name in ("default", "tuned"):
        r = results[name]
        print(f"{name:>8} {r['rho']:>8.4f} {r['rho_over_bound']:>9.3f} {r['alpha']:>8.3f} "
              f"{r['train_excess']:>9.5f} {r['heldout_excess']:>9.5f} "
              f"{r['heldout_excess_std']:>8.5f}")
    print(f"held-out excess loss reduced by {100 * improvement:.1f}%; tuned better on "
          f"{100 * wins:.0f}% of the {len(t_runs)} held-out runs")
    cliff = grid["tuned_alpha"]["first_rho_blown_up"]
    if cliff is not None:
        print(f"at the tuned alpha the held-out loss blows up from rho ≈ {cliff:.3f} "
              f"({cliff / bound(tuned['alpha']):.2f} × the linear stability bound); tuned rho is "
              f"{tuned['rho'] / cliff:.2f} × that")
    total_s = time.perf_counter() - t_start
    print(f"compile {compile_s:.1f}s, {steps} Adam steps {tune_s:.1f}s, total {total_s:.1f}s")

    machine = machine_info(extra_packages=("optax",))
    meta = {"n": args.n, "d": args.d, "T": args.T, "sigma": args.sigma, "graph": graph.kind,
            "lam_max": graph.lam_max, "variant": config.variant,
            "solver": f"CG({config.solver.maxiter})", "beta": beta, "gamma": gamma,
            "loss": "(1/n) sum_i F(x_i^T) - F*, mean over runs",
            "train": {"data_seeds": list(train_seeds), "noise_keys": list(train_keys)},
            "heldout": {"data_seeds": list(test_seeds), "noise_keys": list(test_keys)},
            "optimizer": f"clip_by_global_norm(1) + adam(cosine decay {args.lr} -> "
                         f"{args.lr / 10}) on (log rho, log alpha), apply_if_finite",
            "adam_steps": steps, "compile_s": compile_s, "tune_s": tune_s,
            "total_s": total_s, "jax": machine["jax"], "cpu_count": machine["cores"],
            "machine": machine}
    out = write_json(Path(args.out).with_suffix(".json"),
                     {"meta": meta, "default": results["default"], "tuned": results["tuned"],
                      "heldout_improvement": improvement, "heldout_win_rate": wins,
                      "history": history, "rho_landscape": grid})
    png = plot(history, results, grid, meta, out.with_suffix(".png"))
    print(f"wrote {out} and {png}")
    if not results["tuned"]["heldout_excess"] < results["default"]["heldout_excess"]:
        raise SystemExit("tuned values do not beat the default on held-out runs")


def plot(history, results, grid, meta, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.semilogy(history["step"], history["train_loss"], label="train (4 instances × 4 keys)")
    ax.semilogy(history["heldout_step"], history["heldout_loss"], "o-",
                label="held-out (8 new instances × 4 new keys)")
    ax.set(xlabel="Adam step", ylabel="excess UL loss after T steps",
           title="tuning by gradient through the solver")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(history["step"], history["rho"], color="tab:blue", label=r"$\rho$")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(r"$\rho$", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(history["step"], history["alpha"], color="tab:orange", label=r"$\alpha$")
    ax2.set_ylabel(r"$\alpha$ (UL step = $1/\alpha$)", color="tab:orange")
    ax.set_title("hyperparameters during tuning")
    ax = axes[2]
    for name, color in (("default_alpha", "tab:gray"), ("tuned_alpha", "tab:green")):
        g = grid[name]
        ax.loglog(g["rho"], g["heldout_excess"], color=color,
                  label=rf"held-out, $\alpha$={g['alpha']:.2f}")
        ax.axvline(g["bound"], color=color, ls=":", lw=1)
    for name, marker in (("default", "s"), ("tuned", "*")):
        r = results[name]
        ax.loglog([r["rho"]], [r["heldout_excess"]], marker, ms=12 if marker == "*" else 8,
                  color="k", label=f"{name}: {r['heldout_excess']:.4f}")
    top = 5 * max(results["default"]["heldout_excess"],
                  max(g["heldout_excess"][0] for g in grid.values()))
    bottom = 0.5 * min(min(g["heldout_excess"]) for g in grid.values())
    ax.set_ylim(bottom, top)
    ax.set(xlabel=r"$\rho$ (dotted: linear stability bound)", ylabel="held-out excess UL loss",
           title="held-out loss vs ρ (grid of forward runs)")
    ax.legend(fontsize=8)
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"SLAM, n={meta['n']} agents ({meta['graph']}), d={meta['d']}, "
                 f"T={meta['T']}, noise σ={meta['sigma']}, {meta['solver']}", fontsize=10)
    return save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()
