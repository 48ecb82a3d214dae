"""Tune SLAM's penalty ρ and UL step 1/α by gradient descent through the solver: the library
behind ``slamjax tune`` and ``experiments/tune_by_gradient.py``.

The objective is what a user of a decentralized solver cares about after a fixed budget: the
excess upper-level loss of every agent's own model after T SLAM steps on a *stochastic*
quadratic problem (noisy gradient oracle),

    L(ρ, α) = E_{instance, noise} [ (1/n) Σ_i F(x_i^T) − F* ],

estimated on 4 training instances (data seeds) × 4 noise keys, vmapped. :mod:`slamjax.diff`
differentiates the whole T-step run of ``sj.slam(problem, graph, config)`` with respect to
log ρ and log α, and Adam (optax; gradient clipping, cosine-decayed learning rate, updates
skipped if a loss is not finite) updates them. Default and tuned values are then compared on
held-out runs (8 new instances × 4 new noise keys), and the held-out loss is drawn as a
function of ρ (forward runs only) to show where the tuned ρ sits against the stability bound.

Function API: :func:`tune_by_gradient` (returns the payload), :func:`plot_tuning`; command
line: :func:`add_arguments` / :func:`main`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["DESCRIPTION", "make_instances", "tune_by_gradient", "plot_tuning", "add_arguments",
           "main"]

DESCRIPTION = ("Tune SLAM's penalty ρ and UL step 1/α by gradient descent through the solver "
               "(Adam on the loss after T noisy steps), then compare default and tuned values "
               "on held-out runs. Writes <out>/<name>.json and .png.")
"""The command's description (``slamjax tune --help``)."""

_BETA, _GAMMA, _ALPHA0 = 10.0, 1.0, 20.0
_TRAIN = (range(4), range(4))
_TEST = (range(100, 108), range(1000, 1004))


def make_instances(n, d, sigma, data_seeds):
    """Stacked quadratic problem instances (leading axis = instance) and their optimal values
    F*: ``(problem, data, x0, y0, fstar)`` for ``n`` agents, d_x = d_y = ``d``, oracle noise
    ``sigma`` and one instance per seed in ``data_seeds``."""
    import jax
    import jax.numpy as jnp

    from slamjax.problems.quadratic import fixed_point, make_quadratic, ul_objective

    @jax.jit
    def optimal_value(data):  # SLAM's fixed point is the optimum of a homogeneous instance
        return ul_objective(fixed_point(data, True, True, True)[0], data, True, True)

    insts = [make_quadratic(n, d, d, 1, seed=int(s), noise=sigma) for s in data_seeds]
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    data = jax.tree.map(stack, *[i[1] for i in insts])
    x0 = jnp.stack([i[2] for i in insts])
    y0 = jnp.stack([i[3] for i in insts])
    return insts[0][0], data, x0, y0, jax.vmap(optimal_value)(data)


def _setup(n, d, sigma, T):
    """Graph, stability bound, the excess-loss function and the train/test arguments."""
    import jax
    import jax.numpy as jnp

    import slamjax as sj
    from slamjax.diff import final_loss_fn
    from slamjax.problems.quadratic import ul_objective_loss

    graph = sj.graphs.small_world(n, 4, 0.1, seed=0)
    config = sj.SLAMConfig("slam", sj.CG(d))
    bound = lambda a: min(sj.stability_bound(graph.lam_max, a, _GAMMA),  # noqa: E731
                          sj.stability_bound(graph.lam_max, _BETA, _GAMMA))
    keys = lambda ks: jax.vmap(jax.random.key)(jnp.asarray(list(ks), jnp.uint32))  # noqa: E731
    problem, *train = make_instances(n, d, sigma, _TRAIN[0])
    _, *test = make_instances(n, d, sigma, _TEST[0])
    alg = sj.slam(problem, graph, config)
    # (1/n) Σ_i F(x_i^T) with the LL in consensus (SLAM)
    run_loss = final_loss_fn(alg, T, ul_objective_loss(consensus_y=True, per_agent=True))

    def excess(theta, data, x0, y0, fstar, ks):
        """Mean excess loss over instances × keys; also the per-run losses."""
        params = sj.SLAMParams(jnp.exp(theta["log_alpha"]), _BETA, jnp.exp(theta["log_rho"]),
                               _GAMMA)
        over_keys = jax.vmap(run_loss, in_axes=(None, None, None, None, 0))
        per_run = jax.vmap(over_keys, in_axes=(None, 0, 0, 0, None))(params, data, x0, y0, ks)
        per_run = per_run - fstar[:, None]
        return jnp.mean(per_run), per_run

    return (graph, config, bound, excess, (*train, keys(_TRAIN[1])), (*test, keys(_TEST[1])))


def _theta(rho, alpha):
    import jax.numpy as jnp

    return {"log_rho": jnp.log(jnp.float32(rho)), "log_alpha": jnp.log(jnp.float32(alpha))}


def _optimize(excess, train_args, test_args, theta, steps, lr, log):
    """Adam on (log ρ, log α); returns (theta, history, compile_s, tune_s)."""
    import jax
    import jax.numpy as jnp
    import optax

    schedule = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt = optax.apply_if_finite(opt, max_consecutive_errors=5)
    opt_state = opt.init(theta)
    evaluate = jax.jit(excess)

    @jax.jit
    def train_step(theta, opt_state):
        """One SLAM run per training (instance, key), its gradient, one Adam update."""
        (loss, _), grad = jax.value_and_grad(excess, has_aux=True)(theta, *train_args)
        updates, opt_state = opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, loss, grad

    t0 = time.perf_counter()
    jax.block_until_ready(train_step(theta, opt_state))
    compile_s = time.perf_counter() - t0
    history = {k: [] for k in ("step", "train_loss", "rho", "alpha", "grad_log_rho",
                               "grad_log_alpha", "heldout_step", "heldout_loss")}
    log(f"{'step':>5} {'train excess':>12} {'rho':>8} {'alpha':>8} {'dL/dlog rho':>12} "
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
            log(f"{it:>5} {float(loss):>12.5f} {history['rho'][-1]:>8.4f} "
                f"{history['alpha'][-1]:>8.3f} {float(grad['log_rho']):>12.3e} "
                f"{float(grad['log_alpha']):>13.3e}")
        if it == steps:
            break
        theta, opt_state = new_theta, new_opt_state
    return theta, history, compile_s, time.perf_counter() - t0, evaluate


def _compare(evaluate, bound, default, tuned, train_args, test_args):
    results = {}
    for name, vals in (("default", default), ("tuned", tuned)):
        tr, _ = evaluate(_theta(vals["rho"], vals["alpha"]), *train_args)
        te, per_run = evaluate(_theta(vals["rho"], vals["alpha"]), *test_args)
        per_run = np.asarray(per_run).ravel()
        results[name] = {**vals, "rho_over_bound": vals["rho"] / bound(vals["alpha"]),
                         "train_excess": float(tr), "heldout_excess": float(te),
                         "heldout_excess_std": float(per_run.std()),
                         "heldout_per_run": per_run.tolist()}
    return results


def _landscape(excess, bound, test_args, default, tuned, too_big):
    """Held-out loss over a ρ grid (forward runs only) at the default and the tuned α."""
    import jax
    import jax.numpy as jnp

    grid = {}
    for name, a in (("default_alpha", default["alpha"]), ("tuned_alpha", tuned["alpha"])):
        rhos = np.geomspace(0.02 * bound(a), 0.98 * bound(a), 25)
        thetas = {"log_rho": jnp.log(jnp.asarray(rhos, jnp.float32)),
                  "log_alpha": jnp.full((len(rhos),), jnp.log(jnp.float32(a)))}
        vals = np.asarray(jax.jit(jax.vmap(lambda th: excess(th, *test_args)[0]))(thetas))
        blown = np.nonzero(~np.isfinite(vals) | (vals > too_big))[0]
        grid[name] = {"alpha": a, "bound": bound(a), "rho": rhos.tolist(),
                      "heldout_excess": vals.tolist(),
                      "first_rho_blown_up": float(rhos[blown[0]]) if blown.size else None}
    return grid


def tune_by_gradient(*, n: int = 16, d: int = 5, T: int = 200, sigma: float = 1.0,
                     steps: int = 100, lr: float = 0.05, log=print) -> dict:
    """Tune (ρ, α) by Adam through ``T``-step SLAM runs and return the JSON payload
    (``meta``, ``default``, ``tuned``, ``heldout_improvement``, ``heldout_win_rate``,
    ``history``, ``rho_landscape``).

    ``n``: agents (small world k = 4, p = 0.1); ``d``: d_x = d_y; ``T``: SLAM steps per run;
    ``sigma``: oracle noise σ; ``steps``: Adam steps; ``lr``: initial Adam learning rate (log
    space, cosine-decayed to 10 %); ``log``: where progress lines go."""
    import jax.numpy as jnp

    from slamjax.tools._machine import machine_info

    t_start = time.perf_counter()
    graph, config, bound, excess, train_args, test_args = _setup(n, d, sigma, T)
    rho0 = 0.2 * bound(_ALPHA0)  # a conservative default: 20% of the stability bound
    default = {"rho": rho0, "alpha": _ALPHA0}
    log(f"graph: {graph.kind} n={graph.n} lam_max={graph.lam_max:.3f}; stability bound on "
        f"rho at alpha={_ALPHA0}: {bound(_ALPHA0):.3f}; default rho={rho0:.3f}")
    theta, history, compile_s, tune_s, evaluate = _optimize(
        excess, train_args, test_args, _theta(rho0, _ALPHA0), steps, lr, log)
    tuned = {"rho": float(jnp.exp(theta["log_rho"])),
             "alpha": float(jnp.exp(theta["log_alpha"]))}
    results = _compare(evaluate, bound, default, tuned, train_args, test_args)
    d_runs = np.asarray(results["default"]["heldout_per_run"])
    t_runs = np.asarray(results["tuned"]["heldout_per_run"])
    improvement = 1 - results["tuned"]["heldout_excess"] / results["default"]["heldout_excess"]
    grid = _landscape(excess, bound, test_args, default, tuned,
                      10 * results["default"]["heldout_excess"])
    machine = machine_info(extra_packages=("optax",))
    meta = {"n": n, "d": d, "T": T, "sigma": sigma, "graph": graph.kind,
            "lam_max": graph.lam_max, "variant": config.variant,
            "solver": f"CG({config.solver.maxiter})", "beta": _BETA, "gamma": _GAMMA,
            "loss": "(1/n) sum_i F(x_i^T) - F*, mean over runs",
            "train": {"data_seeds": list(_TRAIN[0]), "noise_keys": list(_TRAIN[1])},
            "heldout": {"data_seeds": list(_TEST[0]), "noise_keys": list(_TEST[1])},
            "optimizer": f"clip_by_global_norm(1) + adam(cosine decay {lr} -> "
                         f"{lr / 10}) on (log rho, log alpha), apply_if_finite",
            "adam_steps": steps, "compile_s": compile_s, "tune_s": tune_s,
            "total_s": time.perf_counter() - t_start, "jax": machine["jax"],
            "cpu_count": machine["cores"], "machine": machine}
    return {"meta": meta, "default": results["default"], "tuned": results["tuned"],
            "heldout_improvement": improvement,
            "heldout_win_rate": float(np.mean(t_runs < d_runs)), "history": history,
            "rho_landscape": grid}


def _report(payload, log=print) -> None:
    res, meta = payload, payload["meta"]
    log("")
    log(f"{'':>8} {'rho':>8} {'rho/bound':>9} {'alpha':>8} {'train':>9} {'held-out':>9} "
        f"{'± std':>8}")
    for name in ("default", "tuned"):
        r = res[name]
        log(f"{name:>8} {r['rho']:>8.4f} {r['rho_over_bound']:>9.3f} {r['alpha']:>8.3f} "
            f"{r['train_excess']:>9.5f} {r['heldout_excess']:>9.5f} "
            f"{r['heldout_excess_std']:>8.5f}")
    log(f"held-out excess loss reduced by {100 * res['heldout_improvement']:.1f}%; tuned "
        f"better on {100 * res['heldout_win_rate']:.0f}% of the "
        f"{len(res['tuned']['heldout_per_run'])} held-out runs")
    g = res["rho_landscape"]["tuned_alpha"]
    cliff = g["first_rho_blown_up"]
    if cliff is not None:
        log(f"at the tuned alpha the held-out loss blows up from rho ≈ {cliff:.3f} "
            f"({cliff / g['bound']:.2f} × the linear stability bound); tuned rho is "
            f"{res['tuned']['rho'] / cliff:.2f} × that")
    log(f"compile {meta['compile_s']:.1f}s, {meta['adam_steps']} Adam steps "
        f"{meta['tune_s']:.1f}s, total {meta['total_s']:.1f}s")


def plot_tuning(payload: dict, path) -> Path:
    """Training/held-out loss, (ρ, α) during tuning and the held-out loss against ρ, from a
    :func:`tune_by_gradient` ``payload``, written to ``path`` (PNG); returns the path."""
    from slamjax.io import save_figure
    from slamjax.tools._machine import new_figure

    history, meta, grid = payload["history"], payload["meta"], payload["rho_landscape"]
    results = {k: payload[k] for k in ("default", "tuned")}
    fig, axes = new_figure(1, 3, figsize=(15, 4.2))
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
    finite = lambda v: [x for x in v if x is not None and np.isfinite(x)]  # noqa: E731
    top = 5 * max(results["default"]["heldout_excess"],
                  max(finite([g["heldout_excess"][0] for g in grid.values()]) or [1e-12]))
    bottom = 0.5 * min(min(finite(g["heldout_excess"]) or [top / 10]) for g in grid.values())
    ax.set_ylim(bottom, top)
    ax.set(xlabel=r"$\rho$ (dotted: linear stability bound)", ylabel="held-out excess UL loss",
           title="held-out loss vs ρ (grid of forward runs)")
    ax.legend(fontsize=8)
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"SLAM, n={meta['n']} agents ({meta['graph']}), d={meta['d']}, "
                 f"T={meta['T']}, noise σ={meta['sigma']}, {meta['solver']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def add_arguments(parser) -> None:
    """The command-line options of ``slamjax tune`` (and ``experiments/tune_by_gradient.py``)."""
    ap = parser
    ap.add_argument("--quick", action="store_true", help="30 Adam steps instead of 100")
    ap.add_argument("--n", type=int, default=16, help="agents (16)")
    ap.add_argument("--d", type=int, default=5, help="d_x = d_y (5)")
    ap.add_argument("--T", type=int, default=200, help="SLAM steps per run (200)")
    ap.add_argument("--sigma", type=float, default=1.0, help="oracle noise σ (1)")
    ap.add_argument("--steps", type=int, default=None, help="Adam steps (default 100)")
    ap.add_argument("--lr", type=float, default=0.05,
                    help="initial Adam learning rate (log space), cosine-decayed to 10%%")
    ap.add_argument("--out", default="results",
                    help="output directory (default ./results in the current directory); a "
                         "path ending in .json names the JSON file itself (the figure goes "
                         "next to it)")
    ap.add_argument("--name", default="tune_by_gradient", help="<out>/<name>.json and .png")


def output_paths(out, name) -> tuple[Path, Path]:
    """(JSON, PNG) paths of ``--out``/``--name``, checked: ``--out`` is a directory, or a
    ``.json`` file path (the figure goes next to it)."""
    from slamjax.io import check_name, check_output_dir, check_output_file

    if str(out).endswith(".json"):
        js = check_output_file(Path(out), "--out")
    else:
        js = check_output_dir(out, "--out") / f"{check_name(name)}.json"
        check_output_file(js, "--out/--name: output file")
    png = js.with_suffix(".png")
    check_output_file(png, "--out/--name: output file")
    return js, png


def main(args) -> int:
    """Run ``slamjax tune`` for parsed ``args`` (see :func:`add_arguments`): outputs checked
    first; exit code 1 if the tuned values do not beat the default on held-out runs."""
    import sys

    from slamjax.io import write_json
    from slamjax.tools._machine import NO_PLOT_NOTE, have_matplotlib

    js, png = output_paths(args.out, args.name)
    for k in ("n", "d", "T"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k} must be ≥ 1, got {getattr(args, k)}")
    log = lambda s: print(s, flush=True)  # noqa: E731
    payload = tune_by_gradient(n=args.n, d=args.d, T=args.T, sigma=args.sigma,
                               steps=args.steps or (30 if args.quick else 100), lr=args.lr,
                               log=log)
    payload["meta"]["command"] = getattr(args, "command", "")
    _report(payload, log)
    out = write_json(js, payload)
    drawn = plot_tuning(payload, png) if have_matplotlib() else None
    print(f"wrote {out}" + (f" and {drawn}" if drawn else f" ({NO_PLOT_NOTE})"))
    if not payload["tuned"]["heldout_excess"] < payload["default"]["heldout_excess"]:
        print("tuned values do not beat the default on held-out runs", file=sys.stderr)
        return 1
    return 0
