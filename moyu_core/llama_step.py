"""A hand-written one-token decode step for Llama-architecture models (smollm2), batch 1.

transformers' forward spends a good part of a 135M model's decode step outside the matrix
products (mask building, cache objects, output records, wrappers around every layer); that fixed
cost is the same for dense and for a sparse MLP and so hides what sparsity buys. This step calls
the model's own weights and modules (rotary embedding, `layer.mlp`, so a swapped or hooked MLP
is used as it is) with a preallocated KV cache: q, k and v from one matrix product over their
stacked weights, RoPE on q and k at once, single-query attention per group of query heads.
Other architectures (gemma3: sliding windows, q/k norms, four norms a layer) decode through
transformers' forward.

`tests/test_decode.py` checks its logits against transformers' step after step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supported(lm) -> bool:
    return getattr(lm.model.config, "model_type", None) == "llama" and not lm.model.config.attention_bias


def _qkv_weight(lm, i: int) -> torch.Tensor:
    a = lm.layers[i].self_attn
    return lm.derived((i, "qkv"), lambda: torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))


class LlamaDecoder:
    """Holds the KV cache of one sequence: built from transformers' cache after a prefill of
    `n_prompt` tokens, with room for `n_new` more; `step(token)` returns the next logits (vocab,)."""

    def __init__(self, lm, past, n_prompt: int, n_new: int):
        cfg = lm.model.config
        self.lm, self.body, self.pos = lm, lm.body, n_prompt
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.w_qkv = [_qkv_weight(lm, i) for i in range(lm.n_layers)]
        self.k, self.v = [], []        # per layer (positions, n_kv, hd)
        for i in range(lm.n_layers):
            for cache, got in ((self.k, past.layers[i].keys), (self.v, past.layers[i].values)):
                buf = got.new_empty(n_prompt + n_new, self.n_kv, self.head_dim)
                buf[:n_prompt] = got[0].transpose(0, 1)                # from (1, n_kv, n_prompt, hd)
                cache.append(buf)

    def step(self, token: int) -> torch.Tensor:
        p, nh, nkv, hd = self.pos, self.n_heads, self.n_kv, self.head_dim
        h = F.embedding(torch.tensor([[token]]), self.body.embed_tokens.weight)   # (1, 1, d)
        cos, sin = self.body.rotary_emb(h, torch.tensor([[p]]))                    # (1, 1, hd)
        cos, sin = cos[0], torch.cat([-sin[0, :, :hd // 2], sin[0, :, hd // 2:]], -1)
        for i, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            qkv = F.linear(_norm(layer.input_layernorm, h), self.w_qkv[i])[0, 0]   # ((nh+2nkv) hd,)
            qk = qkv[:(nh + nkv) * hd].view(nh + nkv, hd)
            # rotary embedding of q and k at once: x cos + rotate_half(x) sin
            qk = torch.addcmul(qk * cos, torch.roll(qk, hd // 2, -1), sin)
            self.k[i][p] = qk[nh:]
            self.v[i][p] = qkv[(nh + nkv) * hd:].view(nkv, hd)
            # one query: per kv head, its group of query heads against the cached keys
            q = qk[:nh].view(nkv, nh // nkv, hd) * attn.scaling
            keys, values = self.k[i][:p + 1].transpose(0, 1), self.v[i][:p + 1].transpose(0, 1)
            w = torch.softmax(torch.bmm(q, keys.transpose(1, 2)), -1)                 # (nkv, g, p+1)
            o = torch.bmm(w, values).reshape(1, 1, nh * hd)
            h = h + F.linear(o, attn.o_proj.weight)
            h = h + layer.mlp(_norm(layer.post_attention_layernorm, h))
        self.pos = p + 1
        return F.linear(_norm(self.body.norm, h), self.lm.model.lm_head.weight)[0, -1]


def _norm(rms, h: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm (float32 models): h / rms(h) * weight."""
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + rms.variance_epsilon) * rms.weight
