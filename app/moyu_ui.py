"""What every page shares: the store, the model (loaded once per process), cached reads of a run,
URL-backed widget state, and a guard that turns every exception into a friendly message.

Per-user state lives in `st.session_state` only; the process-wide caches below hold nothing but
content-addressed data (a run id names its activations forever), so two sessions never mix.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from moyu_core.errors import MoyuError  # noqa: E402

log = logging.getLogger("moyu.app")


# ---- errors ---------------------------------------------------------------------------------------

def _is_control_flow(e: BaseException) -> bool:
    # st.rerun / st.stop / st.switch_page raise these; they must pass through
    from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

    return isinstance(e, ScriptControlException)


def guard(body: Callable[[], None]) -> None:
    """Run a page body; MoyuError becomes its one-line message, anything else a generic one (the
    traceback goes to the server log, never to the browser)."""
    try:
        body()
    except MoyuError as e:
        st.error(str(e), icon=":material/error:")
    except Exception as e:  # noqa: BLE001
        if _is_control_flow(e):
            raise
        log.exception("page failed")
        st.error(f"Something went wrong ({type(e).__name__}). The details are in the server log; "
                 "try again or pick another run.", icon=":material/error:")


# ---- store and model --------------------------------------------------------------------------------

def db_path() -> str:
    from moyu_core.store import DEFAULT_DB

    return os.environ.get("MOYU_DB") or str(DEFAULT_DB)


def store():
    return _store(db_path())


@st.cache_resource(show_spinner=False)
def _store(path: str):
    """The local DuckDB store, layered over the team folder of bundles when MOYU_TEAM_DIR is set."""
    from moyu_core.bundle import open_store

    return open_store(path)


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(name: str):
    from moyu_core import models

    models.setup_compute()
    return models.load(name)


def model(name: str):
    """The loaded model (once per process), with a status box the first time."""
    from moyu_core import models

    if name in getattr(models, "_LOADED", {}):
        return _model(name)
    with st.status(f"Loading {name} (once per server process)…", expanded=False) as s:
        lm = _model(name)
        s.update(label=f"Loaded {name} in {lm.load_seconds:.1f} s", state="complete")
    return lm


def available_models() -> list[str]:
    from moyu_core import models

    return models.available_models()


# ---- a run's method inputs, computed in the background ----------------------------------------------

_INPUTS: OrderedDict[tuple, Future] = OrderedDict()
_INPUTS_LOCK = threading.Lock()
_INPUTS_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moyu-method-inputs")
_INPUTS_KEPT = 2   # runs; 1024 tokens of smollm2 take 260 MB


def method_inputs(model_name: str, run_id: str) -> Future | None:
    """The run's gate activations and MLP inputs (`methods.method_inputs`: one dense forward,
    about 1.5 s for 1024 tokens on 2 cores) as a future; the latest runs are kept. None when the
    methods package offers no `method_inputs`."""
    from moyu_core import methods

    if not hasattr(methods, "method_inputs"):
        return None
    key = (db_path(), model_name, run_id)
    with _INPUTS_LOCK:
        fut = _INPUTS.get(key)
        if fut is not None and not (fut.done() and fut.exception() is not None):  # failed: again
            _INPUTS.move_to_end(key)
            return fut
        _INPUTS.pop(key, None)
    lm, ids = model(model_name), [i for i, _ in tokens(run_id)]
    with _INPUTS_LOCK:
        if key not in _INPUTS:
            _INPUTS[key] = _INPUTS_POOL.submit(methods.method_inputs, lm, ids)
            while len(_INPUTS) > _INPUTS_KEPT:
                _INPUTS.popitem(last=False)[1].cancel()  # a forward still queued is not run
        return _INPUTS[key]


def prepare_methods(rec) -> None:
    """Start, in the background, what the Methods page draws from as soon as any page shows a
    dense sequential run, so that it is there when the user picks a method: the forward the
    gate/input methods (cats, moe, dejavu) read, and the oracle at the session's keep for every
    layer (every method keeping that share is compared with it). Pages call this after drawing,
    so their own first view is not slowed."""
    if rec.mode != "sequential" or rec.method != "dense" or not methods_registry():
        return
    method_inputs(rec.model, rec.run_id)
    from moyu_core import methods

    keep_count = getattr(methods, "keep_count", None)  # the share a keep-based method keeps
    if keep_count is None:
        return
    share = keep_count(rec.d_ff, float(st.session_state.get("prefs", {}).get("keep", 0.5))) / rec.d_ff
    with _ORACLES_LOCK:
        if (db_path(), rec.run_id, share) in _PREFETCHED:
            return
        if len(_PREFETCHED) > 64:
            _PREFETCHED.clear()
        _PREFETCHED.add((db_path(), rec.run_id, share))
    s = store()  # the worker reads z from the store: the st.cache_resource readers are the page's
    _INPUTS_POOL.submit(lambda: [oracle_mask(rec.run_id, li, share, s.activations(rec.run_id, li))
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
    from moyu_core import analysis

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


# ---- cached reads of a run (content-addressed, so safe to share between sessions) ------------------

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
    from moyu_core import analysis

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


def md_escape(text: str) -> str:
    """User text shown as plain text inside Markdown (no links, images or HTML from a prompt)."""
    import re

    return re.sub(r"([\\`*_{}\[\]()#+\-.!<>|~$:])", r"\\\1", text)


def run_header(rec) -> None:
    text = rec.text if len(rec.text) <= 240 else rec.text[:240] + "…"
    st.markdown(f"**Run** `{rec.run_id}` · {md_escape(rec.model)} · {rec.mode} · {rec.n_tokens} tokens · "
                f"{rec.n_layers} layers × {rec.d_ff} neurons · {rec.dtype}")
    st.caption(md_escape(text.replace("\n", " ⏎ ")))


def pct(v: float) -> str:
    """A share as a percentage, or a dash when it is undefined (e.g. one-token prompts)."""
    return "–" if v != v else f"{v:.1%}"


def token_labels(pieces: list[str]) -> list[str]:
    """Unique, readable axis labels: '12 ▸ cat' (position first, so repeated words stay apart)."""
    out = []
    for i, p in enumerate(pieces):
        shown = p.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"
        out.append(f"{i} ▸ {shown[:14]}")
    return out


# ---- URL-backed state -------------------------------------------------------------------------------

def current_run() -> str | None:
    """The run this session looks at: `?run=` wins (a shared link), then the session's last."""
    rid = st.query_params.get("run")
    if rid:
        st.session_state["run_id"] = rid
    else:
        rid = st.session_state.get("run_id")
        if rid:
            st.query_params["run"] = rid
    return rid


def set_run(run_id: str) -> None:
    st.session_state["run_id"] = run_id
    st.query_params["run"] = run_id


def url_state(name: str, default: Any, cast: Callable[[str], Any] = str,
              valid: Callable[[Any], bool] | None = None) -> str:
    """Session key for a widget whose value is mirrored in `?name=`: initialised from the URL,
    then the session's last value, then `default`. Call `sync_url(name)` after the widget."""
    key = f"url_{name}"
    if key not in st.session_state:
        prefs = st.session_state.setdefault("prefs", {})
        value = prefs.get(name, default)
        raw = st.query_params.get(name)
        if raw is not None:
            try:
                value = cast(raw)
            except (TypeError, ValueError):
                value = prefs.get(name, default)
        if valid is not None and not valid(value):
            value = default
        st.session_state[key] = value
    elif valid is not None and not valid(st.session_state[key]):
        st.session_state[key] = default
    return key


def sync_url(name: str, to_str: Callable[[Any], str] = str) -> Any:
    value = st.session_state[f"url_{name}"]
    st.session_state.setdefault("prefs", {})[name] = value
    st.query_params[name] = to_str(value)
    return value


def share_link(params: dict[str, str], page: str = "explore") -> str:
    """Absolute link to a view, for a teammate on the same server (Explore is the app's root)."""
    from urllib.parse import urlencode

    base = (st.context.url or "").rstrip("/")
    if base.rsplit("/", 1)[-1] in PAGE_PATHS:
        base = base.rsplit("/", 1)[0]
    return f"{base}/{'' if page == 'explore' else page}?{urlencode(params)}"


PAGE_PATHS = ("explore", "heavy_hitters", "methods", "compare", "runs", "experiments")


def methods_registry() -> dict[str, type]:
    """The DA methods available now (the methods package may be partial or absent)."""
    try:
        from moyu_core.methods import REGISTRY
    except ModuleNotFoundError:  # not written yet
        return {}
    except Exception:  # noqa: BLE001 - broken mid-edit: the page says none are available
        log.warning("methods registry unavailable", exc_info=True)
        return {}
    return dict(REGISTRY)


def run_picker_hint() -> None:
    st.info("No run selected. Capture a prompt on **Explore**, or open one from **Runs**.",
            icon=":material/info:")
    st.page_link("app_pages/explore.py", label="Go to Explore", icon=":material/travel_explore:")
