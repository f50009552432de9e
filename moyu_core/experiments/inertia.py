"""Activation inertia, the paper's Figure 2 a-d, measured: sentences vs seeded random word lists,
parallel vs sequential input. Per text and layer: consecutive-token overlap of the per-token
top-10% |z| sets (the headline: inertia is a neuron staying active at the next token, as in the
atlas), mean pairwise Jaccard over all token pairs, share of Griffin's flocking score held by its
top-10% neurons.

Why consecutive overlap and not pairwise Jaccard decides the verdicts: in parallel input every
token follows the same context, and the neurons that context drives are shared by every pair of
tokens however far apart, which lifts pairwise Jaccard in parallel input; in sequential input
that shared part fades with distance. Pairwise Jaccard therefore mixes inertia with the context's
common component (on smollm2 it says sequential < parallel while adjacent tokens overlap more in
sequential input). Both are reported.

No measured token sits at position 0 (the attention sink), in either manner: both start from
`runs.parallel_context` (the model's BOS, else one newline token; a prefix replaces it).
Parallel: each text token alone after the context. Sequential: context + the whole text in one
sequence. Both score the same tokens, text tokens 1..n-1 (token 0 of the text is the same input
in both manners, so it is left out of both). Pairs of the same token id are left out of the
Jaccard and consecutive figures (`common.overlap_figures`): in parallel input they are identical by
construction, and sentences repeat tokens about 50 times more often than the random word lists
(on smollm2, 1.5% against 0.03% of token pairs). Verdicts for the paper's three claims: t intervals
over texts, and an equivalence test (TOST) for the claim of no difference (`stats`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import hooks
from ..analysis import pool2d
from ..errors import MoyuError
from ..runs import CONTEXT_RULE, parallel_context
from . import common, stats

KIND = "experiment:inertia"
# 2: the parallel context rule (no token at position 0), t intervals, TOST
# 3: pairs of the same token left out; the token-makeup control
# 4: verdicts judged on consecutive overlap (pairwise Jaccard alongside)
VERSION = 4
HEADLINE = "consecutive"
CONDITIONS = ("sentence/parallel", "sentence/sequential", "random/parallel", "random/sequential")
METRICS = ("jaccard", "consecutive", "flocking_share")


@dataclass(frozen=True)
class InertiaParams:
    n_texts: int = 30           # texts of each kind
    n_tokens: int = 40          # tokens per text (both kinds cut to the same length)
    fraction: float = 0.1       # "activated" = top 10% of |z| per token
    layers: tuple[int, ...] | None = None  # None = every layer
    seed: int = 0
    prefix: str = ""            # context before every text, both manners (default: BOS, else newline)
    margin_d: float = stats.MARGIN_D  # equivalence margin of the no-difference claim, Cohen's d


def _texts(p: InertiaParams) -> dict[str, list[str]]:
    out = {"sentence": common.sentence_texts(p.n_texts, seed=p.seed),
           "random": common.random_texts(p.n_texts, seed=p.seed)}
    if len(out["sentence"]) < p.n_texts:
        raise MoyuError(f"the corpus holds only {len(out['sentence'])} prose passages; ask for fewer texts")
    return out


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
    context = parallel_context(lm, p.prefix)
    texts = _texts(p)
    token_ids = {kind: [lm.encode(t, add_bos=False)[:p.n_tokens] for t in items] for kind, items in texts.items()}
    short = min(len(ids) for items in token_ids.values() for ids in items)
    if short < p.n_tokens:   # checked before any forward pass
        raise MoyuError(f"a text has only {short} tokens; lower the tokens per text")
    # per condition: metric -> (texts, layers)
    raw = {c: {m: [] for m in METRICS} for c in CONDITIONS}
    heat: dict[str, list] = {}
    mid = layers[len(layers) // 2]
    steps, done = 2 * 2 * p.n_texts, 0
    for kind, items in token_ids.items():
        for ti, ids in enumerate(items):
            for mode in ("parallel", "sequential"):
                got = hooks.capture(lm, ids, mode=mode, prefix_ids=context)
                z = got.z[:, 1:]                                 # (L, n-1, d_ff): text tokens 1..n-1
                cond = f"{kind}/{mode}"
                per_layer = [common.overlap_figures(z[i], p.fraction, ids[1:]) for i in layers]
                for m in METRICS:
                    raw[cond][m].append([f[m] for f in per_layer])
                if ti == 0:
                    heat[cond] = _heatmap(z[mid])
                done += 1
                if progress:
                    progress(done / steps)
    result = summarise({c: {m: np.asarray(v) for m, v in d.items()} for c, d in raw.items()}, layers, p.margin_d)
    result["heatmaps"] = {"layer": mid, "text_index": 0, **heat}
    c = len(context)
    result["context"] = {"ids": context, "text": lm.tokenizer.decode(context), "rule": CONTEXT_RULE,
                         "scored_positions": {"parallel": [c, c], "sequential": [c + 1, c + p.n_tokens - 1]},
                         "scored_tokens_per_text": p.n_tokens - 1}
    result["n_texts"] = {k: len(v) for k, v in texts.items()}
    result["texts"] = {k: [t[:160] for t in v] for k, v in texts.items()}
    result["random_overlap"] = p.fraction / (2 - p.fraction)  # Jaccard of two random top-10% sets
    return result


def summarise(raw: dict[str, dict[str, np.ndarray]], layers: list[int], margin_d: float = stats.MARGIN_D) -> dict:
    """raw[condition][metric] is (texts, layers). Means over layers per text, t intervals over
    texts, per-layer means, and the verdicts."""
    out: dict = {}
    for c in CONDITIONS:
        d = raw[c]
        entry = {}
        for m in METRICS:
            entry[f"{m}_top10" if m != "flocking_share" else m] = stats.mean_ci(d[m].mean(axis=1))
        entry["per_layer"] = [{"layer": L, **{m: float(d[m][:, j].mean()) for m in METRICS}}
                              for j, L in enumerate(layers)]
        out[c] = entry
    out["verdicts"] = verdicts({c: {m: raw[c][m].mean(axis=1) for m in METRICS} for c in CONDITIONS}, margin_d)
    return out


def verdicts(per_text: dict[str, dict[str, np.ndarray]], margin_d: float = stats.MARGIN_D) -> dict:
    """The paper's three claims, judged on per-text mean consecutive overlap (`HEADLINE`; the other
    metrics alongside).
    per_text[condition][metric] is (texts,); a text's two manners are paired, sentences and
    random word lists are independent samples.

    Sentences and random word lists differ in their tokens (punctuation, capitals, short function
    words), and in parallel input a token's activations depend on its id alone, so a difference
    between the kinds can come from token makeup. `semantic_irrelevant_beyond_tokens` cancels it:
    per text the gain of sequential over parallel input (same tokens), random against sentences."""
    def j(c, m):
        return np.asarray(per_text[c][m], dtype=np.float64)

    def gain(kind, m):
        return j(f"{kind}/sequential", m) - j(f"{kind}/parallel", m)

    claims = {  # key: (claim, kind of claim, metric -> (a, b, paired))
        "sequential_strengthens": (
            "sequential input strengthens inertia (sequential > parallel)", "greater",
            lambda m: (np.concatenate([j("sentence/sequential", m), j("random/sequential", m)]),
                       np.concatenate([j("sentence/parallel", m), j("random/parallel", m)]), True)),
        "semantic_irrelevant": (
            "inertia is semantic-irrelevant: random words > sentences (sequential)", "greater",
            lambda m: (j("random/sequential", m), j("sentence/sequential", m), False)),
        "semantic_irrelevant_beyond_tokens": (
            "random words gain more from sequential input than sentences do (token makeup cancels: the "
            "same tokens in parallel input are the baseline)", "greater",
            lambda m: (gain("random", m), gain("sentence", m), False)),
        "parallel_no_difference": (
            "no difference between sentences and random words in parallel input", "equal",
            lambda m: (j("random/parallel", m), j("sentence/parallel", m), False)),
    }
    out = {}
    for key, (claim, kind, data) in claims.items():
        a, b, paired = data(HEADLINE)
        diff = stats.diff_ci(a, b, paired=paired)
        out[key] = (stats.verdict_greater(claim, diff, unit="texts") if kind == "greater"
                    else stats.verdict_equal(claim, diff, margin_d, unit="texts"))
        out[key]["metric"] = HEADLINE
        out[key]["other_metrics"] = {m: stats.diff_ci(*data(m)) for m in METRICS if m != HEADLINE}
    return out


def run(lm, store=None, params: InertiaParams = InertiaParams(), progress=None, force: bool = False) -> dict:
    key = {**common.params_key(params, lm.fingerprint, VERSION), "context_rule": CONTEXT_RULE}
    res = common.cached(store, KIND, key, lambda: measure(lm, params, progress), model=lm.name, force=force)
    return {"experiment": "inertia", "model": lm.name, "params": key["params"], **res}


def summary_text(res: dict) -> str:
    ctx = res["context"]
    lines = [f"activation inertia on {res['model']}: overlap of consecutive tokens' top-10% sets (the verdicts' "
             f"metric) and mean pairwise Jaccard, pairs of the same token left out (two random sets: Jaccard "
             f"{res['random_overlap']:.3f}); 95% t intervals over texts",
             f"context before every text: {ctx['text']!r} ({ctx['rule']}); scored: text tokens 1..n-1 "
             f"({ctx['scored_tokens_per_text']} per text), positions {ctx['scored_positions']}"]
    for c in CONDITIONS:
        cons = res[c]["consecutive_top10"]
        jac = res[c]["jaccard_top10"]["mean"]
        fl = res[c]["flocking_share"]["mean"]
        lines.append(f"  {c:20s} consecutive {stats.ci_text(cons)}  Jaccard {jac:.3f}  flocking share {fl:.3f}")
    for v in res["verdicts"].values():
        lines.append(f"- {v['claim']}: {v['text']}")
    if res.get("cached"):
        lines.append("(cached)")
    return "\n".join(lines)
