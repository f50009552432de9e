"""Cached reads of a run. A run id names its data forever (content-addressed), so these
process-wide caches are safe to share between sessions (and with the background workers of
`ui_jobs`); per-user state lives in `st.session_state` only. Every cache is bounded: layer
activations by bytes, the rest by entries."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from moyu_core import analysis
from moyu_core.tokens_display import Span, labels, merge_byte_pieces
from ui_cache import Lru
from ui_store import _store, db_path, store, tokenizer

Z_BYTES = 256 * 2**20   # float32 layer activations: 40 layers of a 1024-token smollm2 run
_Z = Lru(max_items=256, max_bytes=Z_BYTES)
_TOKENS = Lru(max_items=64)       # (id, piece) lists
_PIECES = Lru(max_items=64)       # display labels (byte pieces merged)
_STATS = Lru(max_items=16)        # attention received (L, H, T) and residual norms (L, T): 1 MB each
_OVERVIEW = Lru(max_items=32)     # per-layer frequency (L, d_ff) and inertia rows: 0.4 MB each
_ORDERS = Lru(max_items=128)      # neuron permutations (d_ff,)
_LAYER_FIGURES = Lru(max_items=512)   # per layer: inertia figures, colour-scale ends (a few floats)
# kept here, not in the page scripts: a page script runs afresh on every rerun, and so would its caches
POOLED = Lru(max_items=24)        # Explore: (db, run, layer, norm, order, first) -> pooled overview and its sources
NEURONS = Lru(max_items=256)      # Neurons: (folder, manifest updated, layer, neuron) -> dashboard data


def layer(run_id: str, layer_index: int):
    """z (T, d_ff) float32, read-only; safe from any thread."""
    path = db_path()

    def read():
        z = _store(path).activations(run_id, int(layer_index))
        z.setflags(write=False)
        return z

    return _Z.get_or_put((path, run_id, int(layer_index)), read)


def token_stats(run_id: str):
    """(attn_received (L, H, T), resid_norm (L, T))."""
    path = db_path()
    return _STATS.get_or_put((path, run_id), lambda: _store(path).token_stats(run_id))


def tokens(run_id: str) -> list[tuple[int, str]]:
    path = db_path()
    return _TOKENS.get_or_put((path, run_id), lambda: _store(path).tokens(run_id))


def spans(run_id: str, model_name: str | None = None) -> list[Span]:
    """The run's text as display spans: whole characters, the byte pieces of a cut character
    merged (`tokens_display`), decoded with the run's model's tokenizer; the stored pieces, one
    span each, when that tokenizer is not available here."""
    path = db_path()

    def make():
        toks = tokens(run_id)
        tok = tokenizer(model_name) if model_name else None
        if tok is None:
            return [Span(i, i + 1, p) for i, (_, p) in enumerate(toks)]
        return merge_byte_pieces([i for i, _ in toks], lambda ids: tok.decode(ids))

    return _PIECES.get_or_put((path, run_id, model_name), make)


def pieces(run_id: str, model_name: str | None = None) -> list[str]:
    """One display label per token (`tokens_display.labels`): a piece of a cut character shows
    the whole character and its part, e.g. "😀 (1/2)"."""
    return labels(spans(run_id, model_name))


def neuron_order(run_id: str, layer_index: int, order: str = "frequency"):
    """`analysis.neuron_order` of the layer (a permutation of neuron ids), cached."""
    path = db_path()
    return _ORDERS.get_or_put((path, run_id, int(layer_index), order),
                              lambda: analysis.neuron_order(layer(run_id, layer_index), order))


def inertia(run_id: str, layer_index: int, skip_first: bool):
    """`analysis.inertia` of the layer (token 0 left out with `skip_first`), cached."""
    path = db_path()
    return _LAYER_FIGURES.get_or_put((path, run_id, int(layer_index), "inertia", bool(skip_first)),
                                     lambda: analysis.inertia(layer(run_id, layer_index), skip_first=skip_first))


def colour_limit(run_id: str, layer_index: int, norm: str, first: int, clip: float) -> float:
    """`analysis.colour_limit` of the layer's values under `norm`, from token `first` on, cached
    (the neuron order does not change it)."""
    path = db_path()
    return _LAYER_FIGURES.get_or_put(
        (path, run_id, int(layer_index), "limit", norm, int(first), float(clip)),
        lambda: analysis.colour_limit(analysis.normalise(layer(run_id, layer_index)[first:], norm), clip))


def overview(run_id: str, n_layers: int, progress=None) -> dict:
    """`analysis.layer_overview` of the run; `progress(fraction, message)` before each layer."""
    path = db_path()

    def get(i: int):
        if progress:
            progress(i / n_layers, f"layer {i + 1}/{n_layers}")
        return layer(run_id, i)

    return _OVERVIEW.get_or_put((path, run_id, n_layers), lambda: analysis.layer_overview(get, n_layers))


def clear_run_caches() -> None:
    """Forget cached reads (after a delete or an import); the store is the truth."""
    for c in (_Z, _TOKENS, _PIECES, _STATS, _OVERVIEW, _ORDERS, _LAYER_FIGURES):
        c.clear()


def run_record(run_id: str):
    """The run's record, or None (with a friendly message) when it is not in this database."""
    s = store()
    if not s.has_run(run_id):
        st.warning(f"Run `{run_id}` is not in this server's database ({Path(db_path()).name}). "
                   "Capture it on the Explore page, or import it on the Runs page.")
        return None
    return s.run(run_id)
