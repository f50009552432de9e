"""Statistics for the experiments' verdicts (DESIGN.md, "Verdicts"), valid at small n, no scipy.

- Intervals are Student-t: the mean of one sample or of paired differences, and Welch's interval
  for two independent samples. The t quantile comes from the regularized incomplete beta function
  (continued fraction, Numerical Recipes 6.4) and bisection.
- A claim of a difference is *supported* when the 95% interval excludes 0 in the claimed
  direction, *contradicted* when it excludes 0 the other way, else *not supported*.
- A claim of no difference is judged by two one-sided tests (TOST) against a margin stated with
  the verdict (default: Cohen's d 0.2 times the pooled sd, or the sd of the paired differences):
  *supported* when the 90% interval lies inside ±margin (both one-sided tests at 5%), else
  *inconclusive* (when the 95% interval lies wholly outside the margin, the verdict's strength says
  that a difference larger than the margin is shown).
Every interval carries its n; every verdict text prints n, the interval and, for equivalence,
the margin and how it was converted to raw units.
"""
from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05
MARGIN_D = 0.2   # default equivalence margin, in Cohen's d


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), two terms per step."""
    def nonzero(v: float) -> float:
        return v if abs(v) > 1e-300 else 1e-300

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((a - 1.0 + m2) * (a + m2)),
                   -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2))):
            d = 1.0 / nonzero(1.0 + aa * d)
            c = nonzero(1.0 + aa / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df may be fractional: Welch)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q quantile of Student's t (bisection on t_cdf to ~1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _clean(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def mean_ci(x, alpha: float = ALPHA) -> dict:
    """Mean of `x` with its (1 - alpha) Student-t interval: {mean, lo, hi, n, sd, se, df}.
    With fewer than 2 values the interval is undefined (nan)."""
    x = _clean(x)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "sd": math.nan, "se": math.nan,
                "df": 0, "interval": "t"}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": 1, "sd": math.nan, "se": math.nan,
                "df": 0, "interval": "t"}
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(n)
    h = t_ppf(1 - alpha / 2, n - 1) * se
    return {"mean": mean, "lo": mean - h, "hi": mean + h, "n": n, "sd": sd, "se": se, "df": n - 1,
            "interval": "t"}


def median_ci(x, alpha: float = ALPHA) -> dict:
    """Median of `x` with its distribution-free interval from order statistics: [x_(k), x_(n+1-k)]
    for the largest k whose coverage 1 - 2 P(Bin(n, 1/2) < k) is at least 1 - alpha (valid for
    any continuous distribution of independent values; the speed protocol's per-pair ratios).
    {median, lo, hi, n, level}: level is the interval's exact coverage, below 1 - alpha only when n
    is too small for any k (n < 6 at 95%: then the full range and its coverage)."""
    x = np.sort(_clean(x))
    n = len(x)
    if n == 0:
        return {"median": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "level": math.nan}
    k, cdf = 1, 0.5 ** n                       # k = 1: the full range; cdf = P(Bin(n, 1/2) <= k - 1)
    level = 1 - 2 * cdf
    for j in range(2, (n + 1) // 2 + 1):
        cdf_j = cdf + math.comb(n, j - 1) * 0.5 ** n
        if 1 - 2 * cdf_j < 1 - alpha:
            break
        k, cdf, level = j, cdf_j, 1 - 2 * cdf_j
    return {"median": float(np.median(x)), "lo": float(x[k - 1]), "hi": float(x[n - k]), "n": n, "level": level}


def window_intervals(per_window: list[dict]) -> dict:
    """Intervals over the quality protocol's windows (n = windows): the perplexity ratio's as exp of
    the t interval of the per-window mean NLL difference (so it brackets the pooled ratio), KL's
    and top-1 agreement's as t intervals."""
    log_ratio = mean_ci([w["nll"] - w["dense_nll"] for w in per_window])
    ratio = {"mean": math.exp(log_ratio["mean"]), "lo": math.exp(log_ratio["lo"]),
             "hi": math.exp(log_ratio["hi"]), "n": log_ratio["n"], "interval": "exp of a t interval of the log"}
    return {"ppl_ratio_ci": ratio, "kl_ci": mean_ci([w["kl"] for w in per_window]),
            "top1_ci": mean_ci([w["top1_agree"] for w in per_window])}


def diff_ci(a, b, paired: bool = False, alpha: float = ALPHA) -> dict:
    """Difference of means a - b with its (1 - alpha) t interval and Cohen's d.

    paired: t interval of the differences, d = mean difference / sd of the differences, n = pairs.
    independent: Welch's interval (Welch-Satterthwaite df), d = difference / pooled sd,
    n_a and n_b the two sample sizes. `sd` is the sd that d divides by."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if paired:
        if len(a) != len(b):
            raise ValueError("paired samples must have the same length")
        keep = np.isfinite(a) & np.isfinite(b)
        out = mean_ci(a[keep] - b[keep], alpha)
        out.update(design="paired", sd_kind="sd of the paired differences")
    else:
        a, b = _clean(a), _clean(b)
        na, nb = len(a), len(b)
        mean = float(a.mean() - b.mean()) if na and nb else math.nan
        out = {"mean": mean, "lo": math.nan, "hi": math.nan, "n_a": na, "n_b": nb, "n": na + nb,
               "sd": math.nan, "se": math.nan, "df": 0, "interval": "Welch t", "design": "independent",
               "sd_kind": "pooled sd"}
        if na > 1 and nb > 1:
            va, vb = a.var(ddof=1), b.var(ddof=1)
            se = math.sqrt(va / na + vb / nb)
            if se > 0:
                df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
            else:
                df = na + nb - 2
            h = t_ppf(1 - alpha / 2, df) * se
            out.update(lo=mean - h, hi=mean + h, se=se, df=float(df),
                       sd=math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)))
    sd = out["sd"]
    if sd and sd > 0:
        out["cohens_d"] = out["mean"] / sd
    elif out["mean"] == 0 or not math.isfinite(out["mean"]):
        out["cohens_d"] = 0.0
    else:
        out["cohens_d"] = math.copysign(math.inf, out["mean"])
    out["alpha"] = alpha
    return out


def n_text(diff: dict, unit: str = "") -> str:
    """'n = 30 paired texts' or 'n = 30 vs 30 texts'."""
    u = f" {unit}" if unit else ""
    if diff.get("design") == "independent":
        return f"n = {diff['n_a']} vs {diff['n_b']}{u}"
    return f"n = {diff['n']}{' paired' if diff.get('design') == 'paired' else ''}{u}"


def strength(d: float) -> str:
    d = abs(d)
    return "strongly" if d >= 0.8 else "moderately" if d >= 0.5 else "weakly"


def verdict_greater(claim: str, diff: dict, unit: str = "") -> dict:
    """Claim 'A > B' judged from diff = A - B: supported when the interval lies above 0,
    contradicted when below 0, otherwise not supported (no clear difference; also when n is too
    small for an interval)."""
    lo, hi, d = diff["lo"], diff["hi"], diff["cohens_d"]
    if lo > 0:
        v, how = "supported", strength(d)
    elif hi < 0:
        v, how = "contradicted", strength(d)
    elif math.isnan(lo):
        v, how = "not supported", "too few samples for an interval"
    else:
        v, how = "not supported", "no clear difference"
    level = round(100 * (1 - diff.get("alpha", ALPHA)))
    text = (f"{v} ({how}): difference {diff['mean']:+.4f} [{level}% CI {lo:+.4f}, {hi:+.4f}], "
            f"Cohen's d {d:+.2f}, {n_text(diff, unit)}")
    return {"claim": claim, "verdict": v, "strength": how, "difference": diff, "text": text}


def verdict_equal(claim: str, diff: dict, margin_d: float = MARGIN_D, unit: str = "") -> dict:
    """Claim 'A = B' by two one-sided tests at level alpha against the margin
    ±margin_d * sd (the sd Cohen's d divides by): supported when the (1 - 2 alpha) interval lies
    inside the margin, otherwise inconclusive (DESIGN.md has no fourth verdict: an interval wholly
    outside the margin stays inconclusive, and its `strength` says the difference exceeds the margin). The margin, its conversion and the TOST p-value are in the result."""
    alpha = diff.get("alpha", ALPHA)
    mean, se, df, sd = diff["mean"], diff["se"], diff["df"], diff["sd"]
    margin = margin_d * sd if sd == sd else math.nan
    out = {"claim": claim, "difference": diff, "margin": margin, "margin_d": margin_d,
           "margin_rule": f"Cohen's d {margin_d:g} x {diff.get('sd_kind', 'sd')} {sd:.4g}"}
    if not (df and se == se):
        out.update(verdict="inconclusive", strength="too few samples for an equivalence test",
                   ci90=[math.nan, math.nan], p_tost=math.nan)
    elif se == 0:
        same = mean == 0
        out.update(verdict="supported" if same else "inconclusive", strength="no variation",
                   ci90=[mean, mean], p_tost=0.0 if same else 1.0)
    else:
        h90 = t_ppf(1 - alpha, df) * se
        lo90, hi90 = mean - h90, mean + h90
        p_tost = max(1 - t_cdf((mean + margin) / se, df), t_cdf((mean - margin) / se, df))
        if -margin < lo90 and hi90 < margin:
            v, how = "supported", "equivalent within the margin"
        elif diff["lo"] > margin or diff["hi"] < -margin:
            v, how = "inconclusive", "a difference larger than the margin"
        else:
            v, how = "inconclusive", "not shown equivalent within the margin"
        out.update(verdict=v, strength=how, ci90=[lo90, hi90], p_tost=p_tost)
    lo90, hi90 = out["ci90"]
    level = round(100 * (1 - 2 * alpha))
    out["text"] = (f"{out['verdict']} ({out['strength']}): difference {mean:+.4f} [{level}% CI {lo90:+.4f}, "
                   f"{hi90:+.4f}], equivalence margin ±{margin:.4f} ({out['margin_rule']}), TOST p = "
                   f"{out['p_tost']:.3g}, Cohen's d {diff['cohens_d']:+.2f}, {n_text(diff, unit)}")
    return out


def ci_text(ci: dict, fmt: str = ".3f") -> str:
    """'0.412 [0.398, 0.426], n = 30' for a mean_ci result."""
    return f"{ci['mean']:{fmt}} [{ci['lo']:{fmt}}, {ci['hi']:{fmt}}], n = {ci['n']}"
