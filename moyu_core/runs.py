"""Capture a prompt into the store: tokenize, check, address, run the hooks, write.

The same request again (same model weights, token ids, input manner, context, method and dtype)
is a cache hit: the store answers and the model is not called.

Parallel input never puts a measured token at position 0, the attention sink (DESIGN.md, "What is
captured"): each token follows `parallel_context`. The context's ids are hashed into the run id,
so runs made before this rule (smollm2 tokens alone at position 0) keep their own ids and are
never served for a newline-context request.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import hooks
from .blobs import DTYPES
from .errors import MoyuError
from .models import LoadedModel
from .store import MODES, RunRecord, Store, run_id_for


CONTEXT_RULE = "parallel tokens follow the model's BOS, else one newline token; a prefix replaces that"


def newline_ids(lm: LoadedModel) -> list[int]:
    """One newline token: the last id of the tokenization of "\\n" (a SentencePiece tokenizer
    may put a word-start piece before it)."""
    ids = lm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    if not ids:
        raise MoyuError(f"{lm.name}'s tokenizer has no newline token; give a prefix for parallel input")
    return [ids[-1]]


def parallel_context(lm: LoadedModel, prefix: str = "", max_tokens: int | None = None) -> list[int]:
    """The tokens every parallel token follows: the user's prefix (after the model's BOS where it
    has one), else the model's BOS, else one newline token (smollm2 has no BOS)."""
    if prefix:
        return lm.encode(prefix, max_tokens=max_tokens)
    return list(lm.bos_ids) or newline_ids(lm)


def context_text(lm: LoadedModel, prefix: str, context_ids: list[int]) -> str:
    """What a run records as its context: the user's prefix, else the default context decoded
    with its special tokens ("\\n" for smollm2, "<bos>" for gemma)."""
    return prefix or lm.tokenizer.decode(context_ids)


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
    # BOS (where the model has one) starts the context: the prefix, or in parallel input the
    # default context; with neither, the text itself
    if mode == "parallel":
        prefix_ids = parallel_context(lm, prefix, max_tokens)
    else:
        prefix_ids = lm.encode(prefix, max_tokens=max_tokens) if prefix else []
    ids = lm.encode(text, chat=chat, max_tokens=max_tokens, add_bos=not prefix_ids)
    if len(prefix_ids) + (len(ids) if mode == "sequential" else 1) > (max_tokens or 10**9):
        raise MoyuError(f"prefix and prompt together exceed the limit of {max_tokens} tokens")
    run_id = run_id_for(lm.fingerprint, ids, mode, prefix_ids, "dense", {}, dtype)
    result = CaptureResult(run_id, len(ids), lm.n_layers, lm.d_ff, cached=True)
    if store.has_run(run_id):
        return result
    got = hooks.capture(lm, ids, mode=mode, prefix_ids=prefix_ids, progress=progress, int8=(dtype == "int8"))
    shown = context_text(lm, prefix, prefix_ids) if mode == "parallel" else prefix
    rec = RunRecord(run_id=run_id, model=lm.name, fingerprint=lm.fingerprint, mode=mode, prefix=shown,
                    chat=chat, method="dense", params={}, text=text, n_tokens=len(ids),
                    n_layers=lm.n_layers, d_ff=lm.d_ff, n_heads=lm.n_heads, dtype=dtype)
    quantized = (got.z_int8, got.z_scale) if dtype == "int8" else None
    inserted = store.put_run(rec, ids, lm.pieces(ids), got.z, got.attn_received, got.resid_norm, quantized)
    result.cached = not inserted
    return result
