"""Per-layer thresholds of the methods that require them (tda, cats, cett), calibrated on text
disjoint from the quality protocol's corpus (`pydoc_data.topics`): standard-library docstrings
(`corpora.stdlib_docstrings`). Each method declares what it thresholds (`calibration_score`, or
its own `calibrate`); this module runs the hooked forwards that collect z and act(gate) of the
calibration tokens (token 0 of each chunk left out: the attention sink) and caches the thresholds
per model and method parameters as JSON under `cache/calibration/`.

One pass serves the parameters asked for and, for methods with a `keep`, every keep of
STANDARD_KEEPS (the sweeps' values), so a keep sweep calibrates once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import torch

from .corpora import stdlib_docstrings
from .errors import MoyuError
from .methods.base import Method, Sample

VERSION = 3                            # bump when the text or the procedure changes
CHUNKS, CHUNK_TOKENS = 4, 256
STANDARD_KEEPS = (0.75, 0.5, 0.25)
_lock = threading.Lock()
_memo: dict[tuple, list[float]] = {}


def calibration_chunks(lm, chunks: int = CHUNKS, tokens: int = CHUNK_TOKENS) -> list[list[int]]:
    """`chunks` evenly spaced windows of the calibration text (seeded random ids for a model
    without a tokenizer, e.g. a tiny test model)."""
    if lm.tokenizer is None:
        g = torch.Generator().manual_seed(0)
        vocab = lm.model.config.vocab_size
        return [torch.randint(0, vocab, (tokens,), generator=g).tolist() for _ in range(chunks)]
    ids = lm.tokenizer(stdlib_docstrings(), add_special_tokens=False)["input_ids"]
    step = max(tokens, len(ids) // chunks)
    return [list(lm.bos_ids) + ids[s:s + tokens] for s in range(0, step * chunks, step)][:chunks]


def _path(lm) -> Path:
    from .models import CACHE_DIR
    return Path(CACHE_DIR) / "calibration" / f"{lm.name}-{str(lm.fingerprint)[:12]}-v{VERSION}.json"


def _name(method: Method) -> str:
    return f"{method.name}:{json.dumps(dataclasses.asdict(method.params), sort_keys=True)}"


def _siblings(method: Method) -> list[Method]:
    """The method and, when its parameters have a keep, the same method at STANDARD_KEEPS."""
    out = [method]
    if "keep" in {f.name for f in dataclasses.fields(method.params)} and method.params.keep is not None:
        for k in STANDARD_KEEPS:
            other = type(method)(dataclasses.replace(method.params, keep=k))
            if k != method.params.keep and "thresholds" in other.requires():
                out.append(other)
    return out


@torch.inference_mode()
def samples(lm) -> list[Sample]:
    """z and act(gate) of the calibration tokens, per layer (token 0 of each chunk left out)."""
    from .hooks import method_intervention
    zs: list[list[torch.Tensor]] = [[] for _ in range(lm.n_layers)]
    gs: list[list[torch.Tensor]] = [[] for _ in range(lm.n_layers)]

    def grab(i, z, gate, x):
        zs[i].append(z[0, 1:].float())
        gs[i].append(gate[1:].float())

    for ids in calibration_chunks(lm):
        with method_intervention(lm, grab):
            lm.model(torch.tensor([ids]), use_cache=False)
    return [Sample(z=torch.cat(zs[i]), gate=torch.cat(gs[i])) for i in range(lm.n_layers)]


def thresholds(lm, method: Method) -> list[float]:
    """The method's per-layer thresholds at its parameters; computed once per model and cached
    on disk."""
    name = _name(method)
    key = (lm.name, str(lm.fingerprint), name)
    with _lock:
        if key in _memo:
            return _memo[key]
    # the model's lock first, the order of every hooked forward: another thread's forward (the
    # app's background one) finishes before this looks for hooks, so hooks seen are this thread's
    with lm.lock, _lock:
        if key in _memo:
            return _memo[key]
        path = _path(lm)
        saved = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = {}
        if name not in saved:
            from .hooks import hook_count
            if hook_count(lm.model):   # a forward with hooks must not start another one inside
                raise MoyuError("calibration was asked for inside a hooked forward: call "
                                "preparation.prepare(lm, method) before running the model")
            got = samples(lm)
            for m in _siblings(method):
                saved[_name(m)] = [m.calibrate(i, got[i], lm) for i in range(lm.n_layers)]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(saved, indent=1))
            tmp.replace(path)
        _memo[key] = [float(t) for t in saved[name]]
        return _memo[key]
