"""Cost of differentiating a whole SLAM run: time and memory of the gradient against the forward
run. The library behind ``slamjax bench-grad`` and ``experiments/bench_grad.py``.

Problem: homogeneous quadratic (``make_quadratic``), n agents, d_x = d_y = d, one LL task,
float32, on a connected small-world graph (mean degree ≈ 4.4, sparse mixing); SLAM with
CG(10), 1/α = 0.05, 1/β = 0.1, γ = 1, ρ at half the stability bound. Loss:
``slamjax.diff.mean_f(problem)`` at the final iterate. For each horizon T, four programs
(compiled ahead of time): ``forward`` (the loss only), ``reverse`` (reverse mode storing every
step, memory O(T)), ``reverse_ckpt`` (``Checkpointed(every=round(√T))``, memory O(√T)) and
``forward_mode`` (``Forward()``, 4 vmapped JVPs, memory O(1) in T), the gradient modes through
``slamjax.diff.value_and_grad_run``'s compiled function.

Memory: ``xla_temp_MB`` (the compiled program's ``memory_analysis().temp_size_in_bytes``) and
``rss_run_MB`` (the rise of the peak RSS while the compiled program runs; each configuration
runs in a fresh worker process, ``python -m slamjax.tools.bench_grad --worker``). Times are
the minimum over 2–5 repeats.

Function API: :func:`measure` (one configuration, in a fresh process), :func:`bench_grad`
(the whole table), :func:`plot_bench_grad`; command line: :func:`add_arguments` /
:func:`main`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["MODES", "DESCRIPTION", "setup", "worker", "measure", "bench_grad",
           "plot_bench_grad", "add_arguments", "main"]

MODES = ("forward", "reverse", "reverse_ckpt", "forward_mode")
"""The four programs timed per horizon."""
DESCRIPTION = ("Cost of differentiating a whole SLAM run: time and memory of reverse mode, "
               "checkpointed reverse mode and forward mode against the forward run, per "
               "horizon T. Writes <out>/<name>.json and .png.")
"""The command's description (``slamjax bench-grad --help``)."""
MB = 1e6
MIB_TO_MB = 2**20 / MB


def setup(n: int, d: int, seed: int = 0):
    """``(problem, graph, config, alg, params, data, x0, y0)`` of the benchmark at ``n``
    agents and d_x = d_y = ``d``."""
    import jax.numpy as jnp

    import slamjax as sj
    from slamjax.problems.quadratic import make_quadratic

    problem, data, x0, y0 = make_quadratic(n, d, d, 1, seed=seed, dtype=jnp.float32)
    graph = sj.graphs.small_world(n, 4, 0.1, seed=seed)
    alpha, beta, gamma = 20.0, 10.0, 1.0
    rho = 0.5 * min(sj.stability_bound(graph.lam_max, alpha, gamma),
                    sj.stability_bound(graph.lam_max, beta, gamma))
    params = sj.SLAMParams.create(alpha, beta, rho, gamma, dtype=jnp.float32)
    config = sj.SLAMConfig("slam", sj.CG(10))
    alg = sj.slam(problem, graph, config)
    return problem, graph, config, alg, params, data, x0, y0


def _compile(mode, T, alg, problem, params, data, x0, y0):
    import jax

    from slamjax.diff import (Checkpointed, Forward, Reverse, final_loss_fn,
                              lower_value_and_grad, mean_f)

    loss, key = mean_f(problem), jax.random.key(0)
    ck = max(1, int(round(math.sqrt(T)))) if mode == "reverse_ckpt" else None
    t0 = time.perf_counter()
    if mode == "forward":
        args = (params, data, x0, y0, key)
        compiled = jax.jit(final_loss_fn(alg, T, loss)).lower(*args).compile()
    else:
        # value_and_grad_run's compiled function, lowered ahead of time (the graph's arrays
        # are arguments, the static rest of the algorithm a static argument)
        adjoint = {"reverse": Reverse(), "reverse_ckpt": Checkpointed(every=ck),
                   "forward_mode": Forward()}[mode]
        lowered, args = lower_value_and_grad(alg, params, data, x0, y0, key, num_steps=T,
                                             loss=loss, wrt=("params",), adjoint=adjoint)
        compiled = lowered.compile()
    return compiled, args, ck, time.perf_counter() - t0


def worker(cfg: dict) -> dict:
    """One (T, mode) in THIS process: compile, run ``cfg["repeats"]`` times, and report
    times, XLA memory and the peak-RSS rise (``cfg``: T, mode, n, d, repeats, warmup)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from slamjax.tools._machine import current_rss_mib, peak_rss_mib, reset_peak_rss

    T, mode = int(cfg["T"]), cfg["mode"]
    problem, _, _, alg, params, data, x0, y0 = setup(cfg["n"], cfg["d"])
    jax.block_until_ready(jnp.ones(8) + 1)  # backend up before the baseline
    compiled, args, ck, compile_s = _compile(mode, T, alg, problem, params, data, x0, y0)
    mem = compiled.memory_analysis()
    rss_before = current_rss_mib() * MIB_TO_MB
    peak_ok = reset_peak_rss()  # the high-water mark now starts at the current RSS
    if cfg.get("warmup", True):
        jax.block_until_ready(compiled(*args))
    times, out = [], None
    for _ in range(int(cfg["repeats"])):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mib() * MIB_TO_MB
    if mode == "forward":
        value, gnorm = float(out), float("nan")
    else:
        value = float(out[0])
        gnorm = float(np.sqrt(sum(float(np.sum(np.square(g)))
                                  for g in jax.tree.leaves(out[1]))))
    return {
        "T": T, "mode": mode, "checkpoint_every": ck, "compile_s": compile_s,
        "run_s": min(times), "run_s_all": times, "value": value, "grad_norm": gnorm,
        "finite": bool(np.isfinite(value) and (mode == "forward" or np.isfinite(gnorm))),
        "xla_temp_MB": mem.temp_size_in_bytes / MB,
        "xla_argument_MB": mem.argument_size_in_bytes / MB,
        "xla_output_MB": mem.output_size_in_bytes / MB,
        "rss_before_MB": rss_before,
        "rss_run_MB": peak - rss_before if peak_ok else None,
    }


def measure(cfg: dict) -> dict:
    """:func:`worker` of ``cfg`` in a fresh process (so that its peak RSS is its own)."""
    from slamjax.tools._machine import child_env

    cmd = [sys.executable, "-m", "slamjax.tools.bench_grad", "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _meta(n, d, quick):
    from slamjax.tools._machine import machine_info

    machine = machine_info(extra_packages=())
    _, graph, config, _, params, _, _, _ = setup(n, d)
    return {
        "n": n, "d": d, "m": 1, "dtype": "float32",
        "graph": f"small_world(k=4, p=0.1), |E|={graph.num_edges}, lam_max={graph.lam_max:.3f}",
        "variant": config.variant, "cg_maxiter": config.solver.maxiter,
        "params": {k: float(v) for k, v in params._asdict().items()},
        "loss": "diff.mean_f: (1/n) sum_i f_i(x_i, y_i) at step T",
        "grad_wrt": ["alpha", "beta", "rho", "gamma"],
        "memory": {"xla_temp_MB": "compiled.memory_analysis().temp_size_in_bytes / 1e6",
                   "rss_run_MB": "peak RSS (VmHWM, reset after compiling) minus RSS before "
                                 "the timed calls, fresh subprocess per configuration"},
        "jax": machine["jax"], "python": machine["python"],
        "cpu": f"{machine['cores']}-core {machine['cpu'] or 'CPU'}", "machine": machine,
        "loadavg_at_start": os.getloadavg(), "quick": quick,
    }


def bench_grad(*, n: int = 256, d: int = 10, Ts=(100, 300, 1000, 3000, 10000),
               modes=MODES, quick: bool = False, log=print) -> dict:
    """Every (T, mode), each in a fresh process; returns the payload (``meta``,
    ``records``). ``n``: agents; ``d``: d_x = d_y; ``Ts``: horizons; ``modes``: a subset of
    :data:`MODES`; ``quick``: recorded in the metadata; ``log``: progress lines."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; choose from {MODES}")
    meta, records = _meta(n, d, quick), []
    log(f"{'T':>6} {'mode':>13} {'ckpt':>5} {'compile s':>9} {'run s':>8} {'x fwd':>6} "
        f"{'XLA temp MB':>11} {'RSS run MB':>10}")
    for T in Ts:
        fwd_time = None
        for mode in modes:
            repeats = 5 if T <= 300 else (3 if T <= 3000 else 2)
            r = measure(dict(T=T, mode=mode, n=n, d=d, repeats=repeats, warmup=T <= 1000))
            if mode == "forward":
                fwd_time = r["run_s"]
            r["ratio_to_forward"] = r["run_s"] / fwd_time if fwd_time else None
            records.append(r)
            ratio = f"{r['ratio_to_forward']:.2f}" if r["ratio_to_forward"] else "-"
            rss = f"{r['rss_run_MB']:.1f}" if r["rss_run_MB"] is not None else "n/a"
            log(f"{T:>6} {mode:>13} {str(r['checkpoint_every'] or '-'):>5} "
                f"{r['compile_s']:>9.2f} {r['run_s']:>8.3f} {ratio:>6} "
                f"{r['xla_temp_MB']:>11.2f} {rss:>10}")
            if not r["finite"]:
                log(f"  WARNING: non-finite value/gradient at T={T}, mode={mode}")
    meta["loadavg_at_end"] = os.getloadavg()
    return {"meta": meta, "records": records}


def plot_bench_grad(payload: dict, path) -> Path:
    """Time, XLA temporaries and RSS rise against T per mode, from a :func:`bench_grad`
    ``payload``, written to ``path`` (PNG); returns the path."""
    from slamjax.io import save_figure
    from slamjax.tools._machine import new_figure

    records, meta = payload["records"], payload["meta"]
    styles = {"forward": ("k", "o", "forward (loss only)"),
              "reverse": ("tab:red", "s", "reverse mode, all steps stored"),
              "reverse_ckpt": ("tab:blue", "^", r"reverse mode, checkpoint every $\sqrt{T}$"),
              "forward_mode": ("tab:green", "D", "forward mode (4 JVPs)")}
    fig, axes = new_figure(1, 3, figsize=(15, 4.3))
    for mode, (color, marker, label) in styles.items():
        rs = sorted((r for r in records if r["mode"] == mode), key=lambda r: r["T"])
        if not rs:
            continue
        T = [r["T"] for r in rs]
        axes[0].loglog(T, [r["run_s"] for r in rs], marker=marker, color=color, label=label)
        axes[1].loglog(T, [max(r["xla_temp_MB"], 1e-3) for r in rs], marker=marker,
                       color=color, label=label)
        rss = [r["rss_run_MB"] for r in rs]
        if all(v is not None for v in rss):
            axes[2].loglog(T, [max(v, 0.1) for v in rss], marker=marker, color=color,
                           label=label)
    axes[0].set(xlabel="T (SLAM steps)", ylabel="seconds per call",
                title="time (gradient w.r.t. α, β, ρ, γ)")
    axes[1].set(xlabel="T (SLAM steps)", ylabel="MB",
                title="XLA temp buffers (memory_analysis)")
    axes[2].set(xlabel="T (SLAM steps)", ylabel="MB",
                title="peak RSS increase while running")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Differentiating a SLAM run: n={meta['n']}, d={meta['d']}, "
                 f"{meta['graph']}, CG({meta['cg_maxiter']}), float32, {meta['cpu']}",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def add_arguments(parser) -> None:
    """The command-line options of ``slamjax bench-grad`` (and ``experiments/bench_grad.py``)."""
    import argparse

    ap = parser
    ap.add_argument("--quick", action="store_true", help="n=64, T in (100, 1000)")
    ap.add_argument("--n", type=int, default=None, help="agents (default 256; quick 64)")
    ap.add_argument("--d", type=int, default=10, help="d_x = d_y (10)")
    ap.add_argument("--T", type=int, nargs="+", default=None,
                    help="horizons (default 100 300 1000 3000 10000)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                    help="programs to time (all four)")
    ap.add_argument("--out", default="results",
                    help="output directory (default ./results in the current directory); a "
                         "path ending in .json names the JSON file itself (the figure goes "
                         "next to it)")
    ap.add_argument("--name", default="bench_grad", help="<out>/<name>.json and .png")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def main(args) -> int:
    """Run ``slamjax bench-grad`` for parsed ``args`` (see :func:`add_arguments`)."""
    from slamjax.io import write_json
    from slamjax.tools._machine import NO_PLOT_NOTE, have_matplotlib
    from slamjax.tools.tune import output_paths

    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    js, png = output_paths(args.out, args.name)
    n = args.n or (64 if args.quick else 256)
    Ts = args.T or ([100, 1000] if args.quick else [100, 300, 1000, 3000, 10000])
    if n < 1 or args.d < 1 or min(Ts) < 1:
        raise ValueError("--n, --d and every --T must be ≥ 1")
    payload = bench_grad(n=n, d=args.d, Ts=Ts, modes=args.modes, quick=args.quick,
                         log=lambda s: print(s, flush=True))
    payload["meta"]["command"] = getattr(args, "command", "")
    out = write_json(js, payload)
    drawn = plot_bench_grad(payload, png) if have_matplotlib() else None
    print(f"wrote {out}" + (f" and {drawn}" if drawn else f" ({NO_PLOT_NOTE})"))
    return 0


if __name__ == "__main__":  # the worker process of measure()
    from slamjax.tools._runner import script_main

    sys.exit(script_main(sys.modules[__name__], "python -m slamjax.tools.bench_grad"))
