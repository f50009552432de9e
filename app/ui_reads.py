"""Cached reads of a run. A run id names its data forever (content-addressed), so these
process-wide caches are safe to share between sessions; per-user state lives in
`st.session_state` only."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from moyu_core import analysis
from ui_store import _store, db_path, store


@st.cache_resource(show_spinner=False, max_entries=64)
def _layer(path: str, run_id: str, layer: int):
    z = _store(path).activations(run_id, layer)
    z.setflags(write=False)
    return z  # (T, d_ff)


def layer(run_id: str, layer_index: int):
    return _layer(db_path(), run_id, int(layer_index))


@st.cache_resource(show_spinner=False, max_entries=64)
def _token_stats(path: str, run_id: str):
    return _store(path).token_stats(run_id)


def token_stats(run_id: str):
    """(attn_received (L, H, T), resid_norm (L, T))."""
    return _token_stats(db_path(), run_id)


@st.cache_resource(show_spinner=False, max_entries=64)
def _tokens(path: str, run_id: str):
    return _store(path).tokens(run_id)


def tokens(run_id: str) -> list[tuple[int, str]]:
    return _tokens(db_path(), run_id)


@st.cache_resource(show_spinner=False, max_entries=64)
def _overview(path: str, run_id: str, n_layers: int):
    return analysis.layer_overview(lambda i: _layer(path, run_id, i), n_layers)


def overview(run_id: str, n_layers: int) -> dict:
    return _overview(db_path(), run_id, n_layers)


def clear_run_caches() -> None:
    """Forget cached reads (after a delete or an import); the store is the truth."""
    for f in (_layer, _token_stats, _tokens, _overview):
        f.clear()


def run_record(run_id: str):
    """The run's record, or None (with a friendly message) when it is not in this database."""
    s = store()
    if not s.has_run(run_id):
        st.warning(f"Run `{run_id}` is not in this server's database ({Path(db_path()).name}). "
                   "Capture it on the Explore page, or import it on the Runs page.")
        return None
    return s.run(run_id)
