"""Capture a prompt into the store: tokenize, check, address, run the hooks, write.

The same request again (same model weights, token ids, input manner, method and dtype) is a
cache hit: the store answers and the model is not called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import hooks
from .blobs import DTYPES
from .errors import MoyuError
from .models import LoadedModel
from .store import MODES, RunRecord, Store, run_id_for


@dataclass
class CaptureResult:
    run_id: str
    tokens: int
    layers: int
    neurons: int
    cached: bool

    def as_dict(self) -> dict:
        return dict(run_id=self.run_id, tokens=self.tokens, layers=self.layers, neurons=self.neurons,
                    cached=self.cached)


def capture_run(lm: LoadedModel, store: Store, text: str, mode: str = "sequential", prefix: str = "",
                chat: bool = False, dtype: str = "int8", max_tokens: int | None = None,
                progress: Callable[[float], None] | None = None) -> CaptureResult:
    """Capture `text` (dense) into `store`; every check happens before the forward pass."""
    if mode not in MODES:
        raise MoyuError(f"unknown input mode '{mode}'; choose {' or '.join(MODES)}")
    if dtype not in DTYPES:
        raise MoyuError(f"unknown dtype '{dtype}'; choose {', '.join(DTYPES)}")
    # BOS (where the model has one) starts the prefix if there is one, else each parallel
    # sequence, else the text itself
    prefix_ids = lm.encode(prefix, max_tokens=max_tokens) if prefix else (lm.bos_ids if mode == "parallel" else [])
    ids = lm.encode(text, chat=chat, max_tokens=max_tokens, add_bos=not prefix_ids)
    if len(prefix_ids) + (len(ids) if mode == "sequential" else 1) > (max_tokens or 10**9):
        raise MoyuError(f"prefix and prompt together exceed the limit of {max_tokens} tokens")
    run_id = run_id_for(lm.fingerprint, ids, mode, prefix_ids, "dense", {}, dtype)
    result = CaptureResult(run_id, len(ids), lm.n_layers, lm.d_ff, cached=True)
    if store.has_run(run_id):
        return result
    got = hooks.capture(lm, ids, mode=mode, prefix_ids=prefix_ids, progress=progress, int8=(dtype == "int8"))
    rec = RunRecord(run_id=run_id, model=lm.name, fingerprint=lm.fingerprint, mode=mode, prefix=prefix,
                    chat=chat, method="dense", params={}, text=text, n_tokens=len(ids),
                    n_layers=lm.n_layers, d_ff=lm.d_ff, n_heads=lm.n_heads, dtype=dtype)
    quantized = (got.z_int8, got.z_scale) if dtype == "int8" else None
    inserted = store.put_run(rec, ids, lm.pieces(ids), got.z, got.attn_received, got.resid_norm, quantized)
    result.cached = not inserted
    return result
