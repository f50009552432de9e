"""What each neuron writes to the vocabulary: its W_down column through the unembedding.

    effect_i = (g ⊙ W_down[:, i]) @ W_U^T          (vocab,)   the direct logit effect of z_i = 1

Choice: the column passes through the model's own final norm module (so Gemma's (1 + weight) or
a LayerNorm's centring are the model's), with the norm's bias removed (it is the same for every
neuron) and its division by the RMS undone: that division depends on the whole residual stream
of a context, not on the neuron, and would only rescale every neuron's row. For RMSNorm models
this is exactly g ⊙ W_down[:, i]. Without the norm weight g the ranking would be wrong: g scales
each residual dimension before the unembedding reads it. Logit soft-capping (Gemma) is monotone
and ignored. Computed once per model (about 1.3 TFLOP for smollm2: 30 x 1536 columns against a
49152-token head) and cached under cache/atlas-vocab/.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .collect import token_pieces

VOCAB_TOP = 10       # promoted and suppressed tokens kept per neuron
VERSION = 1
_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")


def final_norm(lm) -> torch.nn.Module | None:
    """The norm between the last layer and the LM head, found by its usual names; None when the
    model has none we know (then the raw column is used)."""
    for name in _NORM_NAMES:
        module = getattr(lm.body, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


@torch.inference_mode()
def _through_norm(lm, cols: torch.Tensor) -> torch.Tensor:
    """cols (B, d) -> the norm's output with its bias removed and 1/RMS undone, (B, d)."""
    norm = final_norm(lm)
    if norm is None:
        return cols
    out = norm(cols)
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        out = out - bias
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0)) or 0.0)
    return out * (cols.pow(2).mean(-1, keepdim=True) + eps).sqrt()


@torch.inference_mode()
def vocab_effect(lm, top: int = VOCAB_TOP, block: int = 256) -> pa.Table:
    """Per layer and neuron, the `top` most promoted and most suppressed tokens with their logit
    effect: rows (layer, neuron, kind 'promoted'|'suppressed', rank, token_id, token, value),
    sorted by layer, neuron, kind, rank."""
    w_u = lm.model.get_output_embeddings().weight.detach().float()      # (V, d)
    L, D = lm.n_layers, lm.d_ff
    ids = np.empty((L, D, 2, top), np.int32)
    vals = np.empty((L, D, 2, top), np.float32)
    for i in range(L):
        down = lm.mlp_weights(i).down                                   # (d, D)
        for s in range(0, D, block):
            cols = _through_norm(lm, down[:, s:s + block].T.contiguous())   # (B, d)
            logits = cols @ w_u.T                                        # (B, V)
            hi = logits.topk(top, dim=1)
            lo = logits.topk(top, dim=1, largest=False)
            ids[i, s:s + block, 0], vals[i, s:s + block, 0] = hi.indices.numpy(), hi.values.numpy()
            ids[i, s:s + block, 1], vals[i, s:s + block, 1] = lo.indices.numpy(), lo.values.numpy()
    n = L * D * 2 * top
    flat_ids = ids.reshape(-1)
    return pa.table({
        "layer": np.repeat(np.arange(L, dtype=np.int16), D * 2 * top),
        "neuron": np.tile(np.repeat(np.arange(D, dtype=np.int32), 2 * top), L),
        "kind": pa.array(np.tile(np.repeat(np.array(["promoted", "suppressed"], dtype=object), top), L * D),
                         pa.string()).dictionary_encode(),
        "rank": np.tile(np.arange(top, dtype=np.int16), n // top),
        "token_id": flat_ids, "token": pa.array(token_pieces(lm, flat_ids), pa.string()),
        "value": vals.reshape(-1)})


def cached_vocab_effect(lm) -> pa.Table:
    """`vocab_effect(lm)`, kept in memory with the model and on disk per model fingerprint."""
    def build():
        from ..models import CACHE_DIR
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", lm.name)[-64:]
        path = Path(CACHE_DIR) / "atlas-vocab" / f"{name}-{str(lm.fingerprint)[:16]}-v{VERSION}.parquet"
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowInvalid):
            pass
        table = vocab_effect(lm)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return table
    return lm.derived(("atlas", "vocab", VERSION), build)
