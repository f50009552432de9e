"""Heavy-hitter ablation (proposed in the paper, never run): block every later query from
attending to the earliest heavy hitter of a prompt and measure how the activation pattern changes,
against a control token at a matched position.

- Heavy hitters: the top `n_heavy` tokens by attention received *per query that can see the
  token* (H2O score summed over layers and heads, divided by T - t; `analysis.accumulated_attention`
  with per_query), so late tokens are not penalised for having fewer readers. Only tokens that at
  least `min_readers` queries see are ranked: the per-query score of the last few tokens is
  mostly the attention they pay themselves (on smollm2 the last 8 tokens otherwise crowd the top).
- Two arms: *sink included* (token 0, the attention sink, may be the heavy hitter; on a model
  without BOS it nearly always is) and *sink excluded* (token 0 is never chosen, neither as heavy
  hitter nor as control).
- Control: the non-heavy-hitter nearest in position to the ablated heavy hitter (ties: the later
  one). Both are scored over the same tokens: those after the later of the two positions.
- Measures, per text: pattern overlap = mean over layers and scored tokens of |S_clean ∩ S_ablated|
  / k (top-10% |z| sets); Griffin's neurons: the top keep*d_ff of the flocking score over the
  whole (ablated) prompt, as Griffin chooses them, Jaccard with the clean prompt's choice; Griffin's
  quality: the continuation is scored teacher-forced on the unablated model (attention to the
  token restored), dense prompt, the chosen masks on the continuation positions only, so only
  Griffin's choice differs; perplexity ratio to the clean prompt's Griffin.
Verdicts: paired t intervals over texts (`stats`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import hooks
from ..analysis import accumulated_attention, heavy_hitters, top_mask
from ..errors import MoyuError
from . import common, stats

KIND = "experiment:hh_ablation"
VERSION = 2  # 2: per-query ranking, two sink arms, position-matched control, t intervals
ARMS = {"sink_included": False, "sink_excluded": True}   # arm -> token 0 left out
METRICS = ("pattern_overlap", "griffin_jaccard", "ppl_ratio_vs_clean_griffin")
SCORING = {
    "heavy_hitters": "top n_heavy tokens by attention received per query that can see the token "
                     "(summed over layers and heads, divided by T - t), among tokens at least min_readers "
                     "queries see",
    "control": "the non-heavy-hitter nearest in position to the ablated token (ties: the later one)",
    "pattern_overlap": "mean over layers and over the tokens after the later of the two positions of "
                       "|top-10% set clean ∩ ablated| / k",
    "griffin_masks": "top keep*d_ff of the flocking score over the whole ablated prompt (Griffin's "
                     "own choice), compared with the clean prompt's choice by Jaccard per layer",
    "continuation": "teacher-forced on the unablated model, dense prompt, the prompt's Griffin masks "
                    "on the continuation positions only; perplexity ratio to the clean prompt's Griffin",
}


@dataclass(frozen=True)
class AblationParams:
    n_texts: int = 20
    prompt_tokens: int = 64
    continuation_tokens: int = 32
    n_heavy: int = 4          # heavy hitters = the top n_heavy tokens by attention received per query
    min_readers: int = 16     # rank only tokens that at least this many queries see (T - t)
    keep: float = 0.5         # Griffin keep fraction
    fraction: float = 0.1     # "activated" = top 10% of |z|
    seed: int = 0


def _griffin_masks(z: np.ndarray, keep: float) -> np.ndarray:
    """(L, T, d_ff) prompt z -> (L, d_ff) bool: top keep*d_ff of the flocking score per layer."""
    return np.stack([common.top_set(common.flocking_score(z[i]), keep) for i in range(len(z))])


@torch.inference_mode()
def _continuation_nll(lm, ids: list[int], n_prompt: int, masks: np.ndarray | None) -> float:
    """Mean NLL of ids[n_prompt:] given the rest, teacher-forced; `masks` (L, d_ff) applied to the
    continuation positions only (the prompt runs dense)."""
    x = torch.tensor([ids])
    if masks is None:
        with lm.lock:  # no other thread's hooks may be on the model during this forward
            logits = lm.model(x, use_cache=False).logits
    else:
        mt = torch.from_numpy(masks)

        def fn(layer, z):
            z = z.clone()
            z[:, n_prompt:] = z[:, n_prompt:] * mt[layer].to(z.dtype)
            return z

        with hooks.mlp_intervention(lm, fn):
            logits = lm.model(x, use_cache=False).logits
    logp = torch.log_softmax(logits[0, n_prompt - 1:-1].float(), dim=-1)
    tgt = torch.tensor(ids[n_prompt:])
    return float(-logp[torch.arange(len(tgt)), tgt].mean())


def _pattern_overlap(z0: np.ndarray, z1: np.ndarray, after: int, fraction: float) -> float:
    """Mean over layers and tokens t > after of |S0_t ∩ S1_t| / k (top-`fraction` |z| sets)."""
    a = top_mask(z0[:, after + 1:].reshape(-1, z0.shape[-1]), fraction)
    b = top_mask(z1[:, after + 1:].reshape(-1, z1.shape[-1]), fraction)
    return float((a & b).sum(axis=1).mean() / max(1, a.sum(axis=1).mean()))


def matched_control(n_tokens: int, hh: list[int], target: int, skip_first: bool) -> int:
    """The position nearest `target` that is not a heavy hitter (ties: the later one), never
    token 0 when `skip_first`, and never the last token (something must follow it)."""
    lo = 1 if skip_first else 0
    others = [t for t in range(lo, n_tokens - 1) if t not in hh]
    if not others:
        raise MoyuError("no token is left for the control: fewer heavy hitters or a longer prompt")
    return min(others, key=lambda t: (abs(t - target), -t))


def _one_text(lm, ids: list[int], p: AblationParams) -> dict:
    prompt = ids[:p.prompt_tokens]
    clean = hooks.capture(lm, prompt)
    score = accumulated_attention(clean.attn_received, per_query=True)   # (T,)
    score[len(prompt) - p.min_readers + 1:] = -np.inf                     # too few readers to rank
    g_clean = _griffin_masks(clean.z, p.keep)
    nll_dense = _continuation_nll(lm, ids, len(prompt), None)
    nll_clean = _continuation_nll(lm, ids, len(prompt), g_clean)
    out = {"ppl_dense": math.exp(nll_dense), "ppl_griffin": math.exp(nll_clean)}
    for arm, skip_first in ARMS.items():
        hh = heavy_hitters(score, p.n_heavy, skip_first=skip_first)
        target = min(hh)                                                   # earliest heavy hitter
        control = matched_control(len(prompt), hh, target, skip_first)
        after = max(target, control)
        entry = {"heavy_hitters": hh, "scored_from": after + 1}
        for name, pos in (("heavy", target), ("control", control)):
            with hooks.mask_key_attention(lm, pos):
                abl = hooks.capture(lm, prompt)
            g = _griffin_masks(abl.z, p.keep)
            nll = _continuation_nll(lm, ids, len(prompt), g)
            entry[name] = {
                "position": pos,
                "pattern_overlap": _pattern_overlap(clean.z, abl.z, after, p.fraction),
                "griffin_jaccard": float(np.mean([common.jaccard(g[i], g_clean[i]) for i in range(len(g))])),
                "ppl_griffin": math.exp(nll),
                "ppl_ratio_vs_clean_griffin": math.exp(nll - nll_clean),
            }
        out[arm] = entry
    return out


def measure(lm, p: AblationParams, progress=None) -> dict:
    if p.n_texts < 2:
        raise MoyuError("the ablation needs at least 2 texts")
    if p.min_readers < 1 or p.prompt_tokens - p.min_readers < p.n_heavy + 2 or p.continuation_tokens < 1:
        raise MoyuError("prompt too short for the heavy hitters and their readers, or no continuation")
    need = p.prompt_tokens + p.continuation_tokens
    per_text = []
    texts = common.sentence_texts(p.n_texts, chars=12 * need, seed=p.seed + 1)
    if len(texts) < p.n_texts:
        raise MoyuError(f"the corpus holds only {len(texts)} passages long enough; ask for fewer texts")
    token_ids = [(lm.bos_ids + lm.encode(text, add_bos=False))[:need] for text in texts]
    if min(len(ids) for ids in token_ids) < need:   # checked before any forward pass
        raise MoyuError("a corpus passage is shorter than prompt + continuation tokens")
    for i, ids in enumerate(token_ids):
        per_text.append(_one_text(lm, ids, p))
        if progress:
            progress((i + 1) / p.n_texts)
    return summarise(per_text)


def summarise(per_text: list[dict]) -> dict:
    """Per arm: t intervals over texts of each measure for heavy and control, and the verdicts."""
    out: dict = {"per_text": per_text, "n_texts": len(per_text), "scoring": SCORING, "verdicts": {}}
    for arm in ARMS:
        v = {n: {f: np.array([t[arm][n][f] for t in per_text], dtype=np.float64) for f in METRICS}
             for n in ("heavy", "control")}
        out[arm] = {n: {f: stats.mean_ci(v[n][f]) for f in METRICS} for n in ("heavy", "control")}
        pos = {n: np.array([t[arm][n]["position"] for t in per_text]) for n in ("heavy", "control")}
        out[arm]["target_is_token0_share"] = float(np.mean(pos["heavy"] == 0))
        out[arm]["mean_distance"] = float(np.mean(np.abs(pos["heavy"] - pos["control"])))
        for name, verdict in verdicts(v).items():
            out["verdicts"][f"{arm}/{name}"] = {**verdict, "claim": f"[{arm.replace('_', ' ')}] {verdict['claim']}"}
    return out


def verdicts(v: dict) -> dict:
    """v[heavy|control][metric] is (texts,), paired by text. The claim 'the earliest heavy hitter
    starts the activation pattern' predicts a lower overlap, more changed Griffin neurons and a
    larger quality change when it is ablated than when the matched control is."""
    return {
        "pattern_changes": stats.verdict_greater(
            "ablating the earliest heavy hitter changes the activation pattern more than a matched token",
            stats.diff_ci(v["control"]["pattern_overlap"], v["heavy"]["pattern_overlap"], paired=True),
            unit="texts"),
        "griffin_neurons_change": stats.verdict_greater(
            "ablating the earliest heavy hitter changes Griffin's chosen neurons more than a matched token",
            stats.diff_ci(v["control"]["griffin_jaccard"], v["heavy"]["griffin_jaccard"], paired=True),
            unit="texts"),
        "griffin_quality_changes": stats.verdict_greater(
            "ablating the earliest heavy hitter moves Griffin's perplexity more than a matched token",
            stats.diff_ci(np.abs(np.log(v["heavy"]["ppl_ratio_vs_clean_griffin"])),
                          np.abs(np.log(v["control"]["ppl_ratio_vs_clean_griffin"])), paired=True),
            unit="texts"),
    }


def run(lm, store=None, params: AblationParams = AblationParams(), progress=None, force: bool = False) -> dict:
    key = common.params_key(params, lm.fingerprint, VERSION)
    res = common.cached(store, KIND, key, lambda: measure(lm, params, progress), model=lm.name, force=force)
    return {"experiment": "hh_ablation", "model": lm.name, "params": key["params"], **res}


def summary_text(res: dict) -> str:
    lines = [f"heavy-hitter ablation on {res['model']}: earliest of the top {res['params']['n_heavy']} heavy "
             f"hitters vs a position-matched control, {res['n_texts']} texts, 95% t intervals over texts"]
    for k, v in res["scoring"].items():
        lines.append(f"  {k.replace('_', ' ')}: {v}")
    for arm in ARMS:
        a = res[arm]
        lines.append(f"  {arm.replace('_', ' ')} (heavy hitter is token 0 in {a['target_is_token0_share']:.0%} "
                     f"of texts; control {a['mean_distance']:.1f} positions away on average)")
        for n in ("heavy", "control"):
            e = a[n]
            lines.append(f"    {n:8s} pattern overlap {stats.ci_text(e['pattern_overlap'])}  Griffin Jaccard "
                         f"{stats.ci_text(e['griffin_jaccard'])}  Griffin ppl ratio "
                         f"{stats.ci_text(e['ppl_ratio_vs_clean_griffin'])}")
    for v in res["verdicts"].values():
        lines.append(f"- {v['claim']}: {v['text']}")
    if res.get("cached"):
        lines.append("(cached)")
    return "\n".join(lines)
