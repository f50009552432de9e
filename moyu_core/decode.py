"""Lean greedy KV-cache decode loop (batch 1) with executed sparse MLPs.

The prompt always runs dense; prefill and decode use SDPA attention (captures need eager attention
for its weights, decode does not), for dense and methods alike. Every timing is labelled:

- *executed*, sequence-level methods (griffin, static): each layer's gate/up/down are replaced by
  pre-sliced `nn.Linear` copies holding only the kept neurons.
- *executed*, per-token methods (tda, cats, cett, dejavu, moe, oracle): each layer's MLP is
  replaced by `GatheredMLP`, which per token reads only what the method needs to decide (the
  full gate for z- or gate-based methods, nothing for a router on x) and then only the kept
  neurons' rows of `up_proj`/`gate_proj` and of `W_down^T` (an `embedding_bag` weighted sum).
- *simulated*: the dense MLP runs and z is masked (quality only, nothing saved).
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from .errors import MoyuError
from .hooks import method_intervention
from .methods import Method, make

_DOWN_T: dict[tuple, torch.Tensor] = {}


def _sliced(lin: torch.nn.Linear, idx: torch.Tensor, dim: int) -> torch.nn.Linear:
    w = lin.weight.detach().index_select(dim, idx).contiguous()
    out = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    out.weight = torch.nn.Parameter(w, requires_grad=False)
    return out


@contextmanager
def swapped_mlps(lm, make_mlp):
    """Temporarily replace every layer's MLP by make_mlp(layer_index, mlp); restored in finally."""
    with lm.lock:
        saved = [layer.mlp for layer in lm.layers]
        try:
            for i, layer in enumerate(lm.layers):
                layer.mlp = make_mlp(i, layer.mlp)
            yield
        finally:
            for layer, mlp in zip(lm.layers, saved):
                layer.mlp = mlp


class SlicedMLP(torch.nn.Module):
    """The MLP restricted to neurons idx: pre-sliced gate/up rows and down columns."""

    def __init__(self, mlp, idx: torch.Tensor):
        super().__init__()
        self.gate_proj, self.up_proj = _sliced(mlp.gate_proj, idx, 0), _sliced(mlp.up_proj, idx, 0)
        self.down_proj, self.act_fn = _sliced(mlp.down_proj, idx, 1), mlp.act_fn

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def sliced_mlps(lm, keep_idx: list[torch.Tensor]):
    """Every layer's MLP sliced to keep_idx[layer] for the duration of the context."""
    return swapped_mlps(lm, lambda i, mlp: SlicedMLP(mlp, keep_idx[i]))


def _down_t(lm, i: int, mlp) -> torch.Tensor:
    """W_down transposed to (d_ff, d), contiguous, so a neuron's output column is one row."""
    key = (lm.name, str(lm.fingerprint), i)
    if key not in _DOWN_T:
        _DOWN_T[key] = mlp.down_proj.weight.detach().T.contiguous()
    return _DOWN_T[key]


class GatheredMLP(torch.nn.Module):
    """Per-token executed sparse MLP for batch-1 decode (one token per call; longer inputs run
    dense). The method's `needs` says what it decides from: "z" (gate and up dense, down
    gathered), "gate" (gate dense, up and down gathered), "x" (router on the MLP input: gate, up
    and down all gathered)."""

    def __init__(self, lm, i: int, mlp, method: Method):
        super().__init__()
        self.lm, self.i, self.mlp, self.method = lm, i, mlp, method
        self.wg, self.wu = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()
        self.wd_t = _down_t(lm, i, mlp)
        self.needs = method.needs

    def forward(self, x):
        if x.shape[0] != 1 or x.shape[1] != 1:
            return self.mlp(x)
        h = x[0]                                                    # (1, d)
        act = self.mlp.act_fn
        if self.needs == "x":
            idx = self.method.select(self.i, None, None, self.lm, h)[0].nonzero()[:, 0]
            z = act(F.embedding(idx, self.wg) @ h[0]) * (F.embedding(idx, self.wu) @ h[0])
        elif self.needs == "gate":
            g = act(h @ self.wg.T)                                  # (1, d_ff), dense
            idx = self.method.select(self.i, None, g, self.lm, h)[0].nonzero()[:, 0]
            z = g[0, idx] * (F.embedding(idx, self.wu) @ h[0])
        else:
            g = act(h @ self.wg.T)
            zf = g * (h @ self.wu.T)                                # (1, d_ff), dense
            idx = self.method.select(self.i, zf, g, self.lm, h)[0].nonzero()[:, 0]
            z = zf[0, idx]
        if idx.numel() == 0:                                        # nothing kept: the MLP adds 0
            return x.new_zeros(1, 1, self.wd_t.shape[1])
        out = F.embedding_bag(idx[None], self.wd_t, per_sample_weights=z[None], mode="sum")
        return out[None]                                            # (1, 1, d)


@contextmanager
def fused_attention(lm):
    """Decode needs no attention weights: run it with SDPA attention (moyu loads models with
    eager attention so that captures can read the weights); restored afterwards, under the lock."""
    with lm.lock:
        before = lm.model.config._attn_implementation
        try:
            lm.model.set_attn_implementation("sdpa")
        except (ValueError, ImportError, AttributeError):
            pass
        try:
            yield
        finally:
            if lm.model.config._attn_implementation != before:
                lm.model.set_attn_implementation(before)


@torch.inference_mode()
def _loop(lm, ids: list[int], n: int, prompt_ctx=None, decode_ctx=None):
    with fused_attention(lm):
        return _timed_loop(lm, ids, n, prompt_ctx, decode_ctx)


def _timed_loop(lm, ids: list[int], n: int, prompt_ctx=None, decode_ctx=None):
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    if prompt_ctx is not None:
        with prompt_ctx():
            out = lm.model(x, use_cache=True)
    else:
        out = lm.model(x, use_cache=True)
    prefill = time.perf_counter() - t0
    past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
    toks = [tok]
    with decode_ctx() if decode_ctx else nullcontext():
        t1 = time.perf_counter()
        for _ in range(n - 1):
            out = lm.model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            toks.append(tok)
        dt = time.perf_counter() - t1
    return toks, prefill, dt


def generate(lm, text: str | list[int], method: Method | None = None, max_new_tokens: int = 64,
             executed: bool = True) -> dict:
    """Greedy decode of max_new_tokens after a dense prompt (text, or token ids used as given).
    Returns method, params, keep, text, tokens, n_tokens, prefill_ms, decode_tokens_per_s, label
    ('executed' | 'simulated')."""
    method = method or make("dense")
    if not 1 <= int(max_new_tokens) <= 4096:
        raise MoyuError(f"max_new_tokens must be in [1, 4096], got {max_new_tokens}")
    ids = lm.encode(text) if isinstance(text, str) else list(lm.bos_ids) + list(text)
    method.prepare(lm)
    state: dict[int, torch.Tensor] = {}

    def prompt_ctx():   # sequence-level methods decide their neurons on the dense prompt
        def fn(i, z, gate, x):
            state[i] = method.select(i, z[0].detach(), gate, lm, x)[-1].nonzero()[:, 0]
        return method_intervention(lm, fn)

    def masked():       # simulated: the dense MLP runs, z is masked
        fixed: dict[int, torch.Tensor] = {}

        def fn(i, z, gate, x):
            if method.sequence_level:
                if i not in fixed:   # the prompt's mask as a 0/1 vector, built once per layer
                    fixed[i] = torch.zeros(z.shape[-1], dtype=z.dtype).index_fill_(0, state[i], 1)
                return z * fixed[i]
            return z * method.select(i, z[0, -1:], gate[-1:], lm, x[-1:]).to(z.dtype)[None]
        return method_intervention(lm, fn)

    if method.name == "dense":
        label, (toks, pre, dt) = "executed", _loop(lm, ids, max_new_tokens)
    elif not executed:
        label = "simulated"
        toks, pre, dt = _loop(lm, ids, max_new_tokens, prompt_ctx if method.sequence_level else None, masked)
    elif method.sequence_level:
        label = "executed"
        toks, pre, dt = _loop(lm, ids, max_new_tokens, prompt_ctx,
                              lambda: sliced_mlps(lm, [state[i] for i in range(lm.n_layers)]))
    else:
        label = "executed"
        toks, pre, dt = _loop(lm, ids, max_new_tokens, None,
                              lambda: swapped_mlps(lm, lambda i, mlp: GatheredMLP(lm, i, mlp, method)))
    return {"method": method.name, "params": dataclasses.asdict(method.params),
            "keep": getattr(method.params, "keep", None),
            "text": lm.tokenizer.decode(toks), "tokens": toks, "n_tokens": len(toks),
            "prefill_ms": pre * 1000,
            "decode_tokens_per_s": (len(toks) - 1) / dt if dt > 0 else float("nan"), "label": label}
