"""Quality of a method on the user's own text: per-token loss and KL(dense || method), teacher-forced
on a run's tokens (the prompt itself), so that a reader sees *where* a method hurts. The standard
protocol (`evaluate.py`: pydoc_data.topics windows) stays the figure to compare methods by.

Where the method acts (documented choice):

- per-token methods act at every position but 0 (the attention sink stays dense, as no measured
  token ever sits at position 0 in moyu);
- sequence-level methods (griffin, static) decide from the first half of the text (positions
  0..P-1 with P = T // 2, run dense) and act on the second half (P..T-1), as in generation,
  where the prompt is in the past. Deciding from the whole text would let the mask used for token
  t depend on the tokens after t.

Values are aligned to the *predicted* token: `loss[t]` = -log p(token t | tokens before t) and
`kl[t]` compares the two next-token distributions that predict token t; positions the method
cannot have changed yet (t <= the first acting position) are NaN.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .hooks import method_intervention
from .methods import Method
from .models import fused_attention
from .preparation import prepare

CHUNK = 256  # positions whose logits exist at once: (CHUNK, vocab) float32, 50 MB for smollm2


def _logits(lm, h: torch.Tensor) -> torch.Tensor:
    """Final hidden states (N, d) -> next-token logits (N, vocab), float32 (the model's head,
    with Gemma's final soft-capping where the config has one)."""
    out = lm.model.get_output_embeddings()(h).float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    return torch.tanh(out / cap) * cap if cap else out


@torch.inference_mode()
def dense_hidden(lm, ids: list[int]) -> torch.Tensor:
    """(T, d): the dense forward's final hidden states (decoder body, SDPA attention)."""
    with fused_attention(lm):
        return lm.body(torch.tensor([ids]), use_cache=False).last_hidden_state[0].float()


def acting_from(method: Method, n_tokens: int) -> int:
    """The first position at which the method acts on a text of n_tokens (see the module doc)."""
    return max(1, n_tokens // 2) if method.sequence_level else 1


@torch.inference_mode()
def prompt_quality(lm, method: Method, ids: list[int], dense: torch.Tensor | None = None,
                   progress: Callable[[float, str], None] | None = None) -> dict:
    """Per-token loss of the method and of dense, KL(dense || method) and top-1 agreement on
    `ids`, teacher-forced; `dense` is `dense_hidden(lm, ids)` when already computed. Returns
    numpy arrays (T,) (NaN where not scored) and their means over the scored tokens."""
    T = len(ids)
    start = acting_from(method, T)
    prepare(lm, method)   # calibration or a router load runs the model: not inside the hooks below
    if dense is None:
        dense = dense_hidden(lm, ids)
    kept: list[float] = []

    def on_z(i, z, gate, x):
        zz = z[0]
        if method.sequence_level:   # decided once from the dense first part, kept after it
            m = method.select(i, zz[:start], gate[:start], lm, x[:start])[:1].expand(T - start, -1)
        else:
            m = method.select(i, zz, gate, lm, x)[start:]
        kept.append(float(m.float().mean()))
        full = torch.ones_like(zz)
        full[start:] = m.to(zz.dtype)
        if progress:
            progress((i + 1) / lm.n_layers, f"{method.name}: layer {i + 1}/{lm.n_layers}")
        return z * full[None]

    with fused_attention(lm), method_intervention(lm, on_z):
        hidden = lm.body(torch.tensor([ids]), use_cache=False).last_hidden_state[0].float()

    loss, dloss, kl, agree = (np.full(T, np.nan) for _ in range(4))
    target = torch.tensor(ids)
    for a in range(start, T - 1, CHUNK):   # logits at position p predict token p + 1
        b = min(T - 1, a + CHUNK)
        lp = _logits(lm, hidden[a:b]).log_softmax(-1)
        dlp = _logits(lm, dense[a:b]).log_softmax(-1)
        tgt = target[a + 1:b + 1, None]
        loss[a + 1:b + 1] = -lp.gather(1, tgt)[:, 0].numpy()
        dloss[a + 1:b + 1] = -dlp.gather(1, tgt)[:, 0].numpy()
        kl[a + 1:b + 1] = (dlp.exp() * (dlp - lp)).sum(-1).clamp_min(0).numpy()
        agree[a + 1:b + 1] = (lp.argmax(-1) == dlp.argmax(-1)).float().numpy()
    scored = ~np.isnan(loss)
    n = int(scored.sum())
    mean = (lambda a: float(a[scored].mean()) if n else math.nan)
    return {"method": method.name, "n_tokens": T, "acting_from": start, "n_scored": n,
            "loss": loss, "dense_loss": dloss, "kl": kl, "top1_agree": agree,
            "mean_kl": mean(kl), "ppl": math.exp(mean(loss)) if n else math.nan,
            "dense_ppl": math.exp(mean(dloss)) if n else math.nan,
            "ppl_ratio": math.exp(mean(loss) - mean(dloss)) if n else math.nan,
            "top1": mean(agree), "kept": float(np.mean(kept)) if kept else math.nan,
            "rule": ("decides from tokens 0–{} (dense), acts on {}–{}".format(start - 1, start, T - 1)
                     if method.sequence_level else f"acts on tokens 1–{T - 1} (token 0 stays dense)")}
