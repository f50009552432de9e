"""Small statistics for the experiments: seeded bootstrap confidence intervals, effect sizes and
verdicts computed only from the numbers (no scipy needed)."""
from __future__ import annotations

import math

import numpy as np

N_BOOT = 2000
ALPHA = 0.05


def mean_ci(x, seed: int = 0, n_boot: int = N_BOOT, alpha: float = ALPHA) -> dict:
    """Mean of `x` with a percentile bootstrap (1 - alpha) interval: {mean, lo, hi, n}."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(x.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(x))}


def diff_ci(a, b, seed: int = 0, paired: bool = False, n_boot: int = N_BOOT, alpha: float = ALPHA) -> dict:
    """Difference of means a - b with a bootstrap interval and Cohen's d (pooled sd; for paired
    data, mean difference over the sd of the differences)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if paired:
        d = a - b
        out = mean_ci(d, seed, n_boot, alpha)
        sd = d.std(ddof=1) if len(d) > 1 else 0.0
        eff = out["mean"] / sd if sd > 0 else (math.inf if out["mean"] else 0.0) * np.sign(out["mean"] or 1)
    else:
        ba = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)
        bb = b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)
        lo, hi = np.quantile(ba - bb, [alpha / 2, 1 - alpha / 2])
        out = {"mean": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi), "n": int(min(len(a), len(b)))}
        na, nb = len(a), len(b)
        pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / max(1, na + nb - 2)) if na > 1 and nb > 1 else 0.0
        eff = out["mean"] / pooled if pooled > 0 else (math.inf if out["mean"] else 0.0) * np.sign(out["mean"] or 1)
    out["cohens_d"] = float(eff)
    return out


def strength(d: float) -> str:
    d = abs(d)
    return "strongly" if d >= 0.8 else "moderately" if d >= 0.5 else "weakly"


def verdict_greater(claim: str, diff: dict) -> dict:
    """Claim 'A > B' judged from diff = A - B: supported when the interval lies above 0,
    contradicted when below 0, otherwise not supported (no clear difference)."""
    lo, hi, d = diff["lo"], diff["hi"], diff["cohens_d"]
    if lo > 0:
        v, how = "supported", strength(d)
    elif hi < 0:
        v, how = "contradicted", strength(d)
    else:
        v, how = "not supported", "no clear difference"
    text = (f"{v} ({how}): difference {diff['mean']:+.4f} "
            f"[95% CI {lo:+.4f}, {hi:+.4f}], Cohen's d {d:+.2f}")
    return {"claim": claim, "verdict": v, "strength": how, "difference": diff, "text": text}


def verdict_equal(claim: str, diff: dict, margin_d: float = 0.5) -> dict:
    """Claim 'A = B': supported when the interval contains 0 and |d| < margin_d; not supported
    when the interval excludes 0."""
    lo, hi, d = diff["lo"], diff["hi"], diff["cohens_d"]
    if lo <= 0 <= hi and abs(d) < margin_d:
        v, how = "supported", "no clear difference"
    elif lo <= 0 <= hi:
        v, how = "supported", "weakly (interval contains 0 but the effect size is not small)"
    else:
        v, how = "not supported", strength(d)
    text = (f"{v} ({how}): difference {diff['mean']:+.4f} "
            f"[95% CI {lo:+.4f}, {hi:+.4f}], Cohen's d {d:+.2f}")
    return {"claim": claim, "verdict": v, "strength": how, "difference": diff, "text": text}
