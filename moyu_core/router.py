"""DejaVu router (Liu et al. 2023, RODA): per layer a low-rank predictor of which MLP neurons a
token will need, trained on activation history kept in the store.

    x (T, d) --Linear(d, r)--> (T, r) --Linear(r, d_ff)--> logits (T, d_ff);  keep top-k

Choices (all recorded in the file's metadata and the stored report):

- rank r = max(64, d_ff // 4) (smollm2-135m: 384). DejaVu used r = 1000 for OPT-175B
  (d_ff = 49152); a 135M SwiGLU model is much harder to predict, and on held-out text r = d_ff // 8
  lost about one point of recall against d_ff // 4.
- History = the dense, sequential, prefix-free runs of this model (same fingerprint) in the store,
  taken in run_id order until `min_tokens`. If there are fewer, `ensure_history` captures chunks
  of stdlib docstrings (`corpora.DOC_MODULES`, ~256 tokens each) with `runs.capture_run`, so they are
  stored like any other run. They are disjoint from the evaluation corpus (pydoc_data.topics).
- Inputs x = the input of `layer.mlp` (the post-attention RMSNorm output), recomputed by one
  forward over each history run's stored token ids (`hooks.capture_mlp_io`). Labels come from the
  z stored in the database (int8, dequantized): label 1 when |z| is in the token's top 50%.
- Loss: BCE with pos_weight 2 (missing a needed neuron costs twice a false alarm: favours
  recall), Adam lr 3e-3, mini-batches of 512 tokens, fixed seed per layer. x is divided by its
  per-dimension std during training; the scale is folded into the first weight afterwards, so
  inference is exactly w2(w1(x)) with no bias.
- Held out: windows of pydoc_data.topics placed midway between the quality protocol's windows
  (evaluate.py, 12 windows of 256 + 64 tokens), so they never overlap the text eval scores, nor
  the history. Reported per layer and mean, at keep 0.5 and 0.25: recall = |top-k(logits) ∩
  top-k(|z|)| / k and precision = the same intersection / |top-k(logits)|; both sets have k
  neurons, so the two are equal by construction. The classifier's own decision (logit > 0)
  against the training label (top 50%) gives a recall/precision pair that differs; the random
  (= keep) and static (the k neurons most often labelled in training) baselines are reported too.
- All layers go into ONE safetensors file, cache/routers/<model>-<fingerprint[:12]>.safetensors
  (`MOYU_ROUTER_DIR` overrides the folder); an existing file trained with the same settings is
  reused without training unless `force`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .corpora import pydoc_ids, stdlib_docstrings
from .errors import MoyuError
from .keep import keep_count

FORMAT = "moyu-dejavu-router"
VERSION = 1
LABEL_RULE = "|z| in the token's top 50% (k = d_ff // 2), z from the store (int8 dequantized)"
DEFAULT_STEPS = 200
DEFAULT_MIN_TOKENS = 8192
BATCH = 512
LR = 3e-3
POS_WEIGHT = 2.0
SEED = 0
KEEPS = (0.5, 0.25)
HELDOUT_WINDOWS = 8
HELDOUT_LEN = 256
CHUNK_TOKENS = 256
# the quality protocol's windows (evaluate.evaluate defaults): held-out windows sit between them
EVAL_WINDOWS, EVAL_LEN = 12, 256 + 64

Progress = Callable[[float, str], None]


def default_rank(d_ff: int) -> int:
    """r = max(64, d_ff // 4): smollm2-135m (d_ff 1536) -> 384, gemma3-270m (2048) -> 512."""
    return max(64, d_ff // 4)


def router_dir() -> Path:
    """cache/routers under the model cache root (MOYU_CACHE), or MOYU_ROUTER_DIR if set."""
    if os.environ.get("MOYU_ROUTER_DIR"):
        return Path(os.environ["MOYU_ROUTER_DIR"])
    from .models import CACHE_DIR
    return Path(CACHE_DIR) / "routers"


def router_path(lm) -> Path:
    return router_dir() / f"{lm.name}-{lm.fingerprint[:12]}.safetensors"


# ---- loading (no store needed: methods/dejavu.py calls this) -------------------------------------

@dataclass(frozen=True)
class Router:
    """Per layer w1 (r, d) with the input scaling folded in and w2 (d_ff, r), float32."""

    w1: list[torch.Tensor]
    w2: list[torch.Tensor]
    meta: dict

    def logits(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x (T, d) -> (T, d_ff)."""
        if not 0 <= layer < len(self.w1):
            raise MoyuError(f"router has {len(self.w1)} layers; layer {layer} is out of range")
        if x.shape[-1] != self.w1[layer].shape[1]:
            raise MoyuError(f"router expects inputs of width {self.w1[layer].shape[1]}, got {x.shape[-1]}")
        return (x.float() @ self.w1[layer].T) @ self.w2[layer].T


_LOADED: dict[Path, tuple[int, Router]] = {}
_LOAD_LOCK = threading.Lock()


def load_router(lm) -> Router | None:
    """The trained router of this model (same fingerprint), or None; cached per (path, mtime)."""
    from safetensors import safe_open

    path = router_path(lm)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    with _LOAD_LOCK:
        hit = _LOADED.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT or meta.get("fingerprint") != lm.fingerprint:
                return None
            n = int(meta["n_layers"])
            w1 = [f.get_tensor(f"layers.{i}.w1").float() for i in range(n)]
            w2 = [f.get_tensor(f"layers.{i}.w2").float() for i in range(n)]
        router = Router(w1, w2, meta)
        _LOADED[path] = (mtime, router)
        return router


# ---- history -----------------------------------------------------------------------------------

def history_texts(lm, chunk_tokens: int = CHUNK_TOKENS) -> list[str]:
    """corpora.stdlib_docstrings() grouped by paragraph into chunks of about `chunk_tokens` tokens."""
    text = stdlib_docstrings()
    chunks, cur, n = [], [], 0
    for para in text.split("\n\n"):
        if not para.strip():
            continue
        m = len(lm.tokenizer(para, add_special_tokens=False)["input_ids"])
        if m > 4 * chunk_tokens:  # a very long paragraph stands alone, cut to the budget
            ids = lm.tokenizer(para, add_special_tokens=False)["input_ids"][:chunk_tokens]
            para, m = lm.tokenizer.decode(ids), chunk_tokens
        cur.append(para)
        n += m
        if n >= chunk_tokens:
            chunks.append("\n\n".join(cur))
            cur, n = [], 0
    return chunks


def history_runs(lm, store) -> list[dict]:
    """Dense, sequential, prefix-free runs of this model (same weights) in the store, by run_id."""
    out = []
    for r in store.list_runs(model=lm.name, method="dense", limit=100_000):
        if r["mode"] != "sequential":
            continue
        rec = store.run(r["run_id"])
        if rec.fingerprint == lm.fingerprint and not rec.prefix:
            out.append({"run_id": rec.run_id, "tokens": rec.n_tokens})
    return sorted(out, key=lambda r: r["run_id"])


def ensure_history(lm, store, min_tokens: int = DEFAULT_MIN_TOKENS,
                   progress: Progress | None = None) -> dict:
    """Make sure the store holds at least `min_tokens` tokens of history for this model, capturing
    stdlib docstring chunks (disjoint from pydoc_data.topics) when it does not."""
    from .runs import capture_run

    runs = history_runs(lm, store)
    have = sum(r["tokens"] for r in runs)
    captured = 0
    if have < min_tokens:
        texts = history_texts(lm)
        for text in texts:
            if have >= min_tokens:
                break
            res = capture_run(lm, store, text)
            if not res.cached:
                have += res.tokens
                captured += 1
            if progress:
                progress(min(1.0, have / min_tokens), f"capturing history: {have}/{min_tokens} tokens")
        if have < min_tokens:
            raise MoyuError(f"only {have} tokens of history can be gathered for {lm.name}; "
                            f"capture more runs or lower --min-tokens")
        runs = history_runs(lm, store)
    return {"runs": runs, "tokens": sum(r["tokens"] for r in runs), "captured_runs": captured}


# ---- training ----------------------------------------------------------------------------------

def _topk_bool(a: torch.Tensor, k: int) -> torch.Tensor:
    """bool (N, n): the top-k of each row of a."""
    return torch.zeros(a.shape, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)


def _fit(x: torch.Tensor, y: torch.Tensor, rank: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, d) float32, y (N, d_ff) bool -> (w1 (r, d) with 1/std folded in, w2 (d_ff, r))."""
    d, dff = x.shape[1], y.shape[1]
    sd = x.std(0).clamp_min(1e-6)                                          # (d,)
    xs = x / sd
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(d, rank, bias=False), torch.nn.Linear(rank, dff, bias=False))
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        pos_weight = torch.tensor(POS_WEIGHT)
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (min(BATCH, x.shape[0]),))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(xs[idx]), y[idx].float(), pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    w1 = (net[0].weight.detach() / sd[None, :]).contiguous()
    return w1, net[1].weight.detach().contiguous()


def heldout_windows(lm, n: int = HELDOUT_WINDOWS, length: int = HELDOUT_LEN) -> list[list[int]]:
    """n windows of pydoc_data.topics starting midway between the quality protocol's windows."""
    ids = pydoc_ids(lm.tokenizer)
    starts = np.linspace(0, len(ids) - EVAL_LEN, EVAL_WINDOWS).astype(int)
    mids = ((starts[:-1] + starts[1:]) // 2)[np.linspace(0, EVAL_WINDOWS - 2, n).round().astype(int)]
    return [ids[s:s + length] for s in mids]


def _heldout(lm, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """x (L, N, d) float32 and |z| (L, N, d_ff) float16 of held-out tokens (the first is skipped)."""
    from .hooks import capture_mlp_io

    xs, zs = [], []
    layers = list(range(lm.n_layers))
    for w in windows:
        off = len(lm.bos_ids)
        x, z = capture_mlp_io(lm, list(lm.bos_ids) + w, layers)
        xs.append(x[:, off + 1:])
        zs.append(np.abs(z[:, off + 1:]).astype(np.float16))
    return np.concatenate(xs, 1), np.concatenate(zs, 1)


def _score(logits: torch.Tensor, az: torch.Tensor, static: dict[float, torch.Tensor]) -> dict:
    """logits, |z| (N, d_ff) -> recall/precision of top-k(logits) vs top-k(|z|) per keep, the
    classifier (logit > 0) against the top-50% label, and the static baseline."""
    dff = az.shape[1]
    out = {}
    for keep in KEEPS:
        k = keep_count(dff, keep)
        true = _topk_bool(az, k)
        hits = true.gather(1, logits.topk(k, dim=1).indices).sum(1).float()   # (N,)
        out[f"recall@{keep}"] = float((hits / true.sum(1)).mean())
        out[f"precision@{keep}"] = float((hits / k).mean())
        out[f"static_recall@{keep}"] = float(true[:, static[keep]].float().sum(1).div(k).mean())
    label = _topk_bool(az, dff // 2)
    pos = logits > 0
    tp = float((pos & label).sum())
    out["clf_recall"] = tp / max(1.0, float(label.sum()))
    out["clf_precision"] = tp / max(1.0, float(pos.sum()))
    return out


def _settings(lm, rank: int, steps: int, min_tokens: int) -> dict:
    return {"format": FORMAT, "version": VERSION, "fingerprint": lm.fingerprint, "rank": rank,
            "steps": steps, "min_tokens": min_tokens, "batch": BATCH, "lr": LR,
            "pos_weight": POS_WEIGHT, "seed": SEED, "label_rule": LABEL_RULE}


def _read_meta(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # unreadable or foreign file: retrain over it
        return None


def train(lm, store, rank: int | None = None, steps: int = DEFAULT_STEPS, min_tokens: int = DEFAULT_MIN_TOKENS,
          progress: Progress | None = None, force: bool = False, heldout: int = HELDOUT_WINDOWS) -> dict:
    """Train (or reuse) this model's DejaVu router; returns the report, also stored as a 'router'
    result. Reuses the file when it was trained with the same settings unless `force`."""
    from .hooks import capture_mlp_io

    t0 = time.perf_counter()
    progress = progress or (lambda f, m: None)
    rank = int(rank or default_rank(lm.d_ff))
    if rank < 1 or steps < 1 or min_tokens < 1 or heldout < 1:
        raise MoyuError("rank, steps, min-tokens and held-out windows must be positive")
    settings = _settings(lm, rank, steps, min_tokens)
    key = {k: settings[k] for k in ("fingerprint", "rank", "steps", "min_tokens", "version")}
    path = router_path(lm)
    meta = _read_meta(path) if path.exists() and not force else None
    if meta is not None and json.loads(meta.get("settings", "{}")) == settings:
        report = json.loads(meta["report"])
        if store.get_result("router", key) is None:
            store.put_result("router", key, report, model=lm.name, method="dejavu")
        progress(1.0, "router reused")
        return {**report, "path": str(path), "cached": True, "seconds": time.perf_counter() - t0}

    def stage(lo, hi):
        return lambda f, m: progress(lo + (hi - lo) * f, m)

    hist = ensure_history(lm, store, min_tokens, stage(0.0, 0.2))
    runs, total = [], 0
    for r in hist["runs"]:  # run_id order until min_tokens
        if total >= min_tokens:
            break
        runs.append(r)
        total += r["tokens"]
    L = lm.n_layers
    xs = []
    for j, r in enumerate(runs):
        ids = [t for t, _ in store.tokens(r["run_id"])]
        xs.append(capture_mlp_io(lm, ids, list(range(L)))[0])                 # (L, T, d)
        progress(0.2 + 0.15 * (j + 1) / len(runs), f"recomputing MLP inputs: run {j + 1}/{len(runs)}")
    x_all = np.concatenate(xs, 1)                                              # (L, N, d)
    del xs
    progress(0.35, "held-out windows")
    x_te, az_te = _heldout(lm, heldout_windows(lm, heldout))
    t_train = time.perf_counter()
    tensors, per_layer = {}, []
    for i in range(L):
        z = np.concatenate([store.activations(r["run_id"], i) for r in runs])  # (N, d_ff)
        y = _topk_bool(torch.from_numpy(np.abs(z)), lm.d_ff // 2)
        w1, w2 = _fit(torch.from_numpy(x_all[i]), y, rank, steps, SEED * 1000 + i)
        tensors[f"layers.{i}.w1"], tensors[f"layers.{i}.w2"] = w1, w2
        freq = y.float().mean(0)
        static = {keep: freq.topk(keep_count(lm.d_ff, keep)).indices for keep in KEEPS}
        with torch.no_grad():
            logits = (torch.from_numpy(x_te[i]) @ w1.T) @ w2.T
        per_layer.append({"layer": i, **_score(logits, torch.from_numpy(az_te[i]).float(), static)})
        progress(0.4 + 0.6 * (i + 1) / L, f"trained layer {i + 1}/{L}")
    del x_all
    mean = {k: float(np.mean([row[k] for row in per_layer])) for k in per_layer[0] if k != "layer"}
    report = {
        "model": lm.name, "fingerprint": lm.fingerprint, "rank": rank, "steps": steps,
        "min_tokens": min_tokens, "batch": BATCH, "lr": LR, "pos_weight": POS_WEIGHT, "seed": SEED,
        "label_rule": LABEL_RULE, "tokens_trained": total, "history_runs": len(runs),
        "captured_runs": hist["captured_runs"],
        "heldout": {"source": "pydoc_data.topics, midway between the quality protocol's windows",
                    "windows": heldout, "tokens": int(x_te.shape[1])},
        "recall": mean["recall@0.5"], "precision": mean["precision@0.5"], **mean,
        "random_recall@0.5": 0.5, "random_recall@0.25": 0.25,
        "per_layer": per_layer, "train_seconds": time.perf_counter() - t_train,
    }
    report["seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={
        "format": FORMAT, "fingerprint": lm.fingerprint, "model": lm.name, "n_layers": str(L),
        "rank": str(rank), "steps": str(steps), "label_rule": LABEL_RULE,
        "tokens_trained": str(total), "settings": json.dumps(settings, sort_keys=True),
        "report": json.dumps(report)})
    os.chmod(tmp, 0o644)  # a shareable cache file, like the converted model weights
    os.replace(tmp, path)
    store.put_result("router", key, report, model=lm.name, method="dejavu")
    progress(1.0, "router trained")
    return {**report, "path": str(path), "cached": False}
