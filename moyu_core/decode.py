"""Lean greedy KV-cache decode loop (batch 1) with executed sparse MLPs.

The prompt always runs dense; prefill and decode use SDPA attention (captures need eager attention
for its weights, decode does not), for dense and methods alike. Llama-architecture models decode
with the hand-written step of `llama_step.py`, others through transformers' forward. Dense
decode runs `SlicedMLP` over all neurons (gate and up stacked in one matrix), the same module a
sliced method runs over its kept neurons. Every timing is labelled:

- *executed*, sequence-level methods (griffin, static): each layer's MLP is a `SlicedMLP` holding
  copies of only the kept neurons' gate/up rows and down columns.
- *executed*, per-token methods (tda, cats, cett, dejavu, moe, oracle): each layer's MLP is
  replaced by `GatheredMLP`, which per token reads only what the method needs to decide (the
  full gate for z- or gate-based methods, nothing for a router on x) and then only the kept
  neurons' rows of `up_proj`/`gate_proj` and of `W_down^T` (an `embedding_bag` weighted sum).
- *simulated*: the dense MLP runs and z is masked (quality only, nothing saved). Families
  without an executed path (`executed_path`: non-gated MLPs, MLP biases) always run simulated.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from . import llama_step
from .errors import MoyuError
from .hooks import method_intervention
from .models import fused_attention
from .methods import Method, make
from .preparation import prepare

def executed_path(lm) -> bool:
    """Whether executed sparse MLPs exist for this model: a gated MLP in its own module, without
    biases (llama, qwen2, qwen3, mistral, gemma2, gemma3, phi3). Other families run simulated."""
    return lm.gated and lm.family.mlp is not None and not lm.mlp_weights(0).biased


def _gate_up(lm, i: int) -> torch.Tensor:
    """gate and up rows stacked, (2 d_ff, d): both from one matrix product."""
    return lm.derived((i, "gate_up"), lambda: torch.cat([lm.mlp_weights(i).gate, lm.mlp_weights(i).up]))


def _down_t(lm, i: int) -> torch.Tensor:
    """W_down transposed to (d_ff, d), so a neuron's output column is one row."""
    return lm.derived((i, "down_t"), lambda: lm.mlp_weights(i).down.T)


@contextmanager
def swapped_mlps(lm, make_mlp):
    """Temporarily replace every layer's MLP module (the family's `mlp` attribute) by
    make_mlp(layer_index, mlp); restored in finally."""
    attr = lm.family.mlp
    if attr is None:
        raise MoyuError(f"{lm.family.name} has no MLP module to swap: no executed path")
    with lm.lock:
        saved = [getattr(layer, attr) for layer in lm.layers]
        try:
            for i, layer in enumerate(lm.layers):
                setattr(layer, attr, make_mlp(i, saved[i]))
            yield
        finally:
            for layer, mlp in zip(lm.layers, saved):
                setattr(layer, attr, mlp)


class SlicedMLP(torch.nn.Module):
    """The MLP restricted to neurons idx, or all of them (idx None: the dense decode runs this
    same module, so that a sliced one differs from it in nothing but its neurons). gate and up
    rows stacked in one matrix, one product for both."""

    def __init__(self, lm, i: int, mlp, idx: torch.Tensor | None = None):
        super().__init__()
        d_ff, gate_up, w_down = lm.d_ff, _gate_up(lm, i), lm.mlp_weights(i).down
        self.act_fn, self.k = lm.parts(i).act, d_ff if idx is None else len(idx)
        if idx is None:
            self.w_gate_up, self.w_down = gate_up, w_down
        else:
            self.w_gate_up = gate_up.index_select(0, torch.cat([idx, idx + d_ff]))
            self.w_down = w_down.index_select(1, idx).contiguous()

    def forward(self, x):
        g, u = F.linear(x, self.w_gate_up).split(self.k, -1)
        return F.linear(self.act_fn(g) * u, self.w_down)


def sliced_mlps(lm, keep_idx: list[torch.Tensor] | None = None):
    """Every layer's MLP as a SlicedMLP on keep_idx[layer] (all neurons when keep_idx is None)
    for the duration of the context."""
    return swapped_mlps(lm, lambda i, mlp: SlicedMLP(lm, i, mlp, None if keep_idx is None else keep_idx[i]))


class GatheredMLP(torch.nn.Module):
    """Per-token executed sparse MLP for batch-1 decode (one token per call; longer inputs run
    dense). The method's `needs` says what it decides from: "z" (gate and up dense, down
    gathered), "gate" (gate dense, up and down gathered), "x" (router on the MLP input: gate, up
    and down all gathered)."""

    def __init__(self, lm, i: int, mlp, method: Method):
        super().__init__()
        self.lm, self.i, self.mlp, self.method, self.act = lm, i, mlp, method, lm.parts(i).act
        self.wg, self.wu = lm.mlp_weights(i).gate, lm.mlp_weights(i).up
        self.w_gate_up, self.wd_t = _gate_up(lm, i), _down_t(lm, i)
        self.needs = method.needs

    def forward(self, x):
        if x.shape[0] != 1 or x.shape[1] != 1:
            return self.mlp(x)
        h = x[0]                                                    # (1, d)
        act = self.act
        if self.needs == "x":
            idx = self.method.select(self.i, None, None, self.lm, h)[0].nonzero()[:, 0]
            z = act(F.embedding(idx, self.wg) @ h[0]) * (F.embedding(idx, self.wu) @ h[0])
        elif self.needs == "gate":
            g = act(h @ self.wg.T)                                  # (1, d_ff), dense
            idx = self.method.select(self.i, None, g, self.lm, h)[0].nonzero()[:, 0]
            z = g[0, idx] * (F.embedding(idx, self.wu) @ h[0])
        else:
            g, u = F.linear(h, self.w_gate_up).split(self.wg.shape[0], -1)
            g = act(g)
            zf = g * u                                              # (1, d_ff), dense
            idx = self.method.select(self.i, zf, g, self.lm, h)[0].nonzero()[:, 0]
            z = zf[0, idx]
        if idx.numel() == 0:                                        # nothing kept: the MLP adds 0
            return x.new_zeros(1, 1, self.wd_t.shape[1])
        out = F.embedding_bag(idx[None], self.wd_t, per_sample_weights=z[None], mode="sum")
        return out[None]                                            # (1, 1, d)


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
        if llama_step.supported(lm):
            dec = llama_step.LlamaDecoder(lm, past, len(ids), n)
            for _ in range(n - 1):
                tok = int(dec.step(tok).argmax())
                toks.append(tok)
        else:
            for _ in range(n - 1):
                out = lm.model(torch.tensor([[tok]]), cache=past, use_cache=True)
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
    prepare(lm, method)
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
        dense_ctx = (lambda: sliced_mlps(lm)) if executed_path(lm) else None
        label, (toks, pre, dt) = "executed", _loop(lm, ids, max_new_tokens, None, dense_ctx)
    elif not (executed and executed_path(lm)):   # simulated where no executed path exists
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
