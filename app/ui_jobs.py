"""Work started in the background as soon as a page shows a dense sequential run, so that the
Methods page finds it done: the run's method inputs (one dense forward) and the oracle masks at
the session's keep. Both are kept for the latest runs only."""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import streamlit as st

from moyu_core import analysis, masks
from moyu_core.keep import keep_count
from ui_reads import layer, tokens
from ui_store import db_path, model, store

_INPUTS: OrderedDict[tuple, Future] = OrderedDict()
_INPUTS_LOCK = threading.Lock()
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moyu-method-inputs")
_INPUTS_KEPT = 2   # runs; 1024 tokens of smollm2 take 260 MB


def method_inputs(model_name: str, run_id: str) -> Future:
    """The run's gate activations and MLP inputs (`masks.method_inputs`: one dense forward) as a
    future; the latest runs are kept, a failed one is computed again."""
    key = (db_path(), model_name, run_id)
    with _INPUTS_LOCK:
        fut = _INPUTS.get(key)
        if fut is not None and not (fut.done() and fut.exception() is not None):
            _INPUTS.move_to_end(key)
            return fut
        _INPUTS.pop(key, None)
    lm, ids = model(model_name), [i for i, _ in tokens(run_id)]
    with _INPUTS_LOCK:
        if key not in _INPUTS:
            _INPUTS[key] = _POOL.submit(masks.method_inputs, lm, ids)
            while len(_INPUTS) > _INPUTS_KEPT:
                _INPUTS.popitem(last=False)[1].cancel()  # a forward still queued is not run
        return _INPUTS[key]


def prefetch_methods(rec) -> None:
    """Start, in the background, what the Methods page draws from: the forward the gate/input
    methods (cats, moe, dejavu) read, and the oracle at the session's keep for every layer
    (every method keeping that share is compared with it). Pages call this after drawing, so
    their own first view is not slowed."""
    if rec.mode != "sequential" or rec.method != "dense":
        return
    method_inputs(rec.model, rec.run_id)
    share = keep_count(rec.d_ff, float(st.session_state.get("prefs", {}).get("keep", 0.5))) / rec.d_ff
    with _ORACLES_LOCK:
        if (db_path(), rec.run_id, share) in _PREFETCHED:
            return
        if len(_PREFETCHED) > 64:
            _PREFETCHED.clear()
        _PREFETCHED.add((db_path(), rec.run_id, share))
    s = store()  # the worker reads z from the store: the st.cache_resource readers are the page's
    _POOL.submit(lambda: [oracle_mask(rec.run_id, li, share, s.activations(rec.run_id, li))
                          for li in range(rec.n_layers)])


# ---- the oracle: each token's top share of neurons by |z| ---------------------------------------------

_ORACLES: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()
_ORACLES_LOCK = threading.Lock()
_ORACLES_KEPT = 256  # (run, layer, share) entries, packed: 200 KB each for 1024 tokens of smollm2
_PREFETCHED: set[tuple] = set()  # (database, run, share) already handed to the background worker


def oracle_mask(run_id: str, layer_index: int, share: float, z: np.ndarray | None = None) -> np.ndarray:
    """bool (T, d_ff): the oracle at `share` (`analysis.top_mask` of the layer's z), kept for the
    latest (run, layer, share): every method and keep that keeps the same share reuses it. Safe to
    call from worker threads when `z` is given."""
    key = (db_path(), run_id, int(layer_index), float(share))
    with _ORACLES_LOCK:
        hit = _ORACLES.get(key)
        if hit is not None:
            _ORACLES.move_to_end(key)
    if hit is not None:
        return np.unpackbits(hit[0], axis=-1, count=hit[1]).astype(bool)
    mask = analysis.top_mask(layer(run_id, layer_index) if z is None else z, share)
    with _ORACLES_LOCK:
        _ORACLES[key] = (np.packbits(mask, axis=-1), mask.shape[1])
        while len(_ORACLES) > _ORACLES_KEPT:
            _ORACLES.popitem(last=False)
    return mask
