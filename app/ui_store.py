"""The store and the models, opened once per server process."""
from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

import streamlit as st

from moyu_core import models
from moyu_core.store import DEFAULT_DB


def db_path() -> str:
    return os.environ.get("MOYU_DB") or str(DEFAULT_DB)


def store():
    return _store(db_path())


_STORES: dict[str, object] = {}
_STORES_LOCK = threading.Lock()


def _store(path: str):
    """The local DuckDB store, layered over the team folder of bundles when MOYU_TEAM_DIR is set;
    one per database path (a plain dict, not st.cache_resource: background workers read it too)."""
    from moyu_core.share.team import open_store

    with _STORES_LOCK:
        if path not in _STORES:
            _STORES[path] = open_store(path)
        return _STORES[path]


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(name: str):
    """The model, loaded once; then everything allocated so far (torch, transformers, the
    weights' Python objects) leaves the garbage collector's view (`gc.freeze`). Streamlit runs a
    full collection after every script run (`runner.postScriptGC`), each click and each
    progress-bar poll: over all of that it held the GIL about 240 ms, and after the freeze next to
    nothing (`python benchmarks/probes.py gc`)."""
    models.setup_compute()
    server_memory()
    lm = models.load(name)
    gc.collect()
    gc.freeze()
    return lm


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_trimmed = [0.0]


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def server_memory() -> None:
    """The app server's malloc settings, after `models.setup_compute` (which keeps up to 1 GiB of
    freed heap for steady forward timings in benchmarks): a server holding many sessions' arrays
    gives freed memory back instead. Blocks from 4 MiB (a layer's z, masks, logits) are mapped
    alone and returned when freed; at most 64 MiB of free heap is kept."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 4 * 2**20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


def trim_memory(every_s: float = 5.0) -> None:
    """Return free heap pages of every malloc arena to the system (at most once per `every_s`);
    the threads of many sessions and workers each keep an arena."""
    now = time.monotonic()
    if now - _trimmed[0] < every_s:
        return
    _trimmed[0] = now
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def model(name: str):
    """The loaded model (once per process), with a status box the first time."""
    if name in models._LOADED:
        return _model(name)
    with st.status(f"Loading {name} (once per server process)…", expanded=False) as s:
        lm = _model(name)
        s.update(label=f"Loaded {name} in {lm.load_seconds:.1f} s", state="complete")
    return lm


@st.cache_resource(show_spinner=False, max_entries=8)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve(name)[0])


def tokenizer(name: str):
    """The model's tokenizer (the loaded model's, else read alone from its folder: a fraction
    of a second), or None when this server cannot find that model."""
    if name in models._LOADED:
        return models._LOADED[name].tokenizer
    if name not in available_models() or (
            name in models.REGISTRY and not (models.CACHE_DIR / "models" / name / "moyu.json").exists()):
        return None   # not converted yet: labels are not worth a conversion
    try:
        return _tokenizer(name)
    except Exception:  # noqa: BLE001 - labels fall back to the stored pieces
        return None


def available_models() -> list[str]:
    return models.available_models()


def default_model_index(names: list[str]) -> int:
    """Where the default model sits in a list of model names (0 when it is not there)."""
    return names.index(models.DEFAULT_MODEL) if models.DEFAULT_MODEL in names else 0
