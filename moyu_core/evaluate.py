"""Quality protocol of DESIGN.md: W windows of P dense prompt + G teacher-forced continuation
tokens from pydoc_data.topics; the method masks z at continuation positions only."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .methods import Method


def corpus_ids(lm) -> list[int]:
    """pydoc_data.topics texts sorted by key, joined with blank lines, no special tokens."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def windows_of(ids: list[int], windows: int, length: int) -> list[list[int]]:
    """`windows` evenly spaced windows of `length` tokens."""
    starts = np.linspace(0, len(ids) - length, windows).astype(int)
    return [ids[s:s + length] for s in starts]


@torch.inference_mode()
def _window(lm, method: Method, ids: list[int], P: int):
    from .hooks import gate_intervention, mlp_intervention
    x = torch.tensor([list(lm.bos_ids) + ids]) if getattr(lm, "bos_ids", None) else torch.tensor([ids])
    off = x.shape[1] - len(ids)
    P = P + off
    dense = lm.model(x, use_cache=False).logits[0, P - 1:-1].float()    # (G, V)
    gates: dict[int, torch.Tensor] = {}
    kept: list[float] = [0.0] * lm.n_layers

    def on_gate(i, g):
        gates[i] = g[0].detach()

    def on_z(i, z):
        zz = z[0].detach()
        if getattr(method, "sequence_level", False) or method.name in ("griffin",):
            m = method.select(i, zz[:P], gates[i][:P], lm)[:1].expand(zz.shape[0] - P, -1)
        else:
            m = method.select(i, zz, gates[i], lm)[P:]
        kept[i] = float(m.float().mean())
        full = torch.ones_like(zz, dtype=z.dtype)
        full[P:] = m.to(z.dtype)
        return z * full[None]

    with gate_intervention(lm, on_gate), mlp_intervention(lm, on_z):
        logits = lm.model(x, use_cache=False).logits[0, P - 1:-1].float()
    tgt = x[0, P:]
    nll = torch.nn.functional.cross_entropy(logits, tgt, reduction="sum").item()
    dnll = torch.nn.functional.cross_entropy(dense, tgt, reduction="sum").item()
    lp, dlp = logits.log_softmax(-1), dense.log_softmax(-1)
    kl = float((dlp.exp() * (dlp - lp)).sum(-1).mean())
    agree = float((logits.argmax(-1) == dense.argmax(-1)).float().mean())
    return nll, dnll, kl, agree, kept


def evaluate(lm, method: Method, store=None, windows: int = 12, prompt_len: int = 256,
             gen_len: int = 64, progress=None) -> dict:
    """Continuation ppl, ppl ratio to dense, KL(dense||method), top-1 agreement, measured sparsity
    (share of z entries zeroed at continuation positions), per-layer sparsity."""
    params = dataclasses.asdict(method.params)
    key = {"model": lm.fingerprint, "method": method.name, "params": params,
           "windows": windows, "prompt_len": prompt_len, "gen_len": gen_len, "v": 1}
    if store is not None:
        hit = store.get_result("eval", key)
        if hit is not None:
            return hit
    wins = windows_of(corpus_ids(lm), windows, prompt_len + gen_len)
    nll = dnll = kl = agree = 0.0
    kept = np.zeros(lm.n_layers)
    for w, ids in enumerate(wins):
        a, b, c, d, k = _window(lm, method, ids, prompt_len)
        nll, dnll, kl, agree, kept = nll + a, dnll + b, kl + c, agree + d, kept + np.array(k)
        if progress:
            progress((w + 1) / len(wins), f"window {w + 1}/{len(wins)}")
    n = len(wins) * gen_len
    ppl, dppl = math.exp(nll / n), math.exp(dnll / n)
    per_layer = (1 - kept / len(wins)).tolist()
    res = {"method": method.name, "params": params, "ppl": ppl, "dense_ppl": dppl,
           "ppl_ratio": ppl / dppl, "kl": kl / len(wins), "top1_agree": agree / len(wins),
           "sparsity": float(np.mean(per_layer)), "per_layer": per_layer,
           "windows": windows, "prompt_len": prompt_len, "gen_len": gen_len}
    if store is not None:
        store.put_result("eval", key, res, model=lm.name, method=method.name)
    return res
