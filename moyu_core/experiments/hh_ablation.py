"""Heavy-hitter ablation (proposed in the paper, never run): find the earliest heavy hitter of a
prompt (H2O score: attention received, summed over layers and heads), block all later queries from
attending to it, and measure how the activation pattern changes: per-token top-10% overlap with
the unablated run (tokens after the ablated one), change in Griffin's chosen neurons, and Griffin's
quality (teacher-forced continuation perplexity with the prompt's Griffin masks). Control: the
same for a random token that is not a heavy hitter."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from .. import hooks
from ..analysis import accumulated_attention, heavy_hitters, top_mask
from ..errors import MoyuError
from . import common, stats

KIND = "experiment:hh_ablation"


@dataclass(frozen=True)
class AblationParams:
    n_texts: int = 8
    prompt_tokens: int = 64
    continuation_tokens: int = 32
    n_heavy: int = 4          # heavy hitters = the top n_heavy tokens by attention received
    keep: float = 0.5         # Griffin keep fraction
    fraction: float = 0.1     # "activated" = top 10% of |z|
    skip_first: bool = False  # leave token 0 (the attention sink) out of the heavy-hitter choice
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


def _one_text(lm, ids: list[int], p: AblationParams, rng: random.Random) -> dict:
    prompt = ids[:p.prompt_tokens]
    clean = hooks.capture(lm, prompt)
    score = accumulated_attention(clean.attn_received)           # (T,)
    hh = heavy_hitters(score, p.n_heavy, skip_first=p.skip_first)
    target = min(hh)                                              # earliest heavy hitter
    lo = 1 if p.skip_first else 0
    others = [t for t in range(lo, len(prompt) - 1) if t not in hh]
    control = rng.choice(others)
    g_clean = _griffin_masks(clean.z, p.keep)
    nll_dense = _continuation_nll(lm, ids, len(prompt), None)
    nll_clean = _continuation_nll(lm, ids, len(prompt), g_clean)
    out = {"heavy_hitters": hh, "target": target, "control": control,
           "ppl_dense": math.exp(nll_dense), "ppl_griffin": math.exp(nll_clean)}
    for name, pos in (("heavy", target), ("control", control)):
        with hooks.mask_key_attention(lm, pos):
            abl = hooks.capture(lm, prompt)
        g = _griffin_masks(abl.z, p.keep)
        nll = _continuation_nll(lm, ids, len(prompt), g)
        out[name] = {
            "position": pos,
            "pattern_overlap": _pattern_overlap(clean.z, abl.z, pos, p.fraction),
            "griffin_jaccard": float(np.mean([common.jaccard(g[i], g_clean[i]) for i in range(len(g))])),
            "ppl_griffin": math.exp(nll),
            "ppl_ratio_vs_clean_griffin": math.exp(nll - nll_clean),
        }
    return out


def measure(lm, p: AblationParams, progress=None) -> dict:
    if p.n_texts < 2:
        raise MoyuError("the ablation needs at least 2 texts")
    if p.prompt_tokens < p.n_heavy + 3 or p.continuation_tokens < 1:
        raise MoyuError("prompt too short for the number of heavy hitters, or no continuation")
    need = p.prompt_tokens + p.continuation_tokens
    rng = random.Random(p.seed)
    per_text = []
    for i, text in enumerate(common.sentence_texts(p.n_texts, chars=12 * need, seed=p.seed + 1)):
        ids = (lm.bos_ids + lm.encode(text, add_bos=False))[:need]
        if len(ids) < need:
            raise MoyuError("a corpus passage is shorter than prompt + continuation tokens")
        per_text.append(_one_text(lm, ids, p, rng))
        if progress:
            progress((i + 1) / p.n_texts)
    return summarise(per_text, p.seed)


def summarise(per_text: list[dict], seed: int = 0) -> dict:
    def col(name, field):
        return np.array([t[name][field] for t in per_text], dtype=np.float64)

    out = {"per_text": per_text}
    for name in ("heavy", "control"):
        out[name] = {f: stats.mean_ci(col(name, f), seed)
                     for f in ("pattern_overlap", "griffin_jaccard", "ppl_ratio_vs_clean_griffin")}
    out["target_is_token0_share"] = float(np.mean([t["target"] == 0 for t in per_text]))
    out["verdicts"] = verdicts({n: {f: col(n, f) for f in ("pattern_overlap", "griffin_jaccard",
                                                            "ppl_ratio_vs_clean_griffin")}
                                for n in ("heavy", "control")}, seed)
    return out


def verdicts(v: dict, seed: int = 0) -> dict:
    """v[heavy|control][metric] is (texts,), paired by text. The claim 'the earliest heavy hitter
    starts the activation pattern' predicts a lower overlap, more changed Griffin neurons and a
    larger quality change when it is ablated than when a random other token is."""
    return {
        "pattern_changes": stats.verdict_greater(
            "ablating the earliest heavy hitter changes the activation pattern more than a random token",
            stats.diff_ci(v["control"]["pattern_overlap"], v["heavy"]["pattern_overlap"], seed, paired=True)),
        "griffin_neurons_change": stats.verdict_greater(
            "ablating the earliest heavy hitter changes Griffin's chosen neurons more than a random token",
            stats.diff_ci(v["control"]["griffin_jaccard"], v["heavy"]["griffin_jaccard"], seed, paired=True)),
        "griffin_quality_changes": stats.verdict_greater(
            "ablating the earliest heavy hitter moves Griffin's perplexity more than a random token",
            stats.diff_ci(np.abs(np.log(v["heavy"]["ppl_ratio_vs_clean_griffin"])),
                          np.abs(np.log(v["control"]["ppl_ratio_vs_clean_griffin"])), seed, paired=True)),
    }


def run(lm, store=None, params: AblationParams = AblationParams(), progress=None, force: bool = False) -> dict:
    key = common.params_key(params, lm.fingerprint)
    res = common.cached(store, KIND, key, lambda: measure(lm, params, progress), model=lm.name, force=force)
    return {"experiment": "hh_ablation", "model": lm.name, "params": key["params"], **res}


def summary_text(res: dict) -> str:
    lines = [f"heavy-hitter ablation on {res['model']} (earliest of the top {res['params']['n_heavy']} "
             f"heavy hitters; token 0 in {res['target_is_token0_share']:.0%} of texts)"]
    for n in ("heavy", "control"):
        e = res[n]
        lines.append(f"  {n:8s} pattern overlap {e['pattern_overlap']['mean']:.3f}  Griffin neurons Jaccard "
                     f"{e['griffin_jaccard']['mean']:.3f}  Griffin ppl ratio {e['ppl_ratio_vs_clean_griffin']['mean']:.3f}")
    for v in res["verdicts"].values():
        lines.append(f"- {v['claim']}: {v['text']}")
    if res.get("cached"):
        lines.append("(cached)")
    return "\n".join(lines)
