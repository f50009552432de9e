"""Per-layer thresholds of the methods that require them (tda, cats, cett, teal), calibrated on text
disjoint from the quality protocol's corpus (`pydoc_data.topics`): standard-library docstrings
(`corpora.stdlib_docstrings`). Each method declares what it thresholds (`calibration_score`, or
its own `calibrate`); this module runs the hooked forwards that collect z and act(gate) of the
calibration tokens (token 0 of each chunk left out: the attention sink) and caches the thresholds
per model and method parameters as JSON under `cache/calibration/`.

One pass serves the parameters asked for and, for methods with a `keep`, other keeps: where the
threshold is the (1 - keep) quantile of the method's calibration score (the base rule), every keep
of KEEP_GRID (every step of the app's keep slider, the sweeps' values among them) from one
partition of the score per layer, so a new keep in the app calibrates nothing; for a method with
its own rule, STANDARD_KEEPS (the sweeps' values).
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import numpy as np
import torch

from .corpora import stdlib_docstrings
from .errors import MoyuError
from .methods.base import Method, Sample

VERSION = 3                            # bump when the text or the procedure changes
CHUNKS, CHUNK_TOKENS = 4, 256
STANDARD_KEEPS = (0.75, 0.5, 0.25)
KEEP_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))   # 0.05 .. 0.95, STANDARD_KEEPS among them
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
    """The method and, when its parameters have a keep, the same method at every keep of KEEP_GRID
    (one sort per layer serves them all) or, for a method with its own calibration rule, at
    STANDARD_KEEPS."""
    out = [method]
    if "keep" in {f.name for f in dataclasses.fields(method.params)} and method.params.keep is not None:
        for k in KEEP_GRID if by_quantile(method) else STANDARD_KEEPS:
            other = type(method)(dataclasses.replace(method.params, keep=k))
            if k != method.params.keep and "thresholds" in other.requires():
                out.append(other)
    return out


def by_quantile(method: Method) -> bool:
    """Whether the method's threshold is the (1 - keep) quantile of its calibration score: the
    base rule, or a method that says so (`calibrates_by_quantile`, e.g. cett with a keep)."""
    return type(method).calibrate is Method.calibrate or bool(getattr(method, "calibrates_by_quantile", False))


def quantiles(score: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """torch.quantile(score, qs) (linear interpolation, same float32 arithmetic, so the same
    values) from a partition at the needed ranks instead of a full sort: several times faster
    for a whole keep grid. score (N,) float32 without NaN, qs (Q,)."""
    ranks = qs * (score.numel() - 1)
    below = ranks.to(torch.long)
    above = torch.minimum(below + 1, torch.tensor(score.numel() - 1))
    kth = np.unique(np.concatenate([below.numpy(), above.numpy()]))
    part = torch.from_numpy(np.partition(score.numpy(), kth))
    return part[below].lerp(part[above], ranks - below)


def _calibrate(lm, methods: list[Method], got: list[Sample], progress=None) -> dict[str, list[float]]:
    """Every method's per-layer thresholds from one calibration pass. Methods thresholding a
    quantile of the same score (one method at several keeps) share one sort of it per layer."""
    quantile = [m for m in methods if by_quantile(m)]
    out: dict[str, list[float]] = {_name(m): [] for m in methods}
    for i in range(lm.n_layers):
        if quantile:
            score = quantile[0].calibration_score(i, got[i], lm).flatten()[:4_000_000]
            qs = torch.tensor([1.0 - float(m.params.keep) for m in quantile], dtype=score.dtype)
            for m, t in zip(quantile, quantiles(score, qs).tolist()):
                out[_name(m)].append(float(t))
        for m in methods:
            if not by_quantile(m):
                out[_name(m)].append(m.calibrate(i, got[i], lm))
        if progress:
            progress(0.5 + 0.5 * (i + 1) / lm.n_layers, f"{methods[0].name}: thresholds of layer {i + 1}/{lm.n_layers}")
    return out


def calibrated(lm, method: Method) -> bool:
    """Whether the method's thresholds at its parameters are known already (no pass needed)."""
    name = _name(method)
    return (lm.name, str(lm.fingerprint), name) in _memo or name in _saved(lm)


@torch.inference_mode()
def samples(lm, progress=None, linear_inputs: bool = False) -> list[Sample]:
    """z and act(gate) of the calibration tokens, per layer (token 0 of each chunk left out).
    With `linear_inputs` (methods that skip input channels of every linear), also each linear's
    input by role, its number of weights, and a `block_error` over the first chunk."""
    from contextlib import ExitStack

    from .hooks import block_inputs, block_linears, input_intervention, method_intervention
    zs: list[list[torch.Tensor]] = [[] for _ in range(lm.n_layers)]
    gs: list[list[torch.Tensor]] = [[] for _ in range(lm.n_layers)]
    ins: list[dict[str, list[torch.Tensor]]] = [{} for _ in range(lm.n_layers)]
    blocks: dict[int, tuple] = {}

    def grab(i, z, gate, x):
        zs[i].append(z[0, 1:].float())
        gs[i].append(gate[1:].float())

    same: list[dict[str, str]] = [{} for _ in range(lm.n_layers)]   # role -> role whose input it reads
    seen: dict[tuple[int, int], str] = {}

    def grab_input(i, role, x):
        if role == "down":   # the down projection's input is z
            return
        first = seen.setdefault((i, x.data_ptr()), role)   # q, k and v read one tensor, gate and up one
        if first != role:
            same[i][role] = first
        else:
            ins[i].setdefault(role, []).append(x[0, 1:].float())

    def grab_block(i, args, kwargs):
        if i not in blocks:  # the first chunk's block inputs, for block_error
            blocks[i] = (tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs))

    chunks = calibration_chunks(lm)
    for n, ids in enumerate(chunks):
        with ExitStack() as stack:
            stack.enter_context(method_intervention(lm, grab))
            if linear_inputs:
                stack.enter_context(input_intervention(lm, grab_input))
                stack.enter_context(block_inputs(lm, grab_block))
            lm.model(torch.tensor([ids]), use_cache=False)
        seen.clear()
        if progress:
            progress(0.5 * (n + 1) / len(chunks), f"forward over calibration text {n + 1}/{len(chunks)}")
    out = []
    for i in range(lm.n_layers):
        z = torch.cat(zs[i])
        if not linear_inputs:
            out.append(Sample(z=z, gate=torch.cat(gs[i])))
            continue
        linears = block_linears(lm, i)
        inputs = {role: torch.cat(xs) for role, xs in ins[i].items()}
        inputs.update({role: inputs[first] for role, first in same[i].items()})
        out.append(Sample(z=z, gate=torch.cat(gs[i]), inputs={**inputs, "down": z},
                          weights={role: m.weight.numel() for role, m in linears.items()},
                          block_error=_block_error(lm, i, blocks[i])))
    return out


def _block_error(lm, i: int, call: tuple):
    """block_error({role: threshold}) of layer i: the mean over tokens (token 0 left out) of the
    L2 norm of the block output's change when every linear's input keeps only entries with
    |entry| >= its threshold, on the first calibration chunk. Memoised: TEAL's greedy search
    asks for the same settings again at every keep."""
    from .hooks import block_linears, hooked
    args, kwargs = call
    memo: dict[tuple, float] = {}

    def run(th: dict | None) -> torch.Tensor:
        def pre(t):
            def hook(_m, a):
                return (a[0] * (a[0].abs() >= t),) + tuple(a[1:]) if t > 0 else None
            return hook
        hooks = [(m, "pre", pre(float(th[role]))) for role, m in block_linears(lm, i).items()] if th else []
        with torch.inference_mode(), hooked(lm, hooks):
            y = lm.layers[i](*args, **kwargs)
        return (y[0] if isinstance(y, tuple) else y)[0, 1:].float()

    dense = run(None)

    def error(th: dict) -> float:
        key = tuple(sorted((k, float(v)) for k, v in th.items()))
        if key not in memo:
            memo[key] = float((run(th) - dense).norm(dim=-1).mean())
        return memo[key]
    return error


def thresholds(lm, method: Method, progress=None) -> list[float]:
    """The method's per-layer thresholds at its parameters; computed once per model and cached
    on disk. `progress(fraction, message)` follows a calibration pass when one runs."""
    name = _name(method)
    key = (lm.name, str(lm.fingerprint), name)
    with _lock:
        if key in _memo:
            return _memo[key]
        saved = _saved(lm)   # on disk already: no need to wait for the model (a forward may hold it)
        if name in saved:
            _memo[key] = _as_thresholds(saved[name])
            return _memo[key]
    calibrate(lm, [method], progress)
    with _lock:
        _memo[key] = _as_thresholds(_saved(lm)[name])
        return _memo[key]


def calibrate(lm, methods: list[Method], progress=None) -> None:
    """One calibration pass for every method here not calibrated yet at its parameters (each with
    its siblings), saved to disk: the forwards over the calibration text run once for them all."""
    # the model's lock first, the order of every hooked forward: another thread's forward (the
    # app's background one) finishes before this looks for hooks, so hooks seen are this thread's
    with lm.lock, _lock:
        saved = _saved(lm)
        todo = [m for m in methods if "thresholds" in m.requires() and _name(m) not in saved]
        if not todo:
            return
        from .hooks import hook_count
        if hook_count(lm.model):   # a forward with hooks must not start another one inside
            raise MoyuError("calibration was asked for inside a hooked forward: call "
                            "preparation.prepare(lm, method) before running the model")
        got = samples(lm, progress, linear_inputs=any(m.skips == "all_linear" for m in todo))
        for m in todo:
            if _name(m) not in saved:
                saved.update(_calibrate(lm, _siblings(m), got, progress))
        path = _path(lm)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(saved, indent=1))
        tmp.replace(path)


def _saved(lm) -> dict:
    """The thresholds saved on disk for this model (empty when none or unreadable)."""
    try:
        return json.loads(_path(lm).read_text())
    except (OSError, ValueError):
        return {}


def _as_thresholds(saved: list) -> list:
    """One threshold per layer, or one per projection (teal)."""
    return [{k: float(v) for k, v in t.items()} if isinstance(t, dict) else float(t) for t in saved]
