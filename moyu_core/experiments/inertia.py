"""Activation inertia, the paper's Figure 2 a-d, measured: sentences vs seeded random word lists,
parallel vs sequential input. Per text and layer (first token excluded): mean pairwise Jaccard of
the per-token top-10% |z| sets, consecutive-token overlap, share of Griffin's flocking score held
by its top-10% neurons. Verdicts for the paper's three claims come from bootstrap intervals."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import hooks
from ..analysis import pool2d
from ..errors import MoyuError
from . import common, stats

KIND = "experiment:inertia"
CONDITIONS = ("sentence/parallel", "sentence/sequential", "random/parallel", "random/sequential")
METRICS = ("jaccard", "consecutive", "flocking_share")


@dataclass(frozen=True)
class InertiaParams:
    n_texts: int = 8            # texts of each kind
    n_tokens: int = 40          # tokens per text (both kinds cut to the same length)
    fraction: float = 0.1       # "activated" = top 10% of |z| per token
    layers: tuple[int, ...] | None = None  # None = every layer
    seed: int = 0
    prefix: str = ""            # shared prefix for parallel input (after the model's BOS, if any)


def _texts(p: InertiaParams) -> dict[str, list[str]]:
    return {"sentence": common.sentence_texts(p.n_texts, seed=p.seed),
            "random": common.random_texts(p.n_texts, seed=p.seed)}


def _heatmap(z: np.ndarray) -> list[list[float]]:
    """|z| / max per token, pooled to <= 40 x 96 blocks, for the app's Figure 2 heatmaps."""
    a = np.abs(z)
    a = a / np.maximum(a.max(axis=1, keepdims=True), 1e-12)
    pooled, _, _ = pool2d(a, 40, 96)
    return np.round(pooled, 3).tolist()


def measure(lm, p: InertiaParams, progress: Callable[[float], None] | None = None) -> dict:
    if p.n_texts < 2:
        raise MoyuError("inertia needs at least 2 texts of each kind")
    if p.n_tokens < 3:
        raise MoyuError("inertia needs at least 3 tokens per text")
    layers = list(range(lm.n_layers)) if p.layers is None else list(p.layers)
    if any(not 0 <= i < lm.n_layers for i in layers):
        raise MoyuError(f"layers must be between 0 and {lm.n_layers - 1}")
    bos = lm.bos_ids
    prefix_ids = bos + (lm.encode(p.prefix, add_bos=False) if p.prefix else [])
    texts = _texts(p)
    # per condition: metric -> (texts, layers)
    raw = {c: {m: [] for m in METRICS} for c in CONDITIONS}
    heat: dict[str, list] = {}
    mid = layers[len(layers) // 2]
    steps, done = 2 * 2 * p.n_texts, 0
    for kind, items in texts.items():
        for ti, text in enumerate(items):
            ids = lm.encode(text, add_bos=False)[:p.n_tokens]
            for mode in ("parallel", "sequential"):
                if mode == "sequential":
                    got = hooks.capture(lm, bos + ids, mode="sequential")
                    z = got.z[:, len(bos):]                      # (L, T, d_ff), BOS not recorded
                else:
                    got = hooks.capture(lm, ids, mode="parallel", prefix_ids=prefix_ids)
                    z = got.z
                z = z[:, 1:]                                     # first token excluded
                cond = f"{kind}/{mode}"
                per_layer = [common.overlap_figures(z[i], p.fraction) for i in layers]
                for m in METRICS:
                    raw[cond][m].append([f[m] for f in per_layer])
                if ti == 0:
                    heat[cond] = _heatmap(z[mid])
                done += 1
                if progress:
                    progress(done / steps)
    result = summarise({c: {m: np.asarray(v) for m, v in d.items()} for c, d in raw.items()}, layers, p.seed)
    result["heatmaps"] = {"layer": mid, "text_index": 0, **heat}
    result["texts"] = {k: [t[:160] for t in v] for k, v in texts.items()}
    result["random_overlap"] = p.fraction / (2 - p.fraction)  # Jaccard of two random top-10% sets
    return result


def summarise(raw: dict[str, dict[str, np.ndarray]], layers: list[int], seed: int = 0) -> dict:
    """raw[condition][metric] is (texts, layers). Means over layers per text, intervals over texts,
    per-layer means, and the verdicts."""
    out: dict = {}
    for c in CONDITIONS:
        d = raw[c]
        entry = {}
        for m in METRICS:
            entry[f"{m}_top10" if m != "flocking_share" else m] = stats.mean_ci(d[m].mean(axis=1), seed)
        entry["per_layer"] = [{"layer": L, **{m: float(d[m][:, j].mean()) for m in METRICS}}
                              for j, L in enumerate(layers)]
        out[c] = entry
    out["verdicts"] = verdicts({c: {m: raw[c][m].mean(axis=1) for m in METRICS} for c in CONDITIONS}, seed)
    return out


def verdicts(per_text: dict[str, dict[str, np.ndarray]], seed: int = 0) -> dict:
    """The paper's three claims, judged on per-text mean Jaccard (other metrics alongside).
    per_text[condition][metric] is (texts,) and texts are paired across conditions of a kind."""
    def j(c, m="jaccard"):
        return np.asarray(per_text[c][m], dtype=np.float64)

    out = {}
    seq = np.concatenate([j("sentence/sequential"), j("random/sequential")])
    par = np.concatenate([j("sentence/parallel"), j("random/parallel")])
    out["sequential_strengthens"] = stats.verdict_greater(
        "sequential input strengthens inertia (sequential > parallel)",
        stats.diff_ci(seq, par, seed, paired=True))
    out["semantic_irrelevant"] = stats.verdict_greater(
        "inertia is semantic-irrelevant: random words > sentences (sequential)",
        stats.diff_ci(j("random/sequential"), j("sentence/sequential"), seed))
    out["parallel_no_difference"] = stats.verdict_equal(
        "no difference between sentences and random words in parallel input",
        stats.diff_ci(j("random/parallel"), j("sentence/parallel"), seed))
    for key, (a, b, paired) in {
            "sequential_strengthens": (("sentence/sequential", "random/sequential"), ("sentence/parallel", "random/parallel"), True),
            "semantic_irrelevant": (("random/sequential",), ("sentence/sequential",), False),
            "parallel_no_difference": (("random/parallel",), ("sentence/parallel",), False)}.items():
        also = {}
        for m in ("consecutive", "flocking_share"):
            x = np.concatenate([j(c, m) for c in a])
            y = np.concatenate([j(c, m) for c in b])
            also[m] = stats.diff_ci(x, y, seed, paired=paired)
        out[key]["other_metrics"] = also
    return out


def run(lm, store=None, params: InertiaParams = InertiaParams(), progress=None, force: bool = False) -> dict:
    key = common.params_key(params, lm.fingerprint)
    res = common.cached(store, KIND, key, lambda: measure(lm, params, progress), model=lm.name, force=force)
    return {"experiment": "inertia", "model": lm.name, "params": key["params"], **res}


def summary_text(res: dict) -> str:
    lines = [f"activation inertia on {res['model']} (mean pairwise Jaccard of top-10% sets, first token "
             f"excluded; random sets: {res.get('random_overlap', float('nan')):.3f})"]
    for c in CONDITIONS:
        e = res[c]["jaccard_top10"]
        cons = res[c]["consecutive_top10"]["mean"]
        fl = res[c]["flocking_share"]["mean"]
        lines.append(f"  {c:20s} Jaccard {e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]  consecutive {cons:.3f}  "
                     f"flocking share {fl:.3f}")
    for v in res["verdicts"].values():
        lines.append(f"- {v['claim']}: {v['text']}")
    if res.get("cached"):
        lines.append("(cached)")
    return "\n".join(lines)
