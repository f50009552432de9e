"""Numbers the explorer draws: heatmap normalisation and pooling, neuron order, inertia figures,
heavy-hitter ranking, mask agreement against the oracle, the speed-up ceiling.

Pure numpy on arrays read from the store; no Streamlit, no SQL, no torch import.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from . import kernels
from .errors import MoyuError
from .keep import keep_count

NORMALISATIONS = ("raw", "abs", "token")  # raw z, |z|, |z| / max_j |z_tj| per token (paper Fig. 2)
ORDERS = ("index", "frequency")           # neuron order: by index, or by how many tokens fire them
TOP_FRACTION = 0.1                        # "activated" = in the token's top 10% of |z|


def normalise(z: np.ndarray, how: str) -> np.ndarray:
    """z (T, d_ff) -> same shape: raw z, |z|, or |z| divided by each token's max |z|."""
    if how == "raw":
        return z
    a = np.abs(z)
    if how == "abs":
        return a
    if how == "token":
        m = a.max(axis=1, keepdims=True)
        return a / np.where(m > 0, m, 1.0)
    raise ValueError(f"unknown normalisation '{how}'; choose {', '.join(NORMALISATIONS)}")


def top_mask(z: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """bool (T, d_ff): each token's top `fraction` of neurons by |z| (the oracle at keep=fraction),
    ties at the k-th value taking the lowest indices as the oracle method's mask does: the radix
    select in C++ (`kernels.topk_mask_np`: 1.7-2.7 ms for 1024 x 1536 on this 2-core machine where
    argpartition took 20-28 ms, in three runs of `python benchmarks/probes.py topk`); argpartition where
    the kernels cannot be built."""
    T, D = z.shape
    k = keep_count(D, fraction)
    if k >= D:
        return np.ones((T, D), bool)
    if z.size:
        try:
            return kernels.topk_mask_np(z, k, absolute=True)
        except MoyuError:
            pass
    return top_mask_numpy(z, k)


def top_mask_numpy(z: np.ndarray, k: int) -> np.ndarray:
    """`top_mask`'s fallback: each row's k largest |z| by numpy's argpartition (any k of tied)."""
    idx = np.argpartition(-np.abs(z), k - 1, axis=1)[:, :k]  # (T, k)
    mask = np.zeros(z.shape, bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def activation_frequency(z: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """(d_ff,): share of tokens in whose top `fraction` each neuron is."""
    return top_mask(z, fraction).mean(axis=0)


def neuron_order(z: np.ndarray, order: str, fraction: float = TOP_FRACTION) -> np.ndarray:
    """(d_ff,) permutation of neuron indices: by index, or most often activated first (ties by
    mean |z|), which turns activation inertia into vertical bands on the left of the heatmap."""
    D = z.shape[1]
    if order == "index":
        return np.arange(D)
    if order == "frequency":
        freq = activation_frequency(z, fraction)
        return np.lexsort((-np.abs(z).mean(axis=0), -freq))
    raise ValueError(f"unknown neuron order '{order}'; choose {', '.join(ORDERS)}")


def _edges(n: int, bins: int) -> np.ndarray:
    bins = max(1, min(n, bins))
    return np.linspace(0, n, bins + 1).round().astype(int)


def pool2d(a: np.ndarray, max_rows: int, max_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool a (R, C) matrix into at most (max_rows, max_cols) blocks; each block shows its value of
    largest magnitude (sign kept), so a single strong neuron is never averaged away.
    Returns (pooled, row_edges, col_edges); block i covers rows row_edges[i]:row_edges[i+1]."""
    re, ce = _edges(a.shape[0], max_rows), _edges(a.shape[1], max_cols)
    hi = np.maximum.reduceat(np.maximum.reduceat(a, re[:-1], axis=0), ce[:-1], axis=1)
    lo = np.minimum.reduceat(np.minimum.reduceat(a, re[:-1], axis=0), ce[:-1], axis=1)
    return np.where(np.abs(lo) > np.abs(hi), lo, hi), re, ce


@dataclass(frozen=True)
class Inertia:
    """How much the activated set (top `fraction` of |z|) of a token repeats earlier tokens'."""

    fraction: float
    adjacent_overlap: float   # mean |S_t ∩ S_{t-1}| / k over t >= 1
    history_overlap: float    # mean |S_t ∩ (S_0 ∪ ... ∪ S_{t-1})| / k over t >= 1
    pairwise_overlap: float   # mean |S_s ∩ S_t| / k over all pairs s < t
    union_share: float        # |S_0 ∪ ... ∪ S_{T-1}| / d_ff
    random_overlap: float     # what adjacent_overlap would be for random sets (= fraction)
    n_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def inertia(z: np.ndarray, fraction: float = TOP_FRACTION, skip_first: bool = False) -> Inertia:
    """Inertia figures of one layer's z (T, d_ff). `skip_first` leaves out token 0 (the attention
    sink, whose activations are often massive and unlike any other token's)."""
    z = z[1:] if skip_first and len(z) > 1 else z
    mask = top_mask(z, fraction)  # (T, d_ff)
    T, D = mask.shape
    k = keep_count(D, fraction)
    if T < 2:
        return Inertia(fraction, math.nan, math.nan, math.nan, float(mask.any(0).mean()), k / D, T)
    m = mask.astype(np.float32)
    adjacent = (m[1:] * m[:-1]).sum(axis=1) / k
    seen = np.logical_or.accumulate(mask, axis=0)[:-1]  # (T-1, d_ff): union of earlier sets
    history = (mask[1:] & seen).sum(axis=1) / k
    # mean over pairs i < j of |S_i & S_j| / k: the pairs' intersections add up to sum over
    # neurons of C(c, 2), c the number of tokens whose set holds the neuron (no T x T product)
    c = mask.sum(axis=0, dtype=np.int64)
    pairs = float((c * (c - 1) // 2).sum()) / (T * (T - 1) / 2) / k
    return Inertia(fraction, float(adjacent.mean()), float(history.mean()), pairs,
                   float(mask.any(axis=0).mean()), k / D, T)


def layer_overview(get_layer: Callable[[int], np.ndarray], n_layers: int,
                   fraction: float = TOP_FRACTION) -> dict:
    """All layers at a glance: activation frequency (L, d_ff) and per-layer inertia figures.
    `get_layer(i)` returns that layer's z (T, d_ff)."""
    freq, rows = [], []
    for i in range(n_layers):
        z = get_layer(i)
        freq.append(activation_frequency(z, fraction))
        rows.append(inertia(z, fraction).as_dict())
    return {"frequency": np.stack(freq), "inertia": rows}  # frequency (L, d_ff)


# ---- heavy hitters -----------------------------------------------------------------------------

def accumulated_attention(attn_received: np.ndarray, layers=None, heads=None,
                          per_query: bool = False) -> np.ndarray:
    """H2O accumulated score (T,): attention each token receives, summed over the chosen layers
    and heads (all when None). `per_query` divides by how many queries can see the token (T - t
    under causal attention), so late tokens are not penalised for having fewer readers."""
    a = attn_received  # (L, H, T)
    if layers is not None:
        a = a[list(layers)]
    if heads is not None:
        a = a[:, list(heads)]
    score = a.sum(axis=(0, 1)).astype(np.float64)
    if per_query:
        T = score.shape[0]
        score = score / np.arange(T, 0, -1)
    return score


def heavy_hitters(score: np.ndarray, k: int, skip_first: bool = False) -> list[int]:
    """Positions of the k highest scores, best first (ties: earlier first)."""
    order = np.lexsort((np.arange(len(score)), -score))
    if skip_first:
        order = order[order != 0]
    return [int(i) for i in order[:k]]


def sink_share(attn_received: np.ndarray) -> np.ndarray:
    """(L,): share of each layer's attention (all heads) that goes to token 0."""
    total = attn_received.sum(axis=(1, 2))
    return attn_received[:, :, 0].sum(axis=1) / np.where(total > 0, total, 1.0)


def massive_activations(resid_norm: np.ndarray, factor: float = 5.0) -> list[int]:
    """Tokens whose residual-stream norm (L, T), at its largest over layers, is more than `factor`
    times the median token's: the paper's massive activations."""
    peak = resid_norm.max(axis=0)  # (T,)
    med = float(np.median(peak))
    return [int(i) for i in np.flatnonzero(peak > factor * med)] if med > 0 else []


# ---- methods against the oracle -----------------------------------------------------------------

MASK_LABELS = ("dropped by both", "kept by both", "kept, oracle drops", "dropped, oracle keeps")


def mask_categories(keep: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """int8 (T, d_ff): 0 dropped by both, 1 kept by both, 2 kept only by the method, 3 missed."""
    out = np.zeros(keep.shape, np.int8)
    out[keep & oracle] = 1
    out[keep & ~oracle] = 2
    out[~keep & oracle] = 3
    return out


def mask_agreement(keep: np.ndarray, oracle: np.ndarray) -> dict:
    """Recall (share of the oracle's neurons the method keeps), precision, and kept share."""
    both, n_keep = np.count_nonzero(keep & oracle), np.count_nonzero(keep)  # a popcount: 4x .sum()
    return {"recall": both / max(1, np.count_nonzero(oracle)), "precision": both / max(1, n_keep),
            "kept": n_keep / max(1, keep.size)}


def weight_shares(model) -> tuple[float, float]:
    """(m, a): the shares of the weight bytes a decode step reads that belong to the MLPs (gate,
    up, down) and to the attention projections (q, k, v, o), found by the model family's adapter.
    Embedding tables are lookups (one row per token); a tied output head reads the whole matrix
    once."""
    from .families import family_of

    fam = family_of(model.config.model_type)
    mlp = fam.mlp_parameters(model)
    attn = {id(p) for layer in fam.layer_list(fam.decoder(model)) for m in fam.parts(layer).attn.modules()
            if getattr(getattr(m, "weight", None), "dim", lambda: 0)() == 2 for p in m.parameters()}
    head = model.get_output_embeddings()
    lookups = {id(p) for m in model.modules() if hasattr(m, "num_embeddings") for p in m.parameters()}
    lookups.discard(id(head.weight) if head is not None else None)
    n = {"mlp": 0, "attn": 0, "other": 0}
    for p in model.parameters():
        if id(p) not in lookups:
            n["mlp" if id(p) in mlp else "attn" if id(p) in attn else "other"] += p.numel() * p.element_size()
    total = max(1, sum(n.values()))
    return n["mlp"] / total, n["attn"] / total


def mlp_weight_share(model) -> float:
    """Share of the weight bytes a decode step reads that belong to MLPs (`weight_shares`)."""
    return weight_shares(model)[0]


# what each kind of method can skip (methods' `skips`), as a share of the bytes read per token,
# from the MLP share m and the attention projections' share a: a method deciding from z skips
# W_down rows only (gate and up run dense), one deciding from the gate skips up and down, a router
# on x or one mask per sequence skips all three, TEAL skips input channels of every linear
SKIPPABLE = {"none": lambda m, a: 0.0, "down": lambda m, a: m / 3, "up_down": lambda m, a: 2 * m / 3,
             "mlp": lambda m, a: m, "all_linear": lambda m, a: m + a}


def speedup_ceiling(mlp_share: float, keep: float, skips: str = "mlp", attention_share: float = 0.0) -> float:
    """Best possible decode speed-up at `keep` for a method that skips `skips` (SKIPPABLE):
    decode reads every weight once per token, so skipping a share s of those bytes at keep k
    gives 1 / (1 - s (1 - k)) (DESIGN.md, speed protocol)."""
    if skips not in SKIPPABLE:
        raise ValueError(f"unknown skips {skips!r}; choose {', '.join(SKIPPABLE)}")
    s = SKIPPABLE[skips](mlp_share, attention_share)
    return 1.0 / (1.0 - s * (1.0 - keep))


# ---- stored metrics for the comparison chart ----------------------------------------------------

SPEED_KINDS = ("speed", "decode_speed", "pareto", "decode")
_SPEED_KEYS = ("speedup", "speedup_median", "median_ratio", "ratio", "speed_up")


def _keep_of(params: dict, result: dict):
    for src in (params, params.get("params") if isinstance(params.get("params"), dict) else {},
                result.get("params") if isinstance(result.get("params"), dict) else {}, result):
        if isinstance(src, dict) and isinstance(src.get("keep"), (int, float)):
            return float(src["keep"])
    return None


def _eval_intervals(res: dict) -> dict:
    """95% intervals over the protocol's windows (`stats.window_intervals`), flat for a table row."""
    from .experiments.stats import window_intervals

    wins = res.get("per_window") or []
    if len(wins) < 2:
        return {}
    ci = window_intervals(wins)
    names = {"ppl_ratio": "ppl_ratio", "kl": "kl", "top1": "top1_agree"}
    return {f"{row}_{end}": ci[f"{name}_ci"][end] for name, row in names.items() for end in ("lo", "hi")}


def _speed_spread(res: dict) -> dict:
    """The middle half (25th-75th percentile) of the per-pair speed-up ratios, and their number."""
    ratios = [r for r in res.get("ratios") or [] if isinstance(r, (int, float))]
    if not ratios:
        return {}
    lo, hi = np.percentile(ratios, [25, 75])
    return {"speedup_lo": float(lo), "speedup_hi": float(hi), "pairs": len(ratios)}


def metrics_table(results: list[dict], ceiling: Callable[[str, float], float | None] | None = None) -> list[dict]:
    """One row per (method, keep) from stored results (`Store.results()` dicts): quality from kind
    "eval", measured speed-up (with its executed/simulated label) from the speed kinds, newest
    first wins. `ceiling(method, keep)` (e.g. `speedup_ceiling` at the method's `skips`) adds the
    speed-up ceiling of each row."""
    rows: dict[tuple, dict] = {}

    def row(method, keep):
        return rows.setdefault((method, keep), {
            "method": method, "keep": keep, "ppl_ratio": None, "kl": None, "top1_agree": None,
            "sparsity": None, "windows": None, "speedup": None, "timing": None, "ceiling": None,
            "kept": None})

    for r in results:  # oldest first: later results overwrite
        res, params = r.get("result") or {}, r.get("params") or {}
        method = res.get("method") or r.get("method") or params.get("method")
        if not method:
            continue
        keep = _keep_of(params, res)
        if r.get("kind") == "eval":
            out = row(method, keep)
            for k in ("ppl_ratio", "kl", "top1_agree", "sparsity", "windows"):
                if res.get(k) is not None:
                    out[k] = res[k]
            if res.get("sparsity") is not None:
                out["kept"] = 1.0 - float(res["sparsity"])   # measured share of z kept
            out.update(_eval_intervals(res))
        elif r.get("kind") in SPEED_KINDS:
            got = next((res[k] for k in _SPEED_KEYS if isinstance(res.get(k), (int, float))), None)
            if got is not None:
                out = row(method, keep)
                out["speedup"] = float(got)
                out["timing"] = res.get("label") or res.get("timing") or "unlabelled"
                out.update(_speed_spread(res))
    table = sorted(rows.values(), key=lambda d: (d["method"], -1 if d["keep"] is None else d["keep"]))
    if ceiling is not None:
        for d in table:
            d["ceiling"] = None if d["keep"] is None else ceiling(d["method"], d["keep"])
    return table


# ---- display helpers: colour limits, where a pooled block's value comes from, Pareto frontier ----

def colour_limit(values: np.ndarray, percentile: float = 99.5) -> float:
    """The colour scale's end: the `percentile` of |values| (NaN ignored), so that a few massive
    values (the attention sink's) do not turn everything else dark; 100 is the maximum."""
    a = np.abs(np.asarray(values, dtype=np.float32)).ravel()
    a = a[np.isfinite(a)]
    if not a.size:
        return 1.0
    v = float(a.max()) if percentile >= 100 else float(np.percentile(a, percentile))
    return v if v > 0 else (float(a.max()) or 1.0)


def pool2d_strongest(a: np.ndarray, max_rows: int, max_cols: int):
    """`pool2d` plus where each block's value comes from: (pooled, row_edges, col_edges, rows,
    cols), rows/cols (R, C) int: the row and column of `a` of largest magnitude in the block (the
    first one, row-major, among equal magnitudes)."""
    pooled, re, ce = pool2d(a, max_rows, max_cols)
    mag = np.abs(a)
    big = np.iinfo(np.int64).max
    band_max = np.maximum.reduceat(mag, re[:-1], axis=0)                                  # (R, D)
    at = mag == np.repeat(band_max, np.diff(re), axis=0)
    best_row = np.minimum.reduceat(np.where(at, np.arange(a.shape[0])[:, None], big), re[:-1], axis=0)
    block_max = np.maximum.reduceat(band_max, ce[:-1], axis=1)                            # (R, C)
    at = band_max == np.repeat(block_max, np.diff(ce), axis=1)
    cols = np.minimum.reduceat(np.where(at, np.arange(a.shape[1])[None, :], big), ce[:-1], axis=1)
    rows = np.take_along_axis(best_row, cols, axis=1)
    return pooled, re, ce, rows, cols


def pareto_front(cost: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """bool (n,): the points no other point beats, i.e. none has cost <= and gain >= with one of
    them strict (lower cost, higher gain are better; NaN points are never on the front)."""
    cost, gain = np.asarray(cost, float), np.asarray(gain, float)
    ok = np.isfinite(cost) & np.isfinite(gain)
    front = np.zeros(len(cost), bool)
    for i in np.flatnonzero(ok):
        beaten = ok & (cost <= cost[i]) & (gain >= gain[i]) & ((cost < cost[i]) | (gain > gain[i]))
        front[i] = not beaten.any()
    return front
