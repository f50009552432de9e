"""DejaVu router (Liu et al. 2023, RODA): per layer a low-rank predictor of which MLP neurons a
token will need, trained on activation history kept in the store.

    x (T, d) --Linear(d, r)--> (T, r) --Linear(r, d_ff)--> logits (T, d_ff);  keep top-k

Choices (all recorded in the file's metadata and the stored report):

- Size: the router is at most MAX_SHARE (10%) of the MLP's parameters, r (d + d_ff) <=
  0.10 * 3 d d_ff for a gated MLP (2 d d_ff otherwise). The default rank makes it DEFAULT_SHARE
  (5%), about the size of DejaVu's routers: smollm2-135m r = 62 (4.9%), gemma3-270m r = 73 (5.0%).
  A larger --rank is refused above 10%. Every report prints router params / MLP params.
- History = the dense, sequential, prefix-free runs of this model (same fingerprint) in the store,
  taken in run_id order until `min_tokens`. If there are fewer, `ensure_history` captures chunks
  of stdlib docstrings (`corpora.DOC_MODULES`, ~256 tokens each) with `runs.capture_run`, so they are
  stored like any other run; a chunk sharing a 16-gram with the evaluation corpus is skipped.
- No overlap with what is evaluated: before training, every history run's token ids are checked
  against the evaluation corpus (pydoc_data.topics, which holds every window the quality protocol
  draws: 12 x 320 tokens by default, and the held-out windows below). A run sharing a 16-token
  n-gram with it (an identical window shares many) refuses training with the run ids to remove.
- Inputs x = the input of `layer.mlp` (the post-attention RMSNorm output) and labels from z, both
  recomputed in float32 by one forward over each history run's stored token ids
  (`hooks.capture_mlp_io`), never from the stored int8 z: label 1 when |z| is in the token's top
  50%. The first token of each run (the attention sink; with a BOS, BOS and the first token) is
  left out, as in the held-out windows.
- Loss: BCE with pos_weight 2 (missing a needed neuron costs twice a false alarm: favours
  recall), Adam lr 3e-3, mini-batches of 512 tokens, fixed seed per layer. x is divided by its
  per-dimension std during training; the scale is folded into the first weight afterwards, so
  inference is exactly w2(w1(x)) with no bias.
- Held out: windows of pydoc_data.topics placed midway between the quality protocol's windows
  (evaluate.py, 12 windows of 256 + 64 tokens), so they never overlap the text eval scores, nor
  the history. Reported per layer and mean, at keep 0.5 and 0.25: recall = |top-k(logits) ∩
  top-k(|z|)| / k and precision = the same intersection / |top-k(logits)|; both sets have k
  neurons, so the two are equal by construction. The headline recall carries n (held-out
  windows) and a 95% t interval over windows (per window: the mean over its tokens and all
  layers). The classifier's own decision (logit > 0) against the training label (top 50%) gives
  a recall/precision pair that differs; the random (= keep) and static (the k neurons most often
  labelled in training) baselines are reported too.
- All layers go into ONE safetensors file, cache/routers/<model>-<fingerprint[:12]>.safetensors
  (`MOYU_ROUTER_DIR` overrides the folder); an existing file trained with the same settings and
  VERSION is reused without training unless `force`; a file of another VERSION is not loaded.
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
VERSION = 2  # 2: ~5% of the MLP, float-z labels, no sink rows, overlap check, held-out interval
LABEL_RULE = "|z| in the token's top 50% (k = d_ff // 2), z recomputed in float32 with x"
DEFAULT_SHARE = 0.05   # router params / MLP params of the default rank
MAX_SHARE = 0.10
NGRAM = 16             # history and evaluation text may not share a run of this many tokens
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


def mlp_params(d: int, d_ff: int, gated: bool = True) -> int:
    """Weights of one MLP: gate, up and down (d x d_ff each), or fc and down when not gated."""
    return (3 if gated else 2) * d * d_ff


def rank_for(d: int, d_ff: int, gated: bool = True, share: float = DEFAULT_SHARE) -> int:
    """The largest rank whose router, r (d + d_ff) weights, is at most `share` of the MLP."""
    return max(1, int(share * mlp_params(d, d_ff, gated) // (d + d_ff)))


def size_share(lm, rank: int) -> float:
    """Router params / MLP params of one layer."""
    return rank * (lm.d_model + lm.d_ff) / mlp_params(lm.d_model, lm.d_ff, lm.gated)


def default_rank(lm) -> int:
    """DEFAULT_SHARE of the MLP: smollm2-135m (d 576, d_ff 1536) -> 62, gemma3-270m (640, 2048) -> 73."""
    return rank_for(lm.d_model, lm.d_ff, lm.gated)


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
            if (meta.get("format") != FORMAT or meta.get("fingerprint") != lm.fingerprint
                    or meta.get("version") != str(VERSION)):
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
    stdlib docstring chunks when it does not (a chunk sharing a 16-gram with the evaluation corpus
    is skipped)."""
    from .runs import capture_run

    runs = history_runs(lm, store)
    have = sum(r["tokens"] for r in runs)
    captured = 0
    if have < min_tokens:
        texts = history_texts(lm)
        ref = eval_ngrams(lm)
        for text in texts:
            if have >= min_tokens:
                break
            if _ngrams(lm.encode(text)) & ref:
                continue
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


# ---- no overlap with the evaluation text -------------------------------------------------------

def _ngrams(ids: list[int], n: int = NGRAM) -> set[bytes]:
    """Every run of n consecutive token ids, as bytes."""
    a = np.asarray(ids, dtype=np.int64)
    if len(a) < n:
        return set()
    return {row.tobytes() for row in np.lib.stride_tricks.sliding_window_view(a, n)}


_EVAL_NGRAMS: dict[tuple, set[bytes]] = {}


def eval_ngrams(lm) -> set[bytes]:
    """The 16-grams of the evaluation corpus (pydoc_data.topics, `evaluate.corpus_ids`): it holds
    every window the quality protocol draws (12 x 320 tokens by default, and any other setting)
    and the held-out windows."""
    key = (lm.fingerprint, id(lm.tokenizer))
    if key not in _EVAL_NGRAMS:
        _EVAL_NGRAMS[key] = _ngrams(pydoc_ids(lm.tokenizer))
    return _EVAL_NGRAMS[key]


def check_no_overlap(lm, history: dict[str, list[int]]) -> dict:
    """Refuse (MoyuError) when a history run shares a 16-gram with the evaluation corpus;
    `history` maps run ids to token ids. Returns what was checked, for the report."""
    ref = eval_ngrams(lm)
    bad = {rid: len(_ngrams(ids) & ref) for rid, ids in history.items()}
    bad = {rid: n for rid, n in bad.items() if n}
    if bad:
        shown = ", ".join(f"{rid} ({n} shared)" for rid, n in list(bad.items())[:5])
        raise MoyuError(f"router history overlaps the evaluation text (pydoc_data.topics): {len(bad)} run(s) "
                        f"share {NGRAM}-token sequences with it: {shown}. Delete them (Runs page) or train "
                        f"with another --db; training on evaluated text would inflate every DejaVu figure")
    return {"runs": len(history), "tokens": sum(len(v) for v in history.values()), "ngram": NGRAM,
            "reference": "pydoc_data.topics (every evaluation and held-out window)", "shared_ngrams": 0}


# ---- training ----------------------------------------------------------------------------------

def _topk_bool(a: torch.Tensor, k: int) -> torch.Tensor:
    """bool (N, n): the top-k of each row of a."""
    return torch.zeros(a.shape, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)


def fit(x: torch.Tensor, y: torch.Tensor, rank: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train one layer's router: x (N, d) float32, y (N, d_ff) bool labels -> (w1 (r, d) with the
    1/std input scaling folded in, w2 (d_ff, r)); logits = (x @ w1.T) @ w2.T."""
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


def _score(logits: torch.Tensor, az: torch.Tensor, static: dict[float, torch.Tensor]) -> tuple[dict, dict]:
    """logits, |z| (N, d_ff) -> (means, per-token recall (N,) per keep): recall/precision of
    top-k(logits) vs top-k(|z|) per keep, the classifier (logit > 0) against the top-50% label,
    and the static baseline."""
    dff = az.shape[1]
    out, per_token = {}, {}
    for keep in KEEPS:
        k = keep_count(dff, keep)
        true = _topk_bool(az, k)
        hits = true.gather(1, logits.topk(k, dim=1).indices).sum(1).float()   # (N,)
        per_token[keep] = (hits / true.sum(1)).numpy()
        out[f"recall@{keep}"] = float(per_token[keep].mean())
        out[f"precision@{keep}"] = float((hits / k).mean())
        out[f"static_recall@{keep}"] = float(true[:, static[keep]].float().sum(1).div(k).mean())
    label = _topk_bool(az, dff // 2)
    pos = logits > 0
    tp = float((pos & label).sum())
    out["clf_recall"] = tp / max(1.0, float(label.sum()))
    out["clf_precision"] = tp / max(1.0, float(pos.sum()))
    return out, per_token


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
    from .experiments.stats import mean_ci
    from .hooks import capture_mlp_io

    t0 = time.perf_counter()
    progress = progress or (lambda f, m: None)
    rank = int(rank or default_rank(lm))
    if rank < 1 or steps < 1 or min_tokens < 1 or heldout < 2:
        raise MoyuError("rank, steps and min-tokens must be positive, held-out windows at least 2")
    share = size_share(lm, rank)
    if share > MAX_SHARE:
        raise MoyuError(f"rank {rank} makes the router {share:.1%} of the MLP's parameters; at most "
                        f"{MAX_SHARE:.0%} (rank {rank_for(lm.d_model, lm.d_ff, lm.gated, MAX_SHARE)}) is allowed")
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
    history = {r["run_id"]: [t for t, _ in store.tokens(r["run_id"])] for r in runs}
    overlap = check_no_overlap(lm, history)
    L, skip = lm.n_layers, len(lm.bos_ids) + 1   # the sink (and BOS) rows are left out
    xs, ys = [], []
    for j, ids in enumerate(history.values()):
        x, z = capture_mlp_io(lm, ids, list(range(L)))                         # (L, T, d), (L, T, d_ff) float32
        xs.append(x[:, skip:])
        y = _topk_bool(torch.from_numpy(np.abs(z[:, skip:])).flatten(0, 1), lm.d_ff // 2)
        ys.append(np.packbits(y.numpy().reshape(L, -1, lm.d_ff), axis=-1))    # labels, 1 bit each
        progress(0.2 + 0.15 * (j + 1) / len(history), f"recomputing x and z: run {j + 1}/{len(history)}")
    x_all, y_all = np.concatenate(xs, 1), np.concatenate(ys, 1)               # (L, N, d), (L, N, d_ff / 8)
    del xs, ys
    progress(0.35, "held-out windows")
    windows = heldout_windows(lm, heldout)
    x_te, az_te = _heldout(lm, windows)
    t_train = time.perf_counter()
    tensors, per_layer = {}, []
    recall_tokens = {keep: np.zeros(x_te.shape[1]) for keep in KEEPS}         # summed over layers
    for i in range(L):
        y = torch.from_numpy(np.unpackbits(y_all[i], axis=-1, count=lm.d_ff).astype(bool))   # (N, d_ff)
        w1, w2 = fit(torch.from_numpy(x_all[i]), y, rank, steps, SEED * 1000 + i)
        tensors[f"layers.{i}.w1"], tensors[f"layers.{i}.w2"] = w1, w2
        freq = y.float().mean(0)
        static = {keep: freq.topk(keep_count(lm.d_ff, keep)).indices for keep in KEEPS}
        with torch.no_grad():
            logits = (torch.from_numpy(x_te[i]) @ w1.T) @ w2.T
        scores, per_token = _score(logits, torch.from_numpy(az_te[i]).float(), static)
        per_layer.append({"layer": i, **scores})
        for keep in KEEPS:
            recall_tokens[keep] += per_token[keep]
        progress(0.4 + 0.6 * (i + 1) / L, f"trained layer {i + 1}/{L}")
    n_rows = x_all.shape[1]
    del x_all, y_all
    mean = {k: float(np.mean([row[k] for row in per_layer])) for k in per_layer[0] if k != "layer"}
    # per held-out window: mean over its tokens and all layers; the interval is over windows
    per_window = {keep: (v / L).reshape(len(windows), -1).mean(1) for keep, v in recall_tokens.items()}
    report = {
        "model": lm.name, "fingerprint": lm.fingerprint, "rank": rank, "steps": steps,
        "router_params": rank * (lm.d_model + lm.d_ff), "mlp_params": mlp_params(lm.d_model, lm.d_ff, lm.gated),
        "router_share": share,
        "min_tokens": min_tokens, "batch": BATCH, "lr": LR, "pos_weight": POS_WEIGHT, "seed": SEED,
        "label_rule": LABEL_RULE, "tokens_trained": n_rows, "history_runs": len(runs),
        "captured_runs": hist["captured_runs"], "overlap_check": overlap,
        "heldout": {"source": "pydoc_data.topics, midway between the quality protocol's windows",
                    "windows": len(windows), "tokens": int(x_te.shape[1])},
        "recall": mean["recall@0.5"], "precision": mean["precision@0.5"], **mean,
        **{f"recall_ci@{keep}": {**mean_ci(v), "unit": "held-out windows"} for keep, v in per_window.items()},
        "random_recall@0.5": 0.5, "random_recall@0.25": 0.25,
        "per_layer": per_layer, "train_seconds": time.perf_counter() - t_train,
    }
    report["seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={
        "format": FORMAT, "version": str(VERSION), "fingerprint": lm.fingerprint, "model": lm.name,
        "n_layers": str(L), "rank": str(rank), "steps": str(steps), "label_rule": LABEL_RULE,
        "tokens_trained": str(n_rows), "settings": json.dumps(settings, sort_keys=True),
        "report": json.dumps(report)})
    os.chmod(tmp, 0o644)  # a shareable cache file, like the converted model weights
    os.replace(tmp, path)
    store.put_result("router", key, report, model=lm.name, method="dejavu")
    progress(1.0, "router trained")
    return {**report, "path": str(path), "cached": False}


def report_text(r: dict) -> str:
    """The router report in a few lines: size, held-out recall with n and interval, baselines."""
    ci = r["recall_ci@0.5"]
    return (f"router {r.get('path', '')}{' (reused)' if r.get('cached') else ''}: rank {r['rank']}, "
            f"{r['router_params']:,} params per layer = {r['router_share']:.1%} of the MLP's {r['mlp_params']:,}; "
            f"{r['steps']} steps on {r['tokens_trained']} tokens of {r['history_runs']} history runs "
            f"(no {r['overlap_check']['ngram']}-gram shared with the evaluation text)\n"
            f"held-out top-k recall (= precision) at keep 0.5: {ci['mean']:.3f} [95% CI {ci['lo']:.3f}, "
            f"{ci['hi']:.3f}], n = {ci['n']} held-out windows ({r['heldout']['tokens']} tokens); static "
            f"{r['static_recall@0.5']:.3f}, random 0.5\n"
            f"at keep 0.25: {r['recall@0.25']:.3f} (static {r['static_recall@0.25']:.3f}, random 0.25); "
            f"classifier (logit > 0 vs top-50% label): recall {r['clf_recall']:.3f}, "
            f"precision {r['clf_precision']:.3f}")
