"""Statistics of the seed-paired actor-critic comparisons (navigation and pursuit reports):
95 % Student-t intervals over seeds, paired per-seed differences with a verdict, and the
ordering of methods by their mean. NaN entries (diverged seeds) are dropped."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["t_quantile", "ci95", "paired_ci", "ordering"]


def t_quantile(dof: int) -> float:
    """Two-sided 95 % Student-t quantile."""
    from scipy.stats import t
    return float(t.ppf(0.975, dof))


def ci95(x) -> dict:
    """Mean, std and the 95 % t-interval half-width of the finite values of ``x``."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    S = len(x)
    m = float(x.mean()) if S else float("nan")
    sd = float(x.std(ddof=1)) if S > 1 else float("nan")
    h = t_quantile(S - 1) * sd / math.sqrt(S) if S > 1 else float("nan")
    return {"mean": m, "std": sd, "ci95": h, "lo": m - h, "hi": m + h, "seeds": S}


def paired_ci(a, b) -> dict:
    """Per-seed differences a − b (seeds where either is NaN dropped): mean, 95 % interval,
    paired t, wins; ``verdict`` is 'a > b', 'a < b' or 'tie' (interval contains 0)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    c = ci95(d)
    d = d[np.isfinite(d)]
    t = c["mean"] / (c["std"] / math.sqrt(c["seeds"])) if c["seeds"] > 1 and c["std"] > 0 \
        else float("nan")
    verdict = "tie" if not (c["lo"] > 0 or c["hi"] < 0) else ("a > b" if c["lo"] > 0 else "a < b")
    return {**c, "t": t, "wins": int((d > 0).sum()), "verdict": verdict,
            "diff_per_seed": d.tolist()}


def ordering(means: dict) -> str:
    """'A > B > C' by mean (higher return first)."""
    return " > ".join(k for k, _ in sorted(means.items(), key=lambda kv: -kv[1]))
