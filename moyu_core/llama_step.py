"""A hand-written one-token decode step for Llama-architecture models (smollm2), batch 1.

transformers' forward spends a good part of a 135M model's decode step outside the matrix
products (mask building, cache objects, output records, wrappers around every layer); that fixed
cost is the same for dense and for a sparse MLP and so hides what sparsity buys. This step calls
the model's own weights and modules (rotary embedding, `layer.mlp`, so a swapped or hooked MLP
is used as it is) with a preallocated KV cache: q, k and v from one matrix product over their
stacked weights, RoPE on q and k at once, single-query attention per group of query heads.
Other architectures (gemma3: sliding windows, q/k norms, four norms a layer) decode through
transformers' forward.

For float32 weights each layer's attention half (both norms, the q/k/v product, RoPE, the cache
write, attention, the o product and the residual) is one call of the kernels' `llama_attention`.
As about thirty small torch calls a layer, the time outside the kernels was about a quarter of a
135M model's dense decode step under cProfile (`python benchmarks/probes.py decode-parts
--threads 2`), a fixed cost that hid what a sparse MLP buys. The MLP runs through `layer.mlp`,
or, where the decoder is given bound MLP kernels (`mlps`: the speed protocol's `decode.in_turn`),
the whole step (embedding, every layer, the LM head) is one call of the kernels' `Decoder`.

Every product of the step other than the MLP (q, k and v stacked, o, the LM head) goes through
`linears`: `DenseLinears` (the fused kernels' dense matrix-vector product, for dense decoding and
every method), `InputSparseLinears` (TEAL executed: input channels below a threshold skipped) or
`InputMaskedLinears` (TEAL simulated: those channels zeroed, then the dense product).

`tests/test_decode.py` checks its logits against transformers' step after step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels


def supported(lm) -> bool:
    return getattr(lm.model.config, "model_type", None) == "llama" and not lm.model.config.attention_bias


def _qkv(lm, i: int) -> torch.Tensor:
    """q, k and v weights stacked, ((nh + 2 nkv) hd, d): one product for all three."""
    a = lm.layers[i].self_attn
    return torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach().float()


def _o(lm, i: int) -> torch.Tensor:
    return lm.layers[i].self_attn.o_proj.weight.detach().float()


class DenseLinears:
    """Dense q/k/v (stacked), o and LM head products on the kernels' matrix-vector product, with
    the weights in huge-page memory (built once per model)."""

    def __init__(self, lm):
        self.gemv = kernels.ops().gemv
        self.w_qkv = [kernels.rows(lm, (i, "qkv"), lambda i=i: _qkv(lm, i)) for i in range(lm.n_layers)]
        self.w_o = [kernels.rows(lm, (i, "o"), lambda i=i: _o(lm, i)) for i in range(lm.n_layers)]
        self.w_head = kernels.rows(lm, "lm_head", lambda: lm.model.lm_head.weight.detach().float())

    def qkv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.gemv(self.w_qkv[i], x)

    def o(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.gemv(self.w_o[i], x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.gemv(self.w_head, x)

    def fused(self, i: int) -> tuple | None:
        """Layer i's q/k/v and o products as the fused attention kernel takes them: (w_qkv,
        bounds, qkv thresholds, w_o, o thresholds), no thresholds meaning dense; None where the
        products run only in Python."""
        return self.w_qkv[i], [], [], self.w_o[i], []


class InputSparseLinears(DenseLinears):
    """TEAL's attention products: input channels j with |x_j| below the projection's threshold are
    skipped, the weights stored transposed (`kernels.input_major`) so that a channel's weights
    are one row (q, k and v stacked: one row over the three). thresholds[i]
    maps "q", "k", "v", "o" to layer i's thresholds. The LM head stays dense."""

    def __init__(self, lm, thresholds: list[dict]):
        super().__init__(lm)
        self.linear_t = kernels.ops().linear_t
        self.t_qkv = [[float(t[p]) for p in ("q", "k", "v")] for t in thresholds]
        self.t_o = [[float(t["o"])] for t in thresholds]
        a = lm.layers[0].self_attn
        n_q, n_k = a.q_proj.weight.shape[0], a.k_proj.weight.shape[0]
        self.bounds = [0, n_q, n_q + n_k, n_q + 2 * n_k]
        n_o = a.o_proj.weight.shape[0]
        self.bounds_o = [0, n_o]
        self.w_qkv_t = [kernels.transposed(lm, (i, "qkv"), lambda i=i: _qkv(lm, i))
                        for i in range(lm.n_layers)]
        self.w_o_t = [kernels.transposed(lm, (i, "o"), lambda i=i: _o(lm, i))
                      for i in range(lm.n_layers)]

    def qkv(self, i, x):
        return self.linear_t(self.w_qkv_t[i], x, self.bounds, self.t_qkv[i])

    def o(self, i, x):
        return self.linear_t(self.w_o_t[i], x, self.bounds_o, self.t_o[i])

    def fused(self, i):
        return self.w_qkv_t[i], self.bounds, self.t_qkv[i], self.w_o_t[i], self.t_o[i]


class InputMaskedLinears(DenseLinears):
    """TEAL simulated: the input entries of q, k, v and o below their thresholds are zeroed and the
    dense products run (thresholds[i] as for `InputSparseLinears`)."""

    def __init__(self, lm, thresholds: list[dict]):
        super().__init__(lm)
        self.t = thresholds
        a = lm.layers[0].self_attn
        n_q, n_k = a.q_proj.weight.shape[0], a.k_proj.weight.shape[0]
        self.rows = {"q": slice(0, n_q), "k": slice(n_q, n_q + n_k), "v": slice(n_q + n_k, n_q + 2 * n_k)}

    def _masked(self, x, t):
        return x * (x.abs() >= t) if t > 0 else x

    def qkv(self, i, x):
        return torch.cat([self.gemv(self.w_qkv[i][r], self._masked(x, float(self.t[i][p])))
                          for p, r in self.rows.items()])

    def o(self, i, x):
        return self.gemv(self.w_o[i], self._masked(x, float(self.t[i]["o"])))

    def fused(self, i):
        return None


class LlamaDecoder:
    """Holds the KV cache of one sequence: built from transformers' cache after a prefill of
    `n_prompt` tokens, with room for `n_new` more; `step(token)` returns the next logits (vocab,).
    `mlps`, one kernel per layer (one token's MLP input (d,) -> its output (d,)), run instead of
    `layer.mlp`: two decoders with different MLPs can then step in turn on one model
    (`decode.compare_speed`). Where they are bound kernels (`kernels.ops().Mlp`) and every layer's
    attention is fused, the whole step is one call of the kernels' `Decoder`."""

    def __init__(self, lm, past, n_prompt: int, n_new: int, linears: DenseLinears | None = None,
                 mlps: list | None = None):
        cfg = lm.model.config
        self.lm, self.body, self.pos = lm, lm.body, n_prompt
        self.linears = linears or DenseLinears(lm)
        self.mlps = mlps
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.k, self.v = [], []        # per layer (positions, n_kv, hd)
        for i in range(lm.n_layers):
            for cache, got in ((self.k, past.layers[i].keys), (self.v, past.layers[i].values)):
                buf = got.new_empty(n_prompt + n_new, self.n_kv, self.head_dim)
                buf[:n_prompt] = got[0].transpose(0, 1)                # from (1, n_kv, n_prompt, hd)
                cache.append(buf)
        self.fused = self._fused_layers()
        self.native = self._native(n_prompt, n_new)

    def _fused_layers(self) -> list[tuple] | None:
        """Per layer, the fixed arguments of the kernels' `llama_attention` (the attention half
        of the step in one call); None (the step runs in torch) for non-float32 weights or
        products the kernel lacks (`InputMaskedLinears`)."""
        if self.k[0].dtype != torch.float32 or self.body.embed_tokens.weight.dtype != torch.float32:
            return None
        out = []
        for i, layer in enumerate(self.body.layers):
            f = self.linears.fused(i)
            if f is None:
                return None
            w_qkv, bounds, t_qkv, w_o, t_o = f
            n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
            out.append((n1.weight.detach().float().contiguous(), float(n1.variance_epsilon), w_qkv, bounds, t_qkv,
                        w_o, t_o, n2.weight.detach().float().contiguous(), float(n2.variance_epsilon),
                        float(layer.self_attn.scaling)))
        return out

    def _native(self, first: int, n: int):
        """The kernels' `Decoder` over this decoder's layers, caches and MLP kernels, for positions
        first .. first + n - 1; None where the step needs Python (a layer without the fused
        attention, an MLP module or a Python function)."""
        ops = kernels.ops()
        if self.fused is None or self.mlps is None or not all(isinstance(m, ops.Mlp) for m in self.mlps):
            return None
        h = self.body.embed_tokens.weight[:1].view(1, 1, -1)
        rope = [self._rope(h, p) for p in range(first, first + n)]   # per position, as a step computes it
        cos, sin = (torch.stack([r[k].reshape(-1) for r in rope]).contiguous() for k in (0, 1))
        norm, layers = self.body.norm, [f + (k, v) for f, k, v in zip(self.fused, self.k, self.v)]
        return ops.Decoder(self.body.embed_tokens.weight.detach(), layers, list(self.mlps), cos, sin,
                           norm.weight.detach().float().contiguous(), float(norm.variance_epsilon),
                           self.linears.w_head, self.n_heads, self.n_kv, self.head_dim, first)

    def _rope(self, h: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (1, 1, hd) of position p, sin's first half negated: rope(x) = x cos + roll(x) sin."""
        hd = self.head_dim
        cos, sin = self.body.rotary_emb(h, torch.tensor([[p]]))                    # (1, 1, hd)
        return cos[0], torch.cat([-sin[0, :, :hd // 2], sin[0, :, hd // 2:]], -1)

    def step(self, token: int) -> torch.Tensor:
        p, nh, nkv, hd = self.pos, self.n_heads, self.n_kv, self.head_dim
        if self.native is not None:
            logits = self.native.step(token, p)
            self.pos = p + 1
            return logits
        h = F.embedding(torch.tensor([[token]]), self.body.embed_tokens.weight)   # (1, 1, d)
        cos, sin = self._rope(h, p)
        if self.fused is not None:
            return self._fused_step(h.view(-1), cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous())
        for i, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            qkv = self.linears.qkv(i, _norm(layer.input_layernorm, h).view(-1))      # ((nh+2nkv) hd,)
            qk = qkv[:(nh + nkv) * hd].view(nh + nkv, hd)
            # rotary embedding of q and k at once: x cos + rotate_half(x) sin
            qk = torch.addcmul(qk * cos, torch.roll(qk, hd // 2, -1), sin)
            self.k[i][p] = qk[nh:]
            self.v[i][p] = qkv[(nh + nkv) * hd:].view(nkv, hd)
            # one query: per kv head, its group of query heads against the cached keys
            q = qk[:nh].view(nkv, nh // nkv, hd) * attn.scaling
            keys, values = self.k[i][:p + 1].transpose(0, 1), self.v[i][:p + 1].transpose(0, 1)
            w = torch.softmax(torch.bmm(q, keys.transpose(1, 2)), -1)                 # (nkv, g, p+1)
            o = torch.bmm(w, values).reshape(nh * hd)
            h = h + self.linears.o(i, o).view(1, 1, -1)
            h = h + self._mlp(i, _norm(layer.post_attention_layernorm, h))
        self.pos = p + 1
        return self.linears.head(_norm(self.body.norm, h).view(-1))

    def _fused_step(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The step with each layer's attention half in one kernel call (`llama_attention`) and
        its MLP through `layer.mlp` as before (swapped or hooked MLPs run as they are), or its
        kernel in `mlps`."""
        attention, p = kernels.ops().llama_attention, self.pos
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        for i, layer in enumerate(self.body.layers):
            n1, e1, w_qkv, bounds, t_qkv, w_o, t_o, n2, e2, scaling = self.fused[i]
            h, x = attention(h, n1, e1, w_qkv, bounds, t_qkv, cos, sin, self.k[i], self.v[i], p, nh, nkv, hd,
                             scaling, w_o, t_o, n2, e2)
            h = h + self._mlp(i, x.view(1, 1, -1)).view(-1)
        self.pos = p + 1
        return self.linears.head(_norm(self.body.norm, h.view(1, 1, -1)).view(-1))

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Layer i's MLP on x (1, 1, d): its kernel in `mlps`, else `layer.mlp`."""
        if self.mlps is None:
            return self.body.layers[i].mlp(x)
        return self.mlps[i](x.reshape(-1)).view(1, 1, -1)


def _norm(rms, h: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm (float32 models): h / rms(h) * weight."""
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + rms.variance_epsilon) * rms.weight
