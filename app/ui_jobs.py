"""Work the pages start in the background, each job saying what it computes and how far it is:
the run's method inputs (one dense forward), threshold calibration, the masks of methods that
need a forward, per-layer agreement with the oracle, quality on the prompt. A page draws what is
ready and, for the rest, `wait` shows the jobs' progress and redraws the page when they end.

Every result is kept in a bounded cache (`ui_cache.Lru`): method inputs for the latest run only
(260 MB for 1024 tokens of smollm2), masks bit-packed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable

import numpy as np
import streamlit as st

from moyu_core import analysis, calibration, masks, methods, preparation
from moyu_core.keep import keep_count
import ui_state
import ui_turns
from ui_cache import Lru
from ui_reads import layer, tokens
from ui_store import db_path, model

# forwards one at a time (they hold the model's lock anyway); numpy over stored z beside them;
# both behind page runs and the browser in the CPU's queue (`ui_turns.lower_priority`)
_MODEL_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moyu-model", initializer=ui_turns.lower_priority)
_NUMBER_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moyu-numbers",
                                  initializer=ui_turns.lower_priority)


class Job:
    """A computation on a worker thread: `label` says what it computes, `fraction` and
    `message` how far it is."""

    def __init__(self, label: str):
        self.label, self.fraction, self.message = label, 0.0, ""
        self.future: Future | None = None

    def report(self, fraction: float, message: str | None = None) -> None:
        """Called by the job between its steps: a checkpoint where it waits for page runs."""
        self.fraction = min(1.0, max(0.0, float(fraction)))
        if message:
            self.message = message
        ui_turns.background_turn()

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def failed(self) -> bool:
        return self.done() and (self.future.cancelled() or self.future.exception() is not None)

    def result(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout)


class Jobs:
    """Jobs of one kind by key, the latest `kept` only (evicting a job still queued cancels it);
    a failed job is started again when asked for again."""

    def __init__(self, pool: ThreadPoolExecutor, kept: int):
        self.pool = pool
        self.jobs = Lru(kept, on_evict=lambda _k, job: job.future.cancel())

    def get(self, key, label: str, fn: Callable[[Job], Any]) -> Job:
        with self.jobs.lock:
            job = self.jobs.get(key)
            if job is not None and not job.failed():
                return job
            job = Job(label)
            job.future = self.pool.submit(fn, job)
            self.jobs.put(key, job, size=0)
            return job

    def peek(self, key) -> Job | None:
        return self.jobs.get(key)

    def drop_queued(self, stale: Callable[[tuple], bool]) -> None:
        """Forget the jobs not started yet whose key is `stale` (a view the user has left)."""
        for key in self.jobs.keys():
            job = self.jobs.get(key)
            if job is not None and stale(key) and job.future.cancel():
                self.jobs.pop(key)

    def clear(self) -> None:
        self.jobs.clear()


INPUTS = Jobs(_MODEL_POOL, kept=1)        # (gate, x) float32 of the latest run: 260 MB at 1024 tokens
CALIBRATIONS = Jobs(_MODEL_POOL, kept=32)  # per-layer thresholds (also cached on disk)
FORWARD_MASKS = Jobs(_MODEL_POOL, kept=4)  # all-layer packed masks of runs that need a forward
QUALITY = Jobs(_MODEL_POOL, kept=48)       # per-token loss and KL on a prompt: (T,) arrays
STATS = Jobs(_NUMBER_POOL, kept=64)        # per-layer agreement with the oracle
_DENSE = Lru(max_items=2)                  # dense final hidden states (T, d) of the latest runs
_LAYER_MASKS = Lru(max_items=512, max_bytes=96 * 2**20)  # (run, method, params, layer) -> packed bits
_ORACLES = Lru(max_items=512, max_bytes=96 * 2**20)      # (run, layer, share) -> packed bits
_PREFETCHED = Lru(max_items=64)                          # (database, run, share) handed to a worker


def params_json(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def build(name: str, params: dict):
    """A fresh method object (binding resources is per object, and workers run in parallel)."""
    return methods.make(name, **params)


def _packed(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return np.packbits(mask, axis=-1), mask.shape[-1]


def _unpacked(hit: tuple[np.ndarray, int]) -> np.ndarray:
    return np.unpackbits(hit[0], axis=-1, count=hit[1]).astype(bool)


# ---- the run's method inputs ----------------------------------------------------------------------

def method_inputs(model_name: str, run_id: str, lm=None) -> Job:
    """The run's gate activations and MLP inputs (`masks.method_inputs`: one dense forward)."""
    key = (db_path(), model_name, run_id)
    job = INPUTS.peek(key)
    if job is not None and not job.failed():
        return job
    lm = lm or model(model_name)   # here, in the page's thread
    ids = [i for i, _ in tokens(run_id)]
    return INPUTS.get(key, f"one dense forward over the prompt's {len(ids)} tokens (the gate activations "
                           "and MLP inputs that cats, moe and dejavu read)",
                      lambda job: masks.method_inputs(lm, ids, progress=job.report))


# ---- the oracle: each token's top share of neurons by |z| ---------------------------------------------

def oracle_mask(run_id: str, layer_index: int, share: float, z: np.ndarray | None = None) -> np.ndarray:
    """bool (T, d_ff): the oracle at `share` (`analysis.top_mask` of the layer's z), kept for the
    latest (run, layer, share): every method and keep that keeps the same share reuses it."""
    key = (db_path(), run_id, int(layer_index), float(share))
    hit = _ORACLES.get(key)
    if hit is not None:
        return _unpacked(hit)
    mask = analysis.top_mask(layer(run_id, layer_index) if z is None else z, share)
    _ORACLES.put(key, _packed(mask))
    return mask


def prefetch_methods(rec) -> None:
    """Start, in the background, what the Methods page draws from: the first calibration pass
    of the threshold methods (once per model), the forward the gate/input methods (cats, moe,
    dejavu) read, and the oracle at the session's keep for every layer. Pages call this after
    drawing, so their own first view is not slowed."""
    prefs = st.session_state.get("prefs", {})
    lm = model(rec.model)
    calibrate_all(lm)
    warm_methods(lm)
    if rec.mode != "sequential" or rec.method != "dense":
        return
    method_inputs(rec.model, rec.run_id, lm)
    share = keep_count(rec.d_ff, float(prefs.get("keep", 0.5))) / rec.d_ff
    key = (db_path(), rec.run_id, share)
    if key in _PREFETCHED:
        return
    _PREFETCHED.put(key, True, size=0)
    run_id, n_layers, path = rec.run_id, rec.n_layers, db_path()

    def oracles():
        for li in range(n_layers):
            ui_turns.background_turn()
            if (path, run_id, li, share) not in _ORACLES:
                _ORACLES.put((path, run_id, li, share), _packed(analysis.top_mask(layer(run_id, li), share)))

    _NUMBER_POOL.submit(oracles)


def warm_methods(lm) -> None:
    """Once per model, in the background: the data methods derive from the weights (moe's experts,
    cett's and static's weight norms), which a method's first view would otherwise wait for."""
    key = ("derived", lm.name, str(lm.fingerprint))
    if key in _PREFETCHED:
        return
    _PREFETCHED.put(key, True, size=0)
    _MODEL_POOL.submit(preparation.warm, lm, [build(name, {}) for name in methods.REGISTRY], ui_turns.background_turn)


# ---- a method's masks -----------------------------------------------------------------------------------

def calibration_job(lm, name: str, params: dict) -> Job | None:
    """The calibration pass the method still needs at these parameters (None: none needed)."""
    m = build(name, params)
    if "thresholds" not in m.requires() or calibration.calibrated(lm, m):
        return None
    warm = _WARMING.get((lm.name, name))
    default = {**dataclasses.asdict(build(name, {}).params), "keep": params.get("keep")}
    if warm is not None and not warm.done() and params == default and params.get("keep") in calibration.KEEP_GRID:
        return warm   # the first pass over every method is under way: it covers this one
    return CALIBRATIONS.get(
        (lm.name, str(lm.fingerprint), name, params_json(params)),
        f"{name}: calibrating per-layer thresholds on standard-library docstrings, for every keep "
        "of the slider at once (once per model, then cached on disk)",
        lambda job: calibration.thresholds(lm, build(name, params), progress=job.report))


def calibrate_all(lm) -> Job | None:
    """One calibration pass, in the background, for every registered method whose threshold is a
    quantile of a score (tda, cats, cett with a keep, ...), at every keep of the slider: once per
    model (then on disk), so that no method's first view and no new keep waits for one."""
    todo = []
    for name, cls in methods.REGISTRY.items():
        if "keep" not in {f.name for f in dataclasses.fields(cls.Params)}:
            continue
        m = build(name, {**dataclasses.asdict(build(name, {}).params), "keep": 0.5})
        if "thresholds" in m.requires() and calibration.by_quantile(m) and not calibration.calibrated(lm, m):
            todo.append(m)
    if not todo:
        return None
    job = CALIBRATIONS.get(
        (lm.name, str(lm.fingerprint), "all", ",".join(m.name for m in todo)),
        f"calibrating {', '.join(m.name for m in todo)} on standard-library docstrings for every keep of the "
        "slider (once per model, then cached on disk)",
        lambda job: calibration.calibrate(lm, todo, progress=job.report))
    for m in todo:
        _WARMING[(lm.name, m.name)] = job
    return job


_WARMING: dict[tuple, Job] = {}   # (model, method) -> the first calibration pass covering it


def _forward_masks(lm, rec, name: str, params: dict) -> Job:
    run_id = rec.run_id
    ids = [i for i, _ in tokens(run_id)]
    return FORWARD_MASKS.get(
        (db_path(), run_id, name, params_json(params)),
        f"{name}: one forward over the {len(ids)} tokens as a single sequence (this run's z was not "
        "captured as one dense sequence)",
        lambda job: np.packbits(masks.keep_masks(lm, build(name, params), ids), axis=-1))


def pending(lm, rec, name: str, params: dict) -> list[Job]:
    """Jobs that must end before the method's masks on this run can be drawn."""
    cal = calibration_job(lm, name, params)
    jobs = [cal] if cal is not None else []
    where = masks.source(rec, build(name, params))
    if where == "method inputs":
        jobs.append(method_inputs(rec.model, rec.run_id, lm))
    elif where == "forward":   # queued after the calibration on the same worker
        jobs.append(_forward_masks(lm, rec, name, params))
    return [j for j in jobs if not j.done() or j.failed()]


def layer_mask(lm, rec, name: str, params: dict, li: int) -> np.ndarray:
    """bool (T, d_ff): which neurons the method keeps at layer `li` for each token; only that
    layer is drawn (from the stored z or the run's method inputs). Call when `pending` is empty."""
    key = (db_path(), rec.run_id, name, params_json(params), int(li))
    hit = _LAYER_MASKS.get(key)
    if hit is not None:
        return _unpacked(hit)
    method = build(name, params)
    where = masks.source(rec, method)
    if where == "stored z":
        got = masks.keep_masks_from(lm, method, layer_z=lambda i: layer(rec.run_id, i), layers=[li])[0]
    elif where == "method inputs":
        got = masks.keep_masks_from(lm, method, inputs=method_inputs(rec.model, rec.run_id, lm).result(),
                                    layers=[li])[0]
    else:
        packed = _forward_masks(lm, rec, name, params).result()
        got = np.unpackbits(packed[li], axis=-1, count=rec.d_ff).astype(bool)
    _LAYER_MASKS.put(key, _packed(got))
    return got


def oracle_for(run_id: str, li: int, keep: np.ndarray) -> np.ndarray:
    """The oracle keeping the same share as the mask `keep` (T, d_ff) at this layer."""
    return oracle_mask(run_id, li, max(np.count_nonzero(keep) / max(1, keep.size), 1e-6))


def layer_stats(lm, rec, name: str, params: dict) -> Job:
    """Agreement with the oracle (recall, precision, kept share) at every layer."""
    run_id = rec.run_id

    def work(job: Job):
        rows = []
        for li in range(rec.n_layers):
            keep = layer_mask(lm, rec, name, params, li)
            rows.append(analysis.mask_agreement(keep, oracle_for(run_id, li, keep)))
            job.report((li + 1) / rec.n_layers, f"layer {li + 1}/{rec.n_layers}")
        return rows

    key = (db_path(), run_id, name, params_json(params))
    STATS.drop_queued(lambda k: k[:3] == key[:3] and k != key)   # the same method at a keep left behind
    return STATS.get(key, f"{name}: recall of the oracle at every layer", work)


# ---- quality on the prompt ------------------------------------------------------------------------------

_dense_lock = threading.Lock()


def prompt_quality(lm, rec, name: str, params: dict) -> Job:
    """Per-token loss and KL(dense || method) of the method on the run's own tokens
    (`moyu_core.prompt_quality`)."""
    from moyu_core import prompt_quality as pq

    ids = [i for i, _ in tokens(rec.run_id)]
    dense_key = (db_path(), lm.name, rec.run_id)

    def work(job: Job):
        with _dense_lock:
            dense = _DENSE.get(dense_key)
            if dense is None:
                job.report(0.0, "dense forward")
                dense = _DENSE.put(dense_key, pq.dense_hidden(lm, ids))
        return pq.prompt_quality(lm, build(name, params), ids, dense=dense, progress=job.report)

    return QUALITY.get((db_path(), rec.run_id, name, params_json(params)),
                       f"{name}: loss and KL against dense on this prompt ({len(ids)} tokens, one forward "
                       "with the method)", work)


def quality_if_done(rec, name: str, params: dict) -> dict | None:
    job = QUALITY.peek((db_path(), rec.run_id, name, params_json(params)))
    return job.result() if job is not None and job.done() and not job.failed() else None


# ---- every layer at a glance ------------------------------------------------------------------------------

OVERVIEWS = Jobs(_NUMBER_POOL, kept=16)


def overview(rec) -> Job:
    """`ui_reads.overview` of the run (every layer's activation frequency and inertia)."""
    from ui_reads import overview as read

    return OVERVIEWS.get((db_path(), rec.run_id), f"activation frequency and inertia of all {rec.n_layers} "
                         f"layers ({rec.n_tokens} tokens)",
                         lambda job: read(rec.run_id, rec.n_layers, progress=job.report))


# ---- waiting ----------------------------------------------------------------------------------------------

def wait(jobs: list[Job], key: str, grace: float = 0.0) -> bool:
    """True when every job has ended (a failed one raises its error), waiting up to `grace`
    seconds. Else progress bars that say what each computes, updated twice a second; the page is
    drawn again when all have ended."""
    futures_wait([j.future for j in jobs], timeout=grace)
    for j in jobs:
        if j.failed() and not j.future.cancelled():
            j.result()   # raise: the page's guard shows the message
    left = [j for j in jobs if not j.done()]
    if not left:
        return True

    @st.fragment(run_every=0.5)
    def poll():
        now = [j for j in left if not j.done()]
        if not now:
            ui_state.hold_url_values()
            st.rerun()
        for j in now:
            st.progress(j.fraction, text=f"⏳ {j.label}" + (f" — {j.message}" if j.message else ""))

    with st.container(key=f"wait_{re.sub(r'[^A-Za-z0-9_-]', '_', key)}"):
        poll()
    return False


def method_key(name: str, params: dict) -> str:
    return f"{name}:{params_json(params)}"


def describe(method) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(method.params).items())
