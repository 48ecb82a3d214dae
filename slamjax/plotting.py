"""Plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRIC_LABELS = {
    "grad_F_sq": r"$\|\nabla F(\mathbf{1}\bar x)\|^2$ (stationarity)",
    "consensus_x": r"$\|A x\|^2$ (UL consensus)",
    "consensus_y": r"$\sum_k \|A y_k\|^2$ (LL consensus)",
    "ll_error": r"$\sum_k \|\bar y_k - y_k^*(x)\|^2$ (LL error)",
}
VARIANT_LABELS = {"slam": "SLAM (Alg. 1)", "slam_l": "SLAM-L (Alg. 2)",
                  "slam_u": "SLAM-U (Alg. 3)"}


def _plt():
    # no backend is forced: matplotlib picks Agg by itself without a display, and a notebook
    # keeps its inline backend
    import matplotlib.pyplot as plt

    return plt


def plot_theorem1(runs: dict, path, title: str = "", metrics=tuple(METRIC_LABELS)) -> Path:
    """One panel per Theorem-1 metric, one line per run: ``runs[label] = (steps, history)``.
    Histories with a leading seed axis are drawn as mean with a min–max band."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    for ax, name in zip(np.atleast_1d(axes), metrics):
        for label, (steps, hist) in runs.items():
            if name not in hist:
                continue
            v = np.asarray(hist[name], dtype=float)
            floor = 1e-30  # exact zeros (e.g. consensus reached in floating point) drawn at 1e-30
            if v.ndim == 2:
                mean = np.maximum(v.mean(0), floor)
                ax.fill_between(steps, np.maximum(v.min(0), floor), np.maximum(v.max(0), floor),
                                alpha=0.2)
            else:
                mean = np.maximum(v, floor)
            ax.semilogy(steps, mean, label=VARIANT_LABELS.get(label, label))
        ax.set_title(METRIC_LABELS.get(name, name), fontsize=10)
        ax.set_xlabel("iteration r")
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
