"""Per-layer thresholds of the threshold methods (tda, cats, cett), calibrated on text that is
disjoint from the quality protocol's corpus (`pydoc_data.topics`): standard-library docstrings
(`corpora.stdlib_docstrings`). Thresholds are cached per model as JSON under `cache/calibration/`.

- `tda`  : (1-keep) quantile of |z| per layer, token 0 excluded (TEAL).
- `cats` : (1-keep) quantile of |act(gate_proj(x))| per layer, token 0 excluded (CATS).
- `cett` : contributions c_i = |z_i| * ||W_down[:, i]||; either the (1-keep) quantile of c (keep
  mode), or the t found by binary search so that the mean over tokens of
  ||sum_{c_i < t} z_i W_down[:, i]|| / ||sum_i z_i W_down[:, i]|| equals the target (CETT mode).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from ..corpora import stdlib_docstrings
from ..errors import MoyuError

VERSION = 2                            # bump when the text or the procedure changes
CHUNKS, CHUNK_TOKENS = 4, 256
STANDARD_KEEPS = (0.75, 0.5, 0.25)   # calibrated together in one pass
_lock = threading.Lock()
_memo: dict[tuple, list[float]] = {}


def calibration_chunks(lm, chunks: int = CHUNKS, tokens: int = CHUNK_TOKENS) -> list[list[int]]:
    """`chunks` evenly spaced windows of the calibration text (seeded random ids for a model
    without a tokenizer, e.g. the tiny test model)."""
    if lm.tokenizer is None:
        g = torch.Generator().manual_seed(0)
        vocab = lm.model.config.vocab_size
        return [torch.randint(0, vocab, (tokens,), generator=g).tolist() for _ in range(chunks)]
    ids = lm.tokenizer(stdlib_docstrings(), add_special_tokens=False)["input_ids"]
    step = max(tokens, len(ids) // chunks)
    return [list(lm.bos_ids) + ids[s:s + tokens] for s in range(0, step * chunks, step)][:chunks]


def _path(lm) -> Path:
    from ..models import CACHE_DIR
    return Path(CACHE_DIR) / "calibration" / f"{lm.name}-{str(lm.fingerprint)[:12]}-v{VERSION}.json"


def down_norms(lm, layer: int) -> torch.Tensor:
    """||W_down[:, i]|| for every neuron i of a layer (d_ff,), computed once per model."""
    key = (lm.name, str(lm.fingerprint), "down_norms", layer)
    if key not in _memo:
        _memo[key] = lm.layers[layer].mlp.down_proj.weight.detach().float().norm(dim=0)
    return _memo[key]


def _cett_share(z: torch.Tensor, w_down: torch.Tensor, c: torch.Tensor, t: float) -> float:
    full = z @ w_down.T
    tail = (z * (c < t)) @ w_down.T
    return float((tail.norm(dim=-1) / full.norm(dim=-1).clamp_min(1e-12)).mean())


def _cett_search(z: torch.Tensor, c: torch.Tensor, w_down: torch.Tensor, target: float) -> float:
    """Binary search for t with mean tail share (c < t) of the MLP output norm equal to target."""
    zz, cc = z[:384], c[:384]
    lo, hi = 0.0, float(cc.max())
    for _ in range(24):
        mid = (lo + hi) / 2
        if _cett_share(zz, w_down, cc, mid) < target:
            lo = mid
        else:
            hi = mid
    return lo


@torch.inference_mode()
def _calibrate(lm, kind: str, value: float) -> dict[str, list[float]]:
    """One pass over the calibration chunks. Returns thresholds named "kind:value": the one asked
    for, and for the quantile kinds (tda, cats, cett-keep) also every keep in STANDARD_KEEPS."""
    from ..hooks import method_intervention
    zs: dict[int, list[torch.Tensor]] = {i: [] for i in range(lm.n_layers)}
    gs: dict[int, list[torch.Tensor]] = {i: [] for i in range(lm.n_layers)}

    def grab(i, z, gate, x):
        zs[i].append(z[0, 1:].float())                   # token 0 (the attention sink) excluded
        gs[i].append(gate[1:].float())

    for ids in calibration_chunks(lm):
        with method_intervention(lm, grab):
            lm.model(torch.tensor([ids]), use_cache=False)
    keeps = sorted(set(STANDARD_KEEPS) | ({round(float(value), 6)} if kind != "cett" else set()))
    q = torch.tensor([1.0 - k for k in keeps])
    out: dict[str, list[float]] = {}
    for i in range(lm.n_layers):
        z, g = torch.cat(zs[i]), torch.cat(gs[i])
        w_down = lm.layers[i].mlp.down_proj.weight.detach().float()
        c = z.abs() * w_down.norm(dim=0)
        for name, score in (("tda", z.abs()), ("cats", g.abs()), ("cett-keep", c)):
            for k, t in zip(keeps, torch.quantile(score.flatten()[:4_000_000], q).tolist()):
                out.setdefault(f"{name}:{k}", []).append(t)
        if kind == "cett":
            out.setdefault(f"cett:{round(float(value), 6)}", []).append(_cett_search(z, c, w_down, value))
    return out


def thresholds(lm, kind: str, value: float) -> list[float]:
    """Per-layer thresholds for kind in tda | cats | cett-keep (value = keep) or cett (value = the
    target CETT); computed once per model and cached on disk."""
    key = (lm.name, str(lm.fingerprint), kind, round(float(value), 6))
    with _lock:
        if key in _memo:
            return _memo[key]
    # the model's lock first, the order of every hooked forward: another thread's forward (the
    # app's background one) finishes before this looks for hooks, so hooks seen are this thread's
    with lm.lock, _lock:
        if key in _memo:
            return _memo[key]
        path, name = _path(lm), f"{kind}:{round(float(value), 6)}"
        saved = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = {}
        if name not in saved:
            from ..hooks import hook_count
            if hook_count(lm.model):   # a forward with hooks must not start another one inside
                raise MoyuError("calibration was asked for inside a hooked forward: call "
                                "method.prepare(lm) before running the model")
            saved.update(_calibrate(lm, kind, value))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(saved, indent=1))
            tmp.replace(path)
        _memo[key] = [float(t) for t in saved[name]]
        return _memo[key]
