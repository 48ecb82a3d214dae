"""Cost of differentiating a whole SLAM run: time and memory of the gradient vs the forward run.

Problem: homogeneous quadratic (``make_quadratic``), n agents, d_x = d_y = d, one LL task,
float32, on a connected small-world graph (mean degree ≈ 4.4, sparse ``segment_sum`` mixing);
SLAM with CG(10), 1/α = 0.05, 1/β = 0.1, γ = 1, ρ at half the stability bound. Loss:
``slamjax.diff.mean_f(problem)``, (1/n) Σ_i f_i(x_i, y_i) at the final iterate (O(n·d), so the
loss adds nothing to the cost). For each horizon T, four programs (all ``jax.jit``-compiled
ahead of time) of the algorithm ``sj.slam(problem, graph, config)``:

* ``forward``      — the loss only (``final_loss_fn(alg, T, loss)``);
* ``reverse``      — loss and ∂/∂(α, β, ρ, γ) by reverse mode, storing every step: memory O(T);
* ``reverse_ckpt`` — the same with ``adjoint=Checkpointed(every=round(√T))``: memory O(√T),
  one extra forward pass;
* ``forward_mode`` — the same four derivatives with ``adjoint=Forward()`` (4 vmapped JVPs):
  memory O(1) in T.

All three gradient modes go through ``slamjax.diff.value_and_grad_run``'s compiled function
(``adjoint=Reverse()``, ``Checkpointed(every=c)``, ``Forward()``).

Memory is reported two ways:

* ``xla_temp_MB`` — ``jitted.lower(...).compile().memory_analysis().temp_size_in_bytes``: the
  XLA buffer assignment's scratch memory for one call (exact, deterministic, excludes the
  arguments and outputs, which are the same for all modes);
* ``rss_run_MB`` — the measured increase of the process's peak resident set size while the
  compiled program runs: each configuration runs in a fresh subprocess, the kernel's
  high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` after compilation, and the
  number is VmHWM after the calls minus VmRSS before them (compiler memory is not counted).

Times are wall-clock seconds per call, the minimum over 2–5 repeats (the 2-core CPU is shared
with other jobs: the load average is recorded in the JSON; treat times as ±30%). Writes
``results/bench_grad.json`` and ``results/bench_grad.png`` (``--out`` sets the JSON path; the
figure goes next to it).

    python experiments/bench_grad.py            # n=256, d=10, T = 100 … 10000 (~6–10 min)
    python experiments/bench_grad.py --quick --out /tmp/bench_grad.json   # n=64, T = 100, 1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (RESULTS, ROOT, current_rss_mib, machine_info, peak_rss_mib,  # noqa: E402
                     pyplot, reset_peak_rss, save_figure, write_json)

if str(ROOT) not in sys.path:  # allow running from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

MODES = ("forward", "reverse", "reverse_ckpt", "forward_mode")
MB = 1e6
MIB_TO_MB = 2**20 / MB


# ----------------------------------------------------------------------------------------
# worker: one (T, mode) in a fresh process
# ----------------------------------------------------------------------------------------
def setup(n: int, d: int, seed: int = 0):
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


def worker(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from slamjax.algorithm import split_static
    from slamjax.diff import (Checkpointed, Forward, Reverse, _value_and_grad_jit,
                              final_loss_fn, mean_f)

    T, mode = int(cfg["T"]), cfg["mode"]
    problem, graph, config, alg, params, data, x0, y0 = setup(cfg["n"], cfg["d"])
    loss = mean_f(problem)
    key = jax.random.key(0)
    ck = max(1, int(round(math.sqrt(T)))) if mode == "reverse_ckpt" else None
    jax.block_until_ready(jnp.ones(8) + 1)  # backend up before the baseline

    t0 = time.perf_counter()
    if mode == "forward":
        fn = jax.jit(final_loss_fn(alg, T, loss))
        args = (params, data, x0, y0, key)
        compiled = fn.lower(*args).compile()
    else:
        # value_and_grad_run's compiled function, lowered ahead of time (the graph's arrays
        # are arguments, the static rest of the algorithm a static argument)
        adjoint = {"reverse": Reverse(), "reverse_ckpt": Checkpointed(every=ck),
                   "forward_mode": Forward()}[mode]
        dyn, static = split_static(alg)
        args = (dyn, params, data, x0, y0, key)
        statics = dict(static=static, num_steps=T, loss=loss, log_every=None, adjoint=adjoint,
                       wrt=("params",))
        compiled = _value_and_grad_jit.lower(*args, **statics).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()

    repeats = int(cfg["repeats"])
    rss_before = current_rss_mib() * MIB_TO_MB
    peak_ok = reset_peak_rss()  # the high-water mark now starts at the current RSS
    if cfg.get("warmup", True):
        jax.block_until_ready(compiled(*args))
    times = []
    out = None
    for _ in range(repeats):
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


def run_isolated(cfg: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
def plot(records, meta, path: Path) -> Path:
    plt = pyplot()
    styles = {"forward": ("k", "o", "forward (loss only)"),
              "reverse": ("tab:red", "s", "reverse mode, all steps stored"),
              "reverse_ckpt": ("tab:blue", "^", r"reverse mode, checkpoint every $\sqrt{T}$"),
              "forward_mode": ("tab:green", "D", "forward mode (4 JVPs)")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
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
    return save_figure(fig, path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n=64, T in (100, 1000)")
    ap.add_argument("--n", type=int, default=None, help="agents (default 256; quick 64)")
    ap.add_argument("--d", type=int, default=10, help="d_x = d_y")
    ap.add_argument("--T", type=int, nargs="+", default=None,
                    help="horizons (default 100 300 1000 3000 10000)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out", default=str(RESULTS / "bench_grad.json"),
                    help="JSON path (the figure is written next to it, .png)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    n = args.n or (64 if args.quick else 256)
    Ts = args.T or ([100, 1000] if args.quick else [100, 300, 1000, 3000, 10000])
    machine = machine_info(extra_packages=())
    _, graph, config, _, params, _, _, _ = setup(n, args.d)
    meta = {
        "n": n, "d": args.d, "m": 1, "dtype": "float32",
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
        "loadavg_at_start": os.getloadavg(), "quick": args.quick,
    }
    records = []
    print(f"{'T':>6} {'mode':>13} {'ckpt':>5} {'compile s':>9} {'run s':>8} {'x fwd':>6} "
          f"{'XLA temp MB':>11} {'RSS run MB':>10}")
    for T in Ts:
        fwd_time = None
        for mode in args.modes:
            repeats = 5 if T <= 300 else (3 if T <= 3000 else 2)
            cfg = dict(T=T, mode=mode, n=n, d=args.d, repeats=repeats, warmup=T <= 1000)
            r = run_isolated(cfg)
            if mode == "forward":
                fwd_time = r["run_s"]
            r["ratio_to_forward"] = r["run_s"] / fwd_time if fwd_time else None
            records.append(r)
            ratio = f"{r['ratio_to_forward']:.2f}" if r["ratio_to_forward"] else "-"
            rss = f"{r['rss_run_MB']:.1f}" if r["rss_run_MB"] is not None else "n/a"
            print(f"{T:>6} {mode:>13} {str(r['checkpoint_every'] or '-'):>5} "
                  f"{r['compile_s']:>9.2f} {r['run_s']:>8.3f} {ratio:>6} "
                  f"{r['xla_temp_MB']:>11.2f} {rss:>10}", flush=True)
            if not r["finite"]:
                print(f"  WARNING: non-finite value/gradient at T={T}, mode={mode}")
    meta["loadavg_at_end"] = os.getloadavg()
    out = write_json(Path(args.out).with_suffix(".json"), {"meta": meta, "records": records})
    png = plot(records, meta, out.with_suffix(".png"))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
