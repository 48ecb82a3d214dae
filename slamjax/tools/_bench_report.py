"""Report of ``slamjax bench``: the roofline, the targets and the throughput figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slamjax.tools._bench_impls import IMPLS, K_CG, bytes_per_agent_step, flops_per_agent_step



def roofline(mach: dict, d_list) -> dict:
    """Per d: flops and bytes of one agent-step and the flop / bandwidth bounds on
    agent-steps/s from the measured machine limits ``mach``."""
    out = {}
    for d in d_list:
        fl, by = flops_per_agent_step(d), bytes_per_agent_step(d)
        by_het = bytes_per_agent_step(d, shared_hessian=False)
        out[str(d)] = {
            "flops_per_agent_step": fl, "bytes_per_agent_step": by,
            "arithmetic_intensity_flop_per_byte": fl / by,
            "per_agent_hessian_bytes_per_agent_step": by_het}
        refresh_roofline(out[str(d)], mach)
    return out


def refresh_roofline(rl: dict, mach: dict) -> None:
    """The bounds of one roofline entry ``rl`` (in place) from the machine limits ``mach``."""
    r_flop = mach["peak_GFLOPs"] * 1e9 / rl["flops_per_agent_step"]
    r_bw = mach["bandwidth_GBps"] * 1e9 / rl["bytes_per_agent_step"]
    rl["flop_bound_agent_steps_per_s"] = r_flop
    rl["bandwidth_bound_agent_steps_per_s"] = r_bw
    rl["roofline_agent_steps_per_s"] = min(r_flop, r_bw)
    rl.setdefault("bound", "compute (GEMM peak)" if r_flop < r_bw else "memory bandwidth")
    rl["per_agent_hessian_bandwidth_bound_agent_steps_per_s"] = (
        mach["bandwidth_GBps"] * 1e9 / rl["per_agent_hessian_bytes_per_agent_step"])


STYLE = {"slamjax": ("C0", "o", "-"), "slamjax_block": ("C0", "s", "--"),
         "slamjax_rowmajor": ("C5", "P", "-."),
         "slamjax_dense": ("C2", "^", ":"), "numpy_batched": ("C1", "D", "-"),
         "numpy_loop": ("C3", "v", "-"), "torch_loop": ("C4", "x", "-")}


def plot(results: dict, path: Path) -> Path:
    """agent-steps/s against n per implementation, one panel per (d, graph), with the
    roofline; written to ``path`` (PNG)."""
    from slamjax.io import save_figure
    from slamjax.tools._machine import new_figure

    rows = results["config"]["d"]
    cols = results["config"]["graphs"]
    fig, axes = new_figure(len(rows), len(cols), figsize=(6.2 * len(cols), 4.3 * len(rows)),
                           squeeze=False)
    roof = results.get("roofline", {})
    for i, d in enumerate(rows):
        for j, kind in enumerate(cols):
            ax = axes[i][j]
            recs = [r for r in results["records"] if r["d"] == d and r["graph"] == kind]
            for impl in IMPLS:
                pts = sorted((r["n"], r["agent_steps_per_s"]) for r in recs if r["impl"] == impl)
                if not pts:
                    continue
                c, m, ls = STYLE[impl]
                ax.loglog(*zip(*pts), color=c, marker=m, ls=ls, label=impl)
            rl = roof.get(str(d))
            if rl:
                ax.axhline(rl["roofline_agent_steps_per_s"], color="k", lw=0.8, ls="-.",
                           label=f"roofline ({rl['bound']})")
            ax.set_title(f"{'small world, mean degree 4.4' if kind == 'sw' else 'ring'}, "
                         f"d = {d}")
            ax.set_xlabel("agents n")
            ax.set_ylabel("agent-steps / s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best", framealpha=0.6)
    m = results["machine"]
    fig.suptitle(f"Quadratic SLAM (CG K={K_CG}, m=1, float32) — {m['cpu']}, {m['cores']} cores, "
                 f"jax {m['jax']} ({m['backend']}), {m['date'][:10]}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _get(records, impl, kind, d, n):
    for r in records:
        if (r["impl"], r["graph"], r["d"], r["n"]) == (impl, kind, d, n) and "error" not in r:
            return r
    return None


def _best_slamjax(records, kind, d, n):
    cands = [r for r in (_get(records, "slamjax", kind, d, n),
                         _get(records, "slamjax_block", kind, d, n)) if r]
    return max(cands, key=lambda r: r["agent_steps_per_s"]) if cands else None


def summarize(records, roofline, mach, sharding, quick) -> list:
    """The benchmark's targets, each ``{"target", "met", "measured"}``."""
    out = []
    kinds = sorted({r["graph"] for r in records})

    def add(target, met, measured):
        out.append({"target": target, "met": met, "measured": measured})

    for kind in kinds:
        r = _best_slamjax(records, kind, 10, 4096)
        if r:
            v = r["agent_steps_per_s"]
            add(f"≥ 1e6 agent-steps/s at d=10, n=4096 ({kind})", v >= 1e6, f"{v:.3g}")
        a, b = _get(records, "slamjax", kind, 10, 1024), _get(records, "numpy_loop", kind, 10,
                                                             1024)
        if a and b:
            ratio = a["agent_steps_per_s"] / b["agent_steps_per_s"]
            add(f"≥ 100× the NumPy per-agent loop at n=1024, d=10 ({kind})", ratio >= 100,
                f"{ratio:.0f}×")
        a, b = _get(records, "slamjax", kind, 100, 1024), _get(records, "numpy_loop", kind,
                                                              100, 1024)
        if a and b:
            ratio = a["agent_steps_per_s"] / b["agent_steps_per_s"]
            add(f"≥ 100× the NumPy per-agent loop at n=1024, d=100 ({kind})", ratio >= 100,
                f"{ratio:.0f}×")
        rl = roofline.get("100")
        if rl:
            cands = [(r["agent_steps_per_s"], r["n"]) for r in records
                     if r.get("graph") == kind and r.get("d") == 100 and "error" not in r
                     and r["impl"] in ("slamjax", "slamjax_block")]
            big = [c for c in cands if c[1] >= 4096]
            if cands:
                best, best_big = max(cands), max(big, default=None)
                roof = rl["roofline_agent_steps_per_s"]
                head = best_big or best
                add(f"≥ 60 % of the roofline at d=100 ({kind}; {rl['bound']}-bound, "
                    f"{roof:.3g} agent-steps/s)", head[0] / roof >= 0.6,
                    f"{100 * head[0] / roof:.0f} % at n ≥ 4096 (best {head[0]:.3g} at "
                    f"n={head[1]}); best over all n {100 * best[0] / roof:.0f} % at n={best[1]}")
        small, large = _best_slamjax(records, kind, 10, 1024), _best_slamjax(records, kind, 10,
                                                                              2**20)
        if small and large:
            ratio = small["agent_steps_per_s"] / large["agent_steps_per_s"]
            add(f"time/agent-step at n=2^20 within 1.5× of n=1024, d=10 ({kind})",
                ratio <= 1.5, f"{ratio:.2f}× ({large['agent_steps_per_s']:.3g} vs "
                              f"{small['agent_steps_per_s']:.3g} agent-steps/s)")
        if large:
            add(f"n=2^20 (d=10) runs in 24 GiB ({kind})", large["peak_rss_MiB"] < 24 * 1024,
                f"peak RSS {large['peak_rss_MiB']:.0f} MiB, XLA buffers "
                f"{large['xla_buffers_MiB']:.0f} MiB")
    comp = [r["compile_s"] for r in records
            if r.get("impl", "").startswith("slamjax") and "error" not in r]
    if comp:
        add("first-call compile < 3 s (every slamjax configuration)", max(comp) < 3.0,
            f"median {np.median(comp):.2f} s, max {max(comp):.2f} s")
    if sharding and "runs" in sharding:
        for run in sharding["runs"]:
            sp4 = run["by_devices"].get("4", {}).get("speedup_vs_1")
            if sp4 is not None:
                add(f"≥ 1.5× with 4 vs 1 host devices at n={run['n']} ({run['graph']}; only 2 "
                    "physical cores)", sp4 >= 1.5, f"{sp4:.2f}×")
    return out
