"""The kernel table of ``slamjax bench``: quadratic SLAM written by a *user* as plain per-agent
``f`` and ``g`` through ``BilevelProblem`` (HVPs by autodiff, or with the user's own
``hvp_yy``/``cross_xy``) and the built-in quadratic, against the same recursion hand-written as
one ``jit`` + ``lax.scan`` over stacked arrays (:func:`kernel_program`), batched NumPy and the
per-agent loop, timed side by side per core count in a worker process
(``python -m slamjax.tools.bench --table-worker SPEC``; 1 core through ``taskset -c 0``)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import slamjax as sj
from slamjax.problems.quadratic import make_quadratic
from slamjax.tools._bench_impls import (ALPHA, BETA, GAMMA, K_CG, RHO, NumpyBatched, NumpyLoop,
                                        Timed, build_graph, csr_laplacian, prepare_host)
from slamjax.tools._machine import best_time, child_env


def user_quadratic(products: bool):
    """The benchmark's quadratic written the way a user writes it through ``BilevelProblem``:
    plain per-agent ``f`` and ``g`` on (d,) vectors, ``H @ y`` style products (no einsum
    tricks, no knowledge of the agent axis). ``products=True`` also supplies ``hvp_yy`` and
    ``cross_xy`` written the same way."""
    def g(x, y, data, batch):
        H, B = data.shared["H"], data.shared["B"]
        return 0.5 * y @ H @ y - y @ (B @ x + data.agents["b"])

    def f(x, y, data, batch):
        P = data.shared["P"]
        return 0.5 * x @ P @ x + data.agents["p"] @ x + 0.5 * jnp.sum((y - data.agents["t"]) ** 2)

    if not products:
        return sj.BilevelProblem(f=f, g=g, name="user-quadratic-autodiff")

    def hvp_yy(x, y, data, batch, v):
        return data.shared["H"] @ v

    def cross_xy(x, y, data, batch, v):
        return -(data.shared["B"].T @ v)

    return sj.BilevelProblem(f=f, g=g, hvp_yy=hvp_yy, cross_xy=cross_xy,
                             name="user-quadratic-products")


_USER_PROBLEMS: dict = {}


def user_problem(products: bool):
    """Cached (one problem object per kind, so jit caches are shared across sizes)."""
    return _USER_PROBLEMS.setdefault(products, user_quadratic(products))


def user_data(n: int, d: int):
    """The same numbers as ``make_quadratic(n, d, d, 1, seed=0)`` in the user's layout:
    y is a (d,) vector per agent (no task axis)."""
    _, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
    shared = {"H": data.shared["H"][0], "B": data.shared["B"][0], "P": data.shared["P"]}
    agents = {"b": data.agents["b"][:, 0], "p": data.agents["p"], "t": data.agents["t"][:, 0]}
    return sj.ProblemData(shared=shared, agents=agents), x0, y0[:, 0]


def kernel_program(steps: int, K: int = K_CG):
    """The hand-written kernel: eq. (5) on stacked (n, d) arrays as ONE ``jit`` + ``lax.scan``,
    no library code — the row-major GEMMs ``y @ H`` (H symmetric), CG with K iterations as a
    ``fori_loop`` over the (n, d) block with per-agent step lengths, the Laplacian as
    ``deg·v − segment_sum(v[receivers], senders)`` on the same edge arrays, L·v carried from
    the dual step to the next primal step. What a competent user writes by hand for this one
    problem (no unrolling or other tuning)."""
    ib, ia, rg, rog = 1.0 / BETA, 1.0 / ALPHA, RHO * GAMMA, RHO / GAMMA

    def lap(v, s, r, deg):
        return deg[:, None] * v - jax.ops.segment_sum(v[r], s, num_segments=v.shape[0],
                                                      indices_are_sorted=True)

    def cg(H, rhs):
        def body(_, c):
            v, r, q, rs = c
            hq = q @ H
            a = (rs / jnp.sum(q * hq, axis=1))[:, None]
            v = v + a * q
            r = r - a * hq
            rs_new = jnp.sum(r * r, axis=1)
            q = r + (rs_new / rs)[:, None] * q
            return v, r, q, rs_new

        rs = jnp.sum(rhs * rhs, axis=1)
        return lax.fori_loop(0, K, body, (jnp.zeros_like(rhs), rhs, rhs, rs))[0]

    def run(state, H, Bm, P, b, p, t, s, r, deg):
        def body(c, _):
            x, y, ux, uy, Lx, Ly = c
            hg = y @ H - (x @ Bm.T + b)                          # ∇_y g (H symmetric)
            y1 = y - ib * (hg + GAMMA * uy + rg * Ly)             # (5a)
            Ly = lap(y1, s, r, deg)
            uy = uy + rog * Ly                                    # (4b)
            v = cg(H, y1 - t)                                     # H v = ∇_y f
            hf = x @ P + p + v @ Bm                               # (23), P symmetric
            x1 = x - ia * (hf + GAMMA * ux + rg * Lx)             # (5b)
            Lx = lap(x1, s, r, deg)
            ux = ux + rog * Lx                                    # (4d)
            return (x1, y1, ux, uy, Lx, Ly), None

        return lax.scan(body, state, None, length=steps)[0]

    return jax.jit(run, donate_argnums=0)


def kernel_runner(graph, d, n, steps):
    """(call(state) -> state, fresh_state(), compile seconds) for the hand-written kernel."""
    data, x0, y0 = user_data(n, d)
    H, Bm, P = (np.asarray(data.shared[k]) for k in ("H", "B", "P"))
    b, p, t = (np.asarray(data.agents[k]) for k in ("b", "p", "t"))
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    deg = np.asarray(graph.degree).astype(np.float32)
    x0n, y0n = np.asarray(x0), np.asarray(y0)


    Lx0 = jnp.asarray(csr_laplacian(graph) @ x0n)
    Ly0 = jnp.asarray(csr_laplacian(graph) @ y0n)
    consts = tuple(jnp.asarray(a) for a in (H, Bm, P, b, p, t, s, r, deg))

    def fresh_state():
        return (jnp.asarray(x0n), jnp.asarray(y0n), jnp.zeros_like(x0), jnp.zeros_like(y0),
                Lx0 + 0, Ly0 + 0)

    fn = kernel_program(steps)
    t0 = time.perf_counter()
    compiled = fn.lower(fresh_state(), *consts).compile()
    compile_s = time.perf_counter() - t0

    def call(state):
        return compiled(state, *consts)

    return call, fresh_state, compile_s


def library_runner(path, graph, d, n, steps):
    """(call, fresh_state, compile seconds) for one library path: ``autodiff`` (the user's
    f, g only), ``user_products`` (with the user's ``hvp_yy``/``cross_xy``) or ``builtin``
    (:mod:`slamjax.problems.quadratic`)."""
    if path == "builtin":
        problem, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
    else:
        problem = user_problem(path == "user_products")
        data, x0, y0 = user_data(n, d)
    alg = sj.slam(problem, graph, sj.SLAMConfig("slam", sj.CG(K_CG)))
    params = sj.SLAMParams.create(ALPHA, BETA, RHO, GAMMA)
    key = jax.random.key(0)

    def run(alg, state, params, data, key):
        return sj.iterate(alg, params, data, state, key, steps)

    def fresh_state():
        return alg.init(x0 + 0, y0 + 0, data)

    fn = jax.jit(run, donate_argnums=1)
    t0 = time.perf_counter()
    compiled = fn.lower(alg, fresh_state(), params, data, key).compile()
    compile_s = time.perf_counter() - t0

    def call(state):
        return compiled(alg, state, params, data, key)

    return call, fresh_state, compile_s


TABLE_IMPLS = ("kernel", "slamjax_autodiff", "slamjax_user_products", "slamjax_builtin",
               "numpy_batched", "numpy_loop")


def _final_x(state):
    x = state[0] if isinstance(state, tuple) else state.x
    return np.asarray(x).reshape(x.shape[0], -1)


def table_worker(spec: dict) -> dict:
    """All paths of one (d, n) side by side in THIS process (its CPU affinity is the core
    count being measured): compile, warm up, check that the library paths compute the
    kernel's iterates, then time round-robin (best of ``repeats``)."""
    out = {"affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else None, "rows": []}
    for d in spec["d"]:
        for n in spec["n"]:
            graph = build_graph("sw", n)
            # scan length from a short kernel probe, the same for every compiled path
            call, fresh, _ = kernel_runner(graph, d, n, 2)
            jax.block_until_ready(call(fresh()))
            s0 = fresh()
            t = best_time(lambda: jax.block_until_ready(call(s0)), 1)
            steps = int(min(max(2, spec["target_s"] / max(t / 2, 1e-7)), 5000))
            timers, compile_s, finals = {}, {}, {}
            for impl in spec["impls"]:
                if impl == "numpy_loop" and n > spec["loop_max_n"]:
                    continue
                if impl in ("numpy_batched", "numpy_loop"):
                    cls = NumpyBatched if impl == "numpy_batched" else NumpyLoop
                    tm = prepare_host(cls, graph, d, n, spec["target_s"] if impl ==
                                      "numpy_batched" else min(spec["target_s"], 1.0))
                    timers[impl] = tm
                    continue
                if impl == "kernel":
                    call, fresh, comp = kernel_runner(graph, d, n, steps)
                else:
                    call, fresh, comp = library_runner(impl[len("slamjax_"):], graph, d, n,
                                                       steps)
                finals[impl] = _final_x(jax.block_until_ready(call(fresh())))  # warm-up

                def once(call=call, fresh=fresh):
                    s = fresh()
                    jax.block_until_ready(s)
                    t0 = time.perf_counter()
                    jax.block_until_ready(call(s))
                    return time.perf_counter() - t0

                compile_s[impl] = comp
                timers[impl] = Timed(once, n * steps, {"steps_per_call": steps})
            ref = finals["kernel"]
            scale = float(np.max(np.abs(ref)))
            for rep in range(spec["repeats"]):
                for impl, tm in timers.items():
                    if rep == 0 or impl != "numpy_loop":
                        tm.time_once()
            row = {"d": d, "n": n, "steps_per_call": steps, "impls": {}}
            kr = timers["kernel"].result()["agent_steps_per_s"]
            for impl, tm in timers.items():
                r = tm.result()
                e = {"agent_steps_per_s": r["agent_steps_per_s"],
                     "vs_kernel": r["agent_steps_per_s"] / kr}
                if impl in compile_s:
                    e["compile_s"] = compile_s[impl]
                if impl in finals:
                    e["max_rel_diff_vs_kernel"] = float(np.max(np.abs(finals[impl] - ref))
                                                        / scale)
                row["impls"][impl] = e
            out["rows"].append(row)
            print("TABLEROW" + json.dumps(row), flush=True)
            del timers
            gc.collect()
    return out


def run_table(spec: dict, timeout: float = 1800) -> dict:
    """The table on 1 core (``taskset -c 0``) and on all cores, each in its own process."""
    res = {"spec": spec, "by_cores": {}}
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    plans = [("1", ["taskset", "-c", "0"])] if ncores > 1 else []
    plans.append((str(ncores), []))
    for label, prefix in plans:
        cmd = prefix + [sys.executable, "-m", "slamjax.tools.bench", "--table-worker",
                        json.dumps(spec)]
        print(f"table on {label} core(s): {' '.join(prefix) or '(all cores)'} ...", flush=True)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                    env=child_env())
            out = None
            t0 = time.perf_counter()
            for line in proc.stdout:
                if line.startswith("TABLEROW"):
                    print_table_row(label, json.loads(line[len("TABLEROW"):]))
                elif line.startswith("TABLE"):
                    out = json.loads(line[len("TABLE"):])
                if time.perf_counter() - t0 > timeout:
                    proc.kill()
                    break
            proc.wait()
            res["by_cores"][label] = out if out is not None else {
                "error": f"worker exited with {proc.returncode}"}
        except FileNotFoundError as e:  # no taskset
            res["by_cores"][label] = {"error": str(e)}
    res["targets"] = table_targets(res)
    return res


def print_table_row(label, row):
    """One row of the kernel table (a (d, n) on ``label`` cores) as a progress line."""
    parts = []
    for impl, e in row["impls"].items():
        extra = f" Δ{e['max_rel_diff_vs_kernel']:.0e}" if "max_rel_diff_vs_kernel" in e else ""
        parts.append(f"{impl} {e['agent_steps_per_s']:.3g} ({e['vs_kernel']:.2f}×{extra})")
    print(f"  [{label} core] d={row['d']} n={row['n']}: " + ", ".join(parts), flush=True)


def table_targets(res: dict) -> list:
    """The kernel table's targets (≥ 0.9× the kernel, ≥ 2×/3× batched NumPy at d = 10/100,
    ≥ 150×/50× the per-agent loop), per core count and (d, n)."""
    out = []
    for label, run in res["by_cores"].items():
        if not run or "rows" not in run:
            continue
        for row in run["rows"]:
            d, n, im = row["d"], row["n"], row["impls"]
            for p in ("slamjax_autodiff", "slamjax_user_products", "slamjax_builtin"):
                if p not in im:
                    continue
                v = im[p]["agent_steps_per_s"]
                out.append({"cores": label, "d": d, "n": n, "path": p,
                            "target": "≥ 0.9× kernel", "value": im[p]["vs_kernel"],
                            "met": im[p]["vs_kernel"] >= 0.9})
                for peer, what, goals in (("numpy_batched", "batched NumPy", (2.0, 3.0)),
                                          ("numpy_loop", "per-agent loop", (150.0, 50.0))):
                    if peer not in im:
                        continue
                    goal = goals[0] if d <= 10 else goals[1]
                    r = v / im[peer]["agent_steps_per_s"]
                    out.append({"cores": label, "d": d, "n": n, "path": p,
                                "target": f"≥ {goal:g}× {what}", "value": r,
                                "met": r >= goal})
    return out


def print_table_targets(table):
    """Every target of the kernel table, met or MISSED."""
    for t in table["targets"]:
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['cores']} core(s) d={t['d']} "
              f"n={t['n']} {t['path']} {t['target']}: {t['value']:.2f}", flush=True)


def plot_table(table: dict, path: Path) -> Path | None:
    """Grouped bars: agent-steps/s of every implementation per (d, n), one panel per core
    count."""
    runs = {k: v for k, v in table["by_cores"].items() if v and "rows" in v}
    if not runs:
        return None
    from slamjax.io import save_figure
    from slamjax.tools._machine import new_figure

    fig, axes = new_figure(1, len(runs), figsize=(6.5 * len(runs), 4.2), squeeze=False)
    colors = {"kernel": "k", "slamjax_autodiff": "C0", "slamjax_user_products": "C9",
              "slamjax_builtin": "C2", "numpy_batched": "C1", "numpy_loop": "C3"}
    for ax, (label, run) in zip(axes[0], runs.items()):
        rows = run["rows"]
        w = 0.8 / len(TABLE_IMPLS)
        for j, impl in enumerate(TABLE_IMPLS):
            xs = [i + (j - len(TABLE_IMPLS) / 2 + 0.5) * w for i, r in enumerate(rows)
                  if impl in r["impls"]]
            ys = [r["impls"][impl]["agent_steps_per_s"] for r in rows if impl in r["impls"]]
            if xs:
                ax.bar(xs, ys, width=w, color=colors[impl], label=impl)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"d={r['d']}\nn={r['n']}" for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("agent-steps / s")
        ax.set_title(f"{label} core(s)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left", framealpha=0.6)
    m = table.get("machine") or {}
    fig.suptitle(f"Quadratic SLAM, CG K={K_CG}, shared H, small world: library paths vs a "
                 f"hand-written jit+scan kernel — {m.get('cpu', '')} {m.get('date', '')[:10]}",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
