"""Quality protocol of DESIGN.md: W windows of P dense prompt + G teacher-forced continuation
tokens from pydoc_data.topics; the method masks z at continuation positions only (teal: the
input of every linear)."""
from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext

import numpy as np
import torch

from .corpora import pydoc_ids
from .errors import MoyuError
from .methods import Method
from .preparation import prepare


def corpus_ids(lm) -> list[int]:
    """The protocol's corpus: pydoc_data.topics texts sorted by key, joined with blank lines,
    no special tokens."""
    return pydoc_ids(lm.tokenizer)


def windows_of(ids: list[int], windows: int, length: int) -> list[list[int]]:
    """`windows` evenly spaced windows of `length` tokens."""
    starts = np.linspace(0, len(ids) - length, windows).astype(int)
    return [ids[s:s + length] for s in starts]


@torch.inference_mode()
def _window(lm, method: Method, ids: list[int], P: int):
    from .hooks import input_intervention, method_intervention
    x = torch.tensor([list(lm.bos_ids) + ids])
    P = P + len(lm.bos_ids)
    with lm.lock:  # no other thread's hooks may be on the model during the dense forward
        dense = lm.model(x, use_cache=False).logits[0, P - 1:-1].float()    # (G, V)
    kept: list[float] = [0.0] * lm.n_layers

    def on_z(i, z, gate, h):
        zz = z[0].detach()
        if method.sequence_level:   # decided once from the dense prompt, kept for the continuation
            m = method.select(i, zz[:P], gate[:P], lm, h[:P])[:1].expand(zz.shape[0] - P, -1)
        else:
            m = method.select(i, zz, gate, lm, h)[P:]
        kept[i] = float(m.float().mean())
        full = torch.ones_like(zz)
        full[P:] = m.to(z.dtype)
        return z * full[None]

    def on_input(i, role, h):   # teal: the inputs of q, k, v, o, gate and up, continuation only
        keep = torch.ones_like(h, dtype=torch.bool)
        keep[:, P:] = method.input_keep(i, role, h[:, P:], lm)
        return h * keep.to(h.dtype)

    with method_intervention(lm, on_z), (input_intervention(lm, on_input, exclude=("down",))
                                         if method.skips == "all_linear" else nullcontext()):
        logits = lm.model(x, use_cache=False).logits[0, P - 1:-1].float()
    tgt = x[0, P:]
    nll = torch.nn.functional.cross_entropy(logits, tgt, reduction="sum").item()
    dnll = torch.nn.functional.cross_entropy(dense, tgt, reduction="sum").item()
    lp, dlp = logits.log_softmax(-1), dense.log_softmax(-1)
    kl = float((dlp.exp() * (dlp - lp)).sum(-1).mean())
    agree = float((logits.argmax(-1) == dense.argmax(-1)).float().mean())
    return nll, dnll, kl, agree, kept


def free_generation(lm, method: Method, prompt_ids: list[int], tokens: int) -> dict:
    """Greedy `tokens` after the prompt, dense and with the method (masked: quality only)."""
    from .decode import generate
    from .methods import make
    d = generate(lm, prompt_ids, make("dense"), tokens)
    m = generate(lm, prompt_ids, method, tokens, executed=False)
    same = sum(a == b for a, b in zip(d["tokens"], m["tokens"]))
    first = next((i for i, (a, b) in enumerate(zip(d["tokens"], m["tokens"])) if a != b), len(d["tokens"]))
    return {"dense_text": d["text"], "text": m["text"], "token_agreement": same / max(1, len(d["tokens"])),
            "tokens_until_divergence": first, "tokens": tokens}


def _check(lm, windows: int, prompt_len: int, gen_len: int, free_tokens: int) -> None:
    if not 1 <= windows <= 256:
        raise MoyuError(f"windows must be in [1, 256], got {windows}")
    if prompt_len < 1 or gen_len < 1 or prompt_len + gen_len > 4096:
        raise MoyuError(f"need prompt_len >= 1, gen_len >= 1, prompt_len + gen_len <= 4096; "
                        f"got {prompt_len} + {gen_len}")
    if not 0 <= free_tokens <= 1024:
        raise MoyuError(f"free_tokens must be in [0, 1024], got {free_tokens}")


def evaluate(lm, method: Method, store=None, windows: int = 12, prompt_len: int = 256,
             gen_len: int = 64, progress=None, free_tokens: int = 0) -> dict:
    """Continuation ppl, ppl ratio to dense, KL(dense||method), top-1 agreement, measured sparsity
    (share of z entries zeroed at continuation positions), per-layer sparsity; with free_tokens,
    also free greedy generation from the first window's prompt (text, agreement with dense)."""
    _check(lm, windows, prompt_len, gen_len, free_tokens)
    params = dataclasses.asdict(method.params)
    key = {"model": lm.fingerprint, "method": method.name, "params": params, "windows": windows,
           "prompt_len": prompt_len, "gen_len": gen_len, "free_tokens": free_tokens,
           "v": 3}   # 3: "moe" is MoEfication with its router (was the exact choice, now moe-oracle)
    if store is not None:
        hit = store.get_result("eval", key)
        if hit is not None:
            return hit
    wins = windows_of(corpus_ids(lm), windows, prompt_len + gen_len)
    prepare(lm, method)
    nll = dnll = kl = agree = 0.0
    kept = np.zeros(lm.n_layers)
    per_window = []
    for w, ids in enumerate(wins):
        a, b, c, d, k = _window(lm, method, ids, prompt_len)
        nll, dnll, kl, agree, kept = nll + a, dnll + b, kl + c, agree + d, kept + np.array(k)
        per_window.append({"nll": a / gen_len, "dense_nll": b / gen_len, "kl": c, "top1_agree": d})
        if progress:
            progress((w + 1) / len(wins), f"window {w + 1}/{len(wins)}")
    n = len(wins) * gen_len
    ppl, dppl = math.exp(nll / n), math.exp(dnll / n)
    per_layer = (1 - kept / len(wins)).tolist()
    res = {"method": method.name, "params": params, "ppl": ppl, "dense_ppl": dppl,
           "ppl_ratio": ppl / dppl, "kl": kl / len(wins), "top1_agree": agree / len(wins),
           "sparsity": float(np.mean(per_layer)), "per_layer": per_layer,
           "windows": windows, "prompt_len": prompt_len, "gen_len": gen_len,
           "per_window": per_window}  # mean NLL per continuation token, KL, top-1 of each window
    if free_tokens:
        res["free_generation"] = free_generation(lm, method, wins[0][:prompt_len], free_tokens)
    if store is not None:
        store.put_result("eval", key, res, model=lm.name, method=method.name)
    return res
