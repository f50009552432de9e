"""Binds what a method requires before it selects: calibrated thresholds (`calibration`), the
trained DejaVu router (`router`), and data the method derives from the weights (kept in memory
per model, and on disk for methods with a `derived_cache`). Call `prepare(lm, method)` before any
forward that runs the method: preparing may itself run the model."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .errors import MoyuError
from .methods.base import RESOURCES, Method

_derived: dict[tuple, object] = {}
_lock = threading.Lock()


def _derived_for(lm, method: Method):
    key = (lm.fingerprint, method.name, method.derive_key())
    with _lock:
        if key in _derived:
            return _derived[key]
    data = None
    path = None
    if method.derived_cache:
        from .models import CACHE_DIR
        tag = method.derive_key() or "derived"
        path = Path(CACHE_DIR) / method.derived_cache / f"{lm.name}-{str(lm.fingerprint)[:12]}-{tag}.json"
        try:
            data = method.load_derived(lm, json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            data = None
    if data is None:
        data = method.derive(lm)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(method.dump_derived(data)))
            tmp.replace(path)
    with _lock:
        _derived[key] = data
    return data


def _router(lm):
    from .router import load_router
    found = load_router(lm)
    if found is None:
        raise MoyuError(f"dejavu: no trained router for {lm.name}; run `moyu train-router --model "
                        f"{lm.name}` (or the app's Train router button)")
    return found


def warm(lm, methods: list[Method], between=None) -> None:
    """Derive (or load from disk) the data each method derives from the weights, so that its first
    use does not wait for it; `between()` is called before each method (a background checkpoint)."""
    for method in methods:
        if between is not None:
            between()
        if "derived" in method.requires():
            _derived_for(lm, method)


def prepare(lm, method: Method) -> Method:
    """Bind every resource the method requires at its parameters; returns the method."""
    need = method.requires()
    unknown = set(need) - set(RESOURCES)
    if unknown:
        raise MoyuError(f"{method.name} requires unknown resources {sorted(unknown)}; known: {RESOURCES}")
    got = {}
    if "thresholds" in need:
        from .calibration import thresholds
        got["thresholds"] = thresholds(lm, method)
    if "router" in need:
        got["router"] = _router(lm)
    if "derived" in need:
        got["derived"] = _derived_for(lm, method)
    method.bind(lm, **got)
    return method
