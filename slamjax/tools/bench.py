"""Throughput of quadratic SLAM: slamjax against the ways the same recursion is usually written.
The library behind ``slamjax bench`` and ``experiments/bench_throughput.py``.

Workload (paper eq. (5), both levels with consensus): the quadratic bilevel problem of
:mod:`slamjax.problems.quadratic` with a Hessian shared by all agents, m = 1 LL task,
d = d_x = d_y ∈ {10, 100}, the eq.-(23) hypergradient by CG with K = 10 iterations, exact
gradients, α = β = 30, ρ = γ = 1, float32. Graphs: a Newman–Watts small world of mean degree
≈ 4.4 (``sw``; connected by construction, unlike a sparse Erdős–Rényi graph at large n) and the
ring (stencil).

Implementations, side by side in one process: ``slamjax`` (``sj.slam`` stepped by
``sj.iterate`` inside one ``jit``, the state donated), ``slamjax_block``
(``SLAMConfig(agent_block=B)``), ``slamjax_dense`` (a dense Laplacian, n ≤ 4096),
``slamjax_rowmajor`` (``--rowmajor-hvp``), ``numpy_batched`` (stacked NumPy + scipy.sparse),
``numpy_loop`` and ``torch_loop`` (a Python loop over agents, if torch is installed).

Reported per (graph, d, n, implementation): agent-steps/s (best of round-robin repeats), compile
time, XLA buffer memory and peak RSS; also the machine's bandwidth and GEMM peak and from them
the roofline. The multi-device section (:mod:`slamjax.tools._bench_sharding`) and the kernel
table (:mod:`slamjax.tools._bench_table`: every library path against a hand-written
``jit`` + ``lax.scan`` kernel on 1 core and on all cores) run in worker processes.

Function API: :func:`bench_throughput` (returns the payload), :func:`run_table`,
:func:`run_sharding`, :func:`plot`, :func:`plot_table`; command line: :func:`add_arguments` /
:func:`main`. The implementations are importable from here too (:class:`NumpyBatched`,
:func:`kernel_runner`, :func:`table_worker`, ...).
"""

from __future__ import annotations

import gc
import json
import sys
import time

from slamjax.tools import _bench_impls as _impls
from slamjax.tools import _bench_table as _table
from slamjax.tools._bench_impls import (NumpyBatched, NumpyLoop, Timed, TorchLoop, agreement_check,
                                        build_graph, bytes_per_agent_step, csr_laplacian,
                                        default_block, flops_per_agent_step, host_arrays,
                                        measure_machine, prepare_host, prepare_slamjax,
                                        rowmajor_quadratic, slamjax_runner, small_world_edges)
from slamjax.tools._bench_report import plot, refresh_roofline, roofline, summarize
from slamjax.tools._bench_sharding import print_sharding, run_sharding, sharding_worker
from slamjax.tools._bench_table import (print_table_targets, kernel_program,
                                        kernel_runner, library_runner, plot_table, run_table,
                                        table_targets, table_worker, user_data, user_problem,
                                        user_quadratic)
from slamjax.problems.quadratic import make_quadratic

__all__ = ["DESCRIPTION", "ALPHA", "BETA", "GAMMA", "RHO", "K_CG", "IMPLS", "TABLE_IMPLS",
           "NumpyBatched", "NumpyLoop", "TorchLoop", "Timed", "agreement_check", "build_graph",
           "bytes_per_agent_step", "csr_laplacian", "default_block", "flops_per_agent_step",
           "host_arrays", "measure_machine", "prepare_host", "prepare_slamjax",
           "rowmajor_quadratic", "slamjax_runner", "small_world_edges", "make_quadratic",
           "kernel_program", "kernel_runner", "library_runner", "table_worker", "run_table",
           "table_targets", "user_data", "user_problem", "user_quadratic", "sharding_worker",
           "run_sharding", "plot", "plot_table", "roofline", "summarize", "bench_throughput",
           "add_arguments", "main"]

DESCRIPTION = ("Throughput of quadratic SLAM (agent-steps/s) against batched NumPy, per-agent "
               "loops and a hand-written jit+scan kernel, with the machine's roofline. Writes "
               "<out>/<name>.json, <name>.png and <name>_table.png.")
"""The command's description (``slamjax bench --help``)."""
ALPHA = _impls.ALPHA
"""UL inverse step α of the workload (30)."""
BETA = _impls.BETA
"""LL inverse step β of the workload (30)."""
RHO = _impls.RHO
"""Penalty ρ of the workload (1)."""
GAMMA = _impls.GAMMA
"""Lagrangian scaling γ of the workload (1)."""
K_CG = _impls.K_CG
"""CG iterations of the hypergradient (10)."""
IMPLS = _impls.IMPLS
"""The implementations of the throughput section."""
TABLE_IMPLS = _table.TABLE_IMPLS
"""The implementations of the kernel table."""


def _todo(n, d, rowmajor, loop_max, torch_max, have_torch):
    todo, blk = ["slamjax"], default_block(d)
    if n > blk:
        todo.append("slamjax_block")
    if rowmajor:
        todo.append("slamjax_rowmajor")
    if n <= 4096:
        todo.append("slamjax_dense")
    todo.append("numpy_batched")
    if n <= loop_max:
        todo.append("numpy_loop")
    if have_torch and n <= torch_max:
        todo.append("torch_loop")
    return todo


def _prepare(impl, graph, d, n, target_s) -> Timed:
    from slamjax import graphs as G

    blk = default_block(d)
    if impl == "slamjax":
        return prepare_slamjax(graph, d, n, None, target_s)
    if impl == "slamjax_block":
        return prepare_slamjax(graph, d, n, blk, target_s)
    if impl == "slamjax_rowmajor":
        return prepare_slamjax(graph, d, n, blk if n > blk else None, target_s, rowmajor=True)
    if impl == "slamjax_dense":
        return prepare_slamjax(G.with_mixing(graph, "dense"), d, n, None, target_s)
    if impl == "numpy_batched":
        return prepare_host(NumpyBatched, graph, d, n, target_s)
    if impl == "numpy_loop":
        return prepare_host(NumpyLoop, graph, d, n, min(target_s, 2.0))
    return prepare_host(TorchLoop, graph, d, n, min(target_s, 2.0))


def _one_size(kind, d, n, todo, repeats, target_s, log) -> list:
    """Every implementation of one (graph, d, n): prepared, then timed round-robin."""
    records, timers = [], {}
    t0 = time.perf_counter()
    graph = build_graph(kind, n)
    gtime = time.perf_counter() - t0
    for impl in todo:
        try:
            timers[impl] = _prepare(impl, graph, d, n, target_s)
        except Exception as e:  # e.g. out of memory: record and go on
            log(f"{kind:5s} {d:4d} {n:8d} {impl:14s} FAILED: {type(e).__name__}: "
                f"{str(e)[:200]}")
            records.append({"graph": kind, "d": d, "n": n, "impl": impl,
                            "error": f"{type(e).__name__}: {str(e)[:500]}"})
    # round-robin repeats: every implementation sees the same machine state (the machine may
    # be shared); the best time of each is kept. The slow per-agent loops are timed once.
    for rep in range(repeats):
        for impl, tm in timers.items():
            if rep == 0 or not impl.endswith("_loop"):
                tm.time_once()
    for impl, tm in timers.items():
        r = tm.result()
        r.update(graph=kind, d=d, n=n, impl=impl, graph_build_s=gtime,
                 mean_degree=graph.mean_degree)
        records.append(r)
        mem = r.get("xla_buffers_MiB")
        log(f"{kind:5s} {d:4d} {n:8d} {impl:14s} {r['agent_steps_per_s']:14.3e} "
            f"{r['compile_s']:9.2f} {(f'{mem:8.1f}' if mem is not None else '       -')} "
            f"{r['peak_rss_MiB']:8.0f} {r['rss_increase_MiB'] or 0:8.0f}")
    del timers, graph
    gc.collect()
    return records


def _have_torch(skip: bool, log) -> bool:
    if skip:
        return False
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        log("torch not installed: skipping the PyTorch loop (pip install torch, optional)")
        return False


def _sizes(d, quick, n_min, n_max):
    nmax = n_max or (4096 if quick else (2**20 if d <= 10 else 2**18))
    base = [8, 64, 512, 1024, 4096] if quick else [8, 64, 512, 1024, 4096, 32768, 262144, 2**20]
    return [n for n in base if n_min <= n <= nmax]


def _sharding_spec(n, quick, repeats):
    return {"n": n or (2**16 if quick else 2**20), "d": 10, "graphs": ["ring", "sw"],
            "device_counts": [1, 2, 4], "steps": 3 if quick else 4, "repeats": max(2, repeats)}


def bench_throughput(*, d_list=(10, 100), kinds=("sw", "ring"), quick=False, n_min=1,
                     n_max=None, repeats=None, target_s=None, loop_max_n=None, no_torch=False,
                     rowmajor_hvp=False, table_spec=None, sharding_n=None, sharding=True,
                     command="", log=print) -> dict:
    """The whole benchmark; returns the payload (``machine``, ``machine_limits``,
    ``roofline``, ``config``, ``records``, ``sharding``, ``targets``, ``kernel_table``, ...).

    ``d_list``/``kinds``: dimensions and graphs (``sw``, ``ring``); ``quick``: small sizes;
    ``n_min``/``n_max``: size range; ``repeats``/``target_s``: timed repeats and seconds per
    call; ``loop_max_n``: largest n of the per-agent loops; ``no_torch``; ``rowmajor_hvp``;
    ``table_spec``: the kernel table's spec (None: skipped); ``sharding_n``/``sharding``: the
    multi-device section; ``command``: recorded; ``log``: progress lines."""
    from slamjax.tools._machine import machine_info

    bad = [k for k in kinds if k not in ("sw", "ring")]
    if bad:
        raise ValueError(f"--graphs: unknown graph(s) {bad}; choose from sw, ring")
    repeats = repeats or (1 if quick else 3)
    target_s = target_s or (0.15 if quick else 0.4)
    loop_max = loop_max_n or (1024 if quick else 32768)
    torch_max = min(loop_max, 1024 if quick else 4096)
    have_torch = _have_torch(no_torch, log)
    info = machine_info()
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['mem_GiB']} GiB, load "
        f"{info['load_avg']}, jax {info['jax']} on {info['backend']} ({info['gpu']})")
    t_start = time.perf_counter()
    mach = measure_machine(repeats, d_list)
    log("machine limits: " + ", ".join(f"{k}={v:.1f}" for k, v in mach.items()))
    roof = roofline(mach, d_list)
    agree = agreement_check(rowmajor=rowmajor_hvp)
    log("agreement with slamjax after 5 steps (max rel |Δx|): " +
        ", ".join(f"{k}={v:.1e}" for k, v in agree.items()))
    records = []
    log(f"{'graph':5s} {'d':>4s} {'n':>8s} {'impl':14s} {'agent-steps/s':>14s} "
        f"{'compile s':>9s} {'XLA MiB':>8s} {'RSS MiB':>8s} {'+RSS MiB':>8s}")
    for kind in kinds:
        for d in d_list:
            for n in _sizes(d, quick, n_min, n_max):
                todo = _todo(n, d, rowmajor_hvp, loop_max, torch_max, have_torch)
                records += _one_size(kind, d, n, todo, repeats, target_s, log)
    table = run_table(table_spec) if table_spec is not None else None
    if table is not None:
        print_table_targets(table)
    shard = None
    if sharding:
        spec = _sharding_spec(sharding_n, quick, repeats)
        log(f"sharding: n={spec['n']}, d=10, 1/2/4 forced host devices (subprocess) ...")
        shard = run_sharding(spec)
        print_sharding(shard)
    # the machine may be shared: measure the limits again and keep the better of the two
    for k, v in measure_machine(repeats, d_list).items():
        mach[k] = max(mach[k], v)
    for d in d_list:
        refresh_roofline(roof[str(d)], mach)
    config = {"d": list(d_list), "graphs": list(kinds), "K_cg": K_CG, "m": 1, "alpha": ALPHA,
              "beta": BETA, "rho": RHO, "gamma": GAMMA, "dtype": "float32",
              "repeats": repeats, "target_s_per_call": target_s, "quick": quick,
              "loop_max_n": loop_max, "torch_max_n": torch_max,
              "block": {str(d): default_block(d) for d in d_list},
              "graph_note": "sw = Newman-Watts small world k=4, p=0.1 (mean degree 4.4, "
                            "connected); ER with mean degree 4 is disconnected at large n",
              "command": command}
    return {"machine": info, "machine_limits": mach, "roofline": roof, "config": config,
            "agreement_max_rel_diff": agree, "records": records, "sharding": shard,
            "targets": summarize(records, roof, mach, shard, quick), "kernel_table": table,
            "total_runtime_s": time.perf_counter() - t_start}


def _ints(text: str, flag: str) -> list:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give comma-separated integers, e.g. {flag} "
                         "10,100") from None
    if not vals or min(vals) < 1:
        raise ValueError(f"{flag} {text!r}: give comma-separated integers ≥ 1")
    return vals


def _table_spec(args) -> dict:
    quick = args.quick
    return {"d": _ints(args.table_d or ("10" if quick else "10,100"), "--table-d"),
            "n": _ints(args.table_n or ("256,1024" if quick else "1024,4096"), "--table-n"),
            "impls": list(TABLE_IMPLS), "graph": "sw", "loop_max_n": 1024,
            # many short calls, round-robin, best kept: robust to other jobs on a shared machine
            "repeats": args.repeats or (2 if quick else 9),
            "target_s": args.target_s or (0.1 if quick else 0.2)}


def add_arguments(parser) -> None:
    """The command-line options of ``slamjax bench`` (and
    ``experiments/bench_throughput.py``)."""
    import argparse

    ap = parser
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (~2 min)")
    ap.add_argument("--d", default="10,100", help="dimensions d = d_x = d_y (10,100)")
    ap.add_argument("--graphs", default="sw,ring", help="sw (small world) and/or ring")
    ap.add_argument("--n-max", type=int, default=None,
                    help="largest n (default 2^20 at d=10, 2^18 at d=100; quick: 4096)")
    ap.add_argument("--n-min", type=int, default=1, help="smallest n")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (best is kept)")
    ap.add_argument("--target-s", type=float, default=None,
                    help="seconds per timed slamjax call (sizes the scan length)")
    ap.add_argument("--loop-max-n", type=int, default=None,
                    help="largest n for the per-agent loops (default 32768; torch 4096)")
    ap.add_argument("--rowmajor-hvp", action="store_true",
                    help="also time slamjax on the quadratic written with agent-row-major "
                         "einsums (slamjax_rowmajor; same numbers, no layout transposes)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch loop")
    ap.add_argument("--no-sharding", action="store_true", help="skip the multi-device section")
    ap.add_argument("--sharding-n", type=int, default=None, help="n for the sharding section")
    ap.add_argument("--out", default="results",
                    help="output directory (default ./results in the current directory)")
    ap.add_argument("--name", default="bench_throughput",
                    help="<out>/<name>.json, <name>.png, <name>_table.png")
    ap.add_argument("--sharding-only", action="store_true",
                    help="run only the multi-device section and merge it into an existing "
                         "<out>/<name>.json")
    ap.add_argument("--table", action="store_true",
                    help="run only the kernel table (every library path against the "
                         "hand-written jit+scan kernel, batched NumPy and the per-agent loop, "
                         "on 1 core and on all cores) and merge it into <out>/<name>.json")
    ap.add_argument("--no-table", action="store_true", help="skip the kernel table")
    ap.add_argument("--table-d", default=None, help="d values of the table (10,100)")
    ap.add_argument("--table-n", default=None, help="n values of the table (1024,4096)")
    ap.add_argument("--sharding-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--table-worker", default=None, help=argparse.SUPPRESS)


def _outputs(args):
    from slamjax.io import check_name, check_output_dir, check_output_file
    from slamjax.tools._machine import have_matplotlib

    out = check_output_dir(args.out, "--out")
    name = check_name(args.name)
    paths = {"json": out / f"{name}.json"}
    if have_matplotlib():
        paths.update(png=out / f"{name}.png", table_png=out / f"{name}_table.png")
    for p in paths.values():
        check_output_file(p, "--out/--name: output file")
    return paths


def _merge_only(args, paths, log) -> int:
    """``--table`` / ``--sharding-only``: one section, merged into the existing JSON."""
    from slamjax.io import write_json
    from slamjax.tools._machine import machine_info

    path = paths["json"]
    if args.sharding_only and not path.is_file():
        raise ValueError(f"--sharding-only: {path} does not exist; run without "
                         "--sharding-only first")
    results = json.loads(path.read_text()) if path.is_file() else {"machine": machine_info()}
    if args.table:
        results["kernel_table"] = table = run_table(_table_spec(args))
        table["machine"] = machine_info()
        print_table_targets(table)
        write_json(path, results)
        png = plot_table(table, paths["table_png"]) if "table_png" in paths else None
        log(f"merged into {path}; figure {png}")
        return 0
    spec = _sharding_spec(args.sharding_n, args.quick, args.repeats or 3)
    log(f"sharding: n={spec['n']}, d=10, 1/2/4 forced host devices (subprocess) ...")
    results["sharding"] = sharding = run_sharding(spec)
    print_sharding(sharding)
    results["targets"] = summarize(results["records"], results["roofline"],
                                   results["machine_limits"], sharding,
                                   results["config"]["quick"])
    write_json(path, results)
    log(f"merged into {path}")
    return 0


def main(args) -> int:
    """Run ``slamjax bench`` for parsed ``args`` (see :func:`add_arguments`)."""
    from slamjax.io import write_json
    from slamjax.tools._machine import NO_PLOT_NOTE

    if args.sharding_worker:
        print("SHARDING" + json.dumps(sharding_worker(json.loads(args.sharding_worker))),
              flush=True)
        return 0
    if args.table_worker:
        print("TABLE" + json.dumps(table_worker(json.loads(args.table_worker))), flush=True)
        return 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    paths = _outputs(args)
    if args.table or args.sharding_only:
        return _merge_only(args, paths, log)
    kinds = [k.strip() for k in args.graphs.split(",") if k.strip()]
    results = bench_throughput(
        d_list=_ints(args.d, "--d"), kinds=kinds, quick=args.quick, n_min=args.n_min,
        n_max=args.n_max, repeats=args.repeats, target_s=args.target_s,
        loop_max_n=args.loop_max_n, no_torch=args.no_torch, rowmajor_hvp=args.rowmajor_hvp,
        table_spec=None if args.no_table else _table_spec(args), sharding_n=args.sharding_n,
        sharding=not args.no_sharding, command=getattr(args, "command", ""), log=log)
    write_json(paths["json"], results)
    png = plot(results, paths["png"]) if "png" in paths else None
    if results["kernel_table"] is not None and "table_png" in paths:
        plot_table(results["kernel_table"], paths["table_png"])
    log("\ntargets:")
    for t in results["targets"]:
        log(f"  [{'met' if t['met'] else 'MISSED' if t['met'] is False else 'n/a'}] "
            f"{t['target']}: {t['measured']}")
    log(f"\nwrote {paths['json']}" + (f" and {png}" if png else f" ({NO_PLOT_NOTE})")
        + f" ({results['total_runtime_s']:.0f} s)")
    return 0


if __name__ == "__main__":  # the worker processes of run_table() and run_sharding()
    from slamjax.tools._runner import script_main

    sys.exit(script_main(sys.modules[__name__], "python -m slamjax.tools.bench"))
