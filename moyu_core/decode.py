"""Lean greedy KV-cache decode loop (batch 1) with executed sparse MLPs for prompt-fixed methods.

griffin / static: after the dense prompt, each layer's gate/up/down are replaced for the decode
by pre-sliced nn.Linear copies (the skipped weights are really not read: "executed"). Other
methods run masked ("simulated") in this version; their gathered-column path is not done yet.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from .hooks import mlp_intervention
from .methods import Method, make


def _sliced(lin: torch.nn.Linear, idx: torch.Tensor, dim: int) -> torch.nn.Linear:
    w = lin.weight.detach().index_select(dim, idx).contiguous()
    out = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    out.weight = torch.nn.Parameter(w, requires_grad=False)
    return out


@contextmanager
def sliced_mlps(lm, keep_idx: list[torch.Tensor]):
    """Temporarily swap every layer's MLP linears for ones sliced to keep_idx[layer]; restored in finally."""
    with lm.lock:
        saved = []
        try:
            for layer, idx in zip(lm.layers, keep_idx):
                m = layer.mlp
                saved.append((m, m.gate_proj, m.up_proj, m.down_proj))
                m.gate_proj = _sliced(m.gate_proj, idx, 0)
                m.up_proj = _sliced(m.up_proj, idx, 0)
                m.down_proj = _sliced(m.down_proj, idx, 1)
            yield
        finally:
            for m, g, u, d in saved:
                m.gate_proj, m.up_proj, m.down_proj = g, u, d


@torch.inference_mode()
def _loop(lm, ids: list[int], n: int, prompt_hook=None, decode_ctx=None):
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    if prompt_hook is not None:
        with mlp_intervention(lm, prompt_hook):
            out = lm.model(x, use_cache=True)
    else:
        out = lm.model(x, use_cache=True)
    prefill = time.perf_counter() - t0
    past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
    toks = [tok]
    ctx = decode_ctx() if decode_ctx else None
    if ctx:
        ctx.__enter__()
    try:
        t1 = time.perf_counter()
        for _ in range(n - 1):
            out = lm.model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            toks.append(tok)
        dt = time.perf_counter() - t1
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    return toks, prefill, dt


def generate(lm, text: str, method: Method | None = None, max_new_tokens: int = 64,
             executed: bool = True) -> dict:
    """Greedy decode; the prompt runs dense. Returns text, tokens, prefill_ms,
    decode_tokens_per_s, label ('executed' | 'simulated')."""
    method = method or make("dense")
    ids = lm.encode(text)
    fixed = method.name in ("griffin", "static")
    keep = getattr(method.params, "keep", 1.0)
    state: dict[int, torch.Tensor] = {}

    def prompt_hook(i, z):
        if fixed:
            m = method.select(i, z[0].detach(), None, lm)[0]
            state[i] = m.nonzero().flatten()
        return None

    label = "executed" if method.name == "dense" or (fixed and executed) else "simulated"
    if method.name == "dense":
        toks, pre, dt = _loop(lm, ids, max_new_tokens)
    elif fixed and executed:
        toks, pre, dt = _loop(lm, ids, max_new_tokens, prompt_hook,
                              lambda: sliced_mlps(lm, [state[i] for i in range(lm.n_layers)]))
    elif fixed:
        def masked():
            def fn(i, z):
                mask = torch.zeros(z.shape[-1], dtype=z.dtype)
                mask[state[i]] = 1
                return z * mask
            return mlp_intervention(lm, fn)
        toks, pre, dt = _loop(lm, ids, max_new_tokens, prompt_hook, masked)
    else:
        from .hooks import gate_intervention
        gates: dict[int, torch.Tensor] = {}

        def per_token():
            from contextlib import ExitStack
            st = ExitStack()
            st.enter_context(gate_intervention(lm, lambda i, g: gates.__setitem__(i, g[0, -1:].detach())))
            st.enter_context(mlp_intervention(lm, lambda i, z: z * method.select(i, z[0, -1:], gates[i], lm).to(z.dtype)[None]))
            return st
        toks, pre, dt = _loop(lm, ids, max_new_tokens, None, per_token)
    return {"method": method.name, "keep": keep, "text": lm.tokenizer.decode(toks), "tokens": toks,
            "n_tokens": len(toks), "prefill_ms": pre * 1000,
            "decode_tokens_per_s": (len(toks) - 1) / dt if dt > 0 else float("nan"), "label": label}
