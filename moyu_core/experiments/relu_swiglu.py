"""ReLU versus SwiGLU on a controlled pair (paper Section 3 and limitation 1).

Two tiny Llama LMs that differ only in the MLP activation: `hidden_act="relu"` (ReGLU: relu(gate)
* up) versus `"silu"` (SwiGLU). Both are gated so that they have exactly the same parameter count,
the same module paths (hooks, methods and loading work unchanged: each is a plain
LlamaForCausalLM folder) and the same data, seed, initialisation and step budget. ReLU on the gate
is what makes z exactly zero, so the pair isolates the paper's variable: the activation function.

Data: `pydoc_data.topics` (ships with Python) tokenized with the smollm2 tokenizer; 90% train,
10% held out. Saved as Hugging Face folders (safetensors) under cache/trained/ and registered
with models.register_model. Compared on both trained models and on smollm2-135m and gemma3-270m:
activation sparsity (exact zeros, near zeros) and a DejaVu-style router's recall of the true
top-k neurons at the same keep."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import hooks, models
from ..corpora import pydoc_ids
from ..errors import MoyuError
from ..keep import keep_count
from . import common, stats

KIND = "experiment:relu_swiglu"
TRAINED_DIR = models.CACHE_DIR / "trained"
PAIR = {"tiny-relu": "relu", "tiny-swiglu": "silu"}


@dataclass(frozen=True)
class TrainParams:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    d_ff: int = 384
    seq_len: int = 128
    batch: int = 8
    steps: int = 1200          # the shared step budget
    max_minutes: float = 15.0  # wall-clock cap for the first (ReLU) model; the second gets its steps
    lr: float = 3e-3
    seed: int = 0
    suffix: str = ""           # appended to the model names (tests train their own pair)


@dataclass(frozen=True)
class CompareParams:
    keep: float = 0.2          # router keep fraction (same for every model)
    near_zero: float = 0.01    # near zero: |z| < near_zero * max_j |z_j| of the token
    train_tokens: int = 2048   # router training tokens (from the training split)
    test_tokens: int = 512     # router held-out tokens
    n_layers: int = 4          # layers evenly spaced over the depth
    router_rank: int = 128
    router_steps: int = 300
    models: tuple[str, ...] = ("tiny-relu", "tiny-swiglu", "smollm2-135m", "gemma3-270m")
    seed: int = 0


def _split(ids: list[int]) -> tuple[list[int], list[int]]:
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:]


def model_names(p: TrainParams) -> dict[str, str]:
    return {f"{n}{p.suffix}": act for n, act in PAIR.items()}


def register_trained() -> list[str]:
    """Register every trained folder under cache/trained/ (done on import of this module)."""
    out = []
    if TRAINED_DIR.is_dir():
        for d in sorted(TRAINED_DIR.iterdir()):
            if (d / "config.json").exists() and (d / "moyu_training.json").exists():
                models.register_model(d.name, d)
                out.append(d.name)
    return out


def _train_one(name: str, act: str, p: TrainParams, tokenizer, train_ids: np.ndarray,
               held_ids: np.ndarray, steps: int, progress=None, capped: bool = True) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(p.seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=p.hidden, intermediate_size=p.d_ff,
                      num_hidden_layers=p.layers, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
                      max_position_embeddings=max(256, p.seq_len), hidden_act=act, tie_word_embeddings=True,
                      attn_implementation="eager", bos_token_id=None, eos_token_id=None)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.01)
    rng = np.random.default_rng(p.seed)  # same batches for both models
    t0, done, loss = time.monotonic(), 0, math.nan
    model.train()
    for step in range(steps):
        if capped and time.monotonic() - t0 > p.max_minutes * 60:
            break
        lr = p.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, len(train_ids) - p.seq_len - 1, size=p.batch)
        x = torch.from_numpy(np.stack([train_ids[s:s + p.seq_len] for s in starts]).astype(np.int64))
        out = model(x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss, done = float(out.loss.detach()), step + 1
        if progress:
            progress(done / steps)
    seconds = time.monotonic() - t0
    model.eval()
    with torch.inference_mode():  # held-out loss on fixed windows
        n = min(16, (len(held_ids) - 1) // p.seq_len)
        xs = torch.from_numpy(np.stack([held_ids[i * p.seq_len:(i + 1) * p.seq_len] for i in range(n)]).astype(np.int64))
        held = float(model(xs, labels=xs).loss)
    folder = TRAINED_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    info = {"name": name, "hidden_act": act, "params": sum(t.numel() for t in model.parameters()),
            "steps": done, "seconds": round(seconds, 1), "final_train_loss": loss,
            "held_out_loss": held, "held_out_ppl": math.exp(held), "train": asdict(p)}
    (folder / "moyu_training.json").write_text(json.dumps(info, indent=1))
    models.register_model(name, folder)
    return info


def train_pair(p: TrainParams = TrainParams(), progress=None, force: bool = False) -> dict:
    """Train (or reuse) the pair; returns {name: training info}. The ReLU model trains first, under
    the wall-clock cap; the SwiGLU model then gets exactly the number of steps the first completed
    (no cap), so both have the same step budget. A stored model is reused when its training
    parameters match (and, for the second, its step count equals the first's)."""
    infos: dict = {}
    data = None
    steps = None  # None: the first model, capped by max_minutes
    for n, act in model_names(p).items():
        f = TRAINED_DIR / n / "moyu_training.json"
        info = json.loads(f.read_text()) if f.exists() and not force else None
        if info and info.get("train") == asdict(p) and (steps is None or info["steps"] == steps):
            models.register_model(n, f.parent)
            infos[n] = {**info, "cached": True}
        else:
            if data is None:
                tok = models.load("smollm2-135m").tokenizer
                train_ids, held = _split(pydoc_ids(tok))
                data = (tok, np.asarray(train_ids, dtype=np.int64), np.asarray(held, dtype=np.int64))
            infos[n] = _train_one(n, act, p, data[0], data[1], data[2], p.steps if steps is None else steps, progress,
                                  capped=steps is None)
        steps = infos[n]["steps"]
    return infos


# ---- comparison -------------------------------------------------------------------------------

def _windows(lm, n_tokens: int, start_frac: float, win: int = 256) -> list[list[int]]:
    ids = pydoc_ids(lm.tokenizer)
    train, held = _split(ids)
    src = train if start_frac < 0.9 else held
    out, pos = [], int(len(src) * (start_frac if start_frac < 0.9 else 0.0))
    while sum(len(w) for w in out) < n_tokens and pos + win < len(src):
        out.append(lm.bos_ids + src[pos:pos + win - len(lm.bos_ids)])
        pos += win * 3
    return out


def _gather(lm, windows, layers) -> tuple[np.ndarray, np.ndarray]:
    xs, zs = [], []
    for w in windows:
        x, z = hooks.capture_mlp_io(lm, w, layers)   # (L', T, d), (L', T, d_ff)
        cut = 1 if len(w) > 1 else 0                  # the first token (sink) is left out
        xs.append(x[:, cut:])
        zs.append(z[:, cut:])
    return np.concatenate(xs, axis=1), np.concatenate(zs, axis=1)


def sparsity(z: np.ndarray, near_zero: float) -> dict:
    """z (L', N, d_ff): share of exact zeros, share below near_zero * max|z| of the token, and the
    share of neurons needed to hold 90% of each token's L1 mass."""
    a = np.abs(z)
    mx = a.max(axis=-1, keepdims=True)
    srt = np.sort(a, axis=-1)[..., ::-1]
    cum = np.cumsum(srt, axis=-1) / np.maximum(srt.sum(axis=-1, keepdims=True), 1e-30)
    need90 = (cum < 0.9).sum(axis=-1) + 1
    return {"exact_zero": float((z == 0).mean()), "near_zero": float((a < near_zero * mx).mean()),
            "share_for_90pct_mass": float((need90 / z.shape[-1]).mean())}


def router_recall(x_tr, z_tr, x_te, z_te, keep: float, rank: int, steps: int, seed: int) -> dict:
    """A DejaVu-style predictor Linear(d, r) -> Linear(r, d_ff), no bias, trained with weighted BCE
    on labels 'in the token's top-k of |z|'; recall of its top-k against the true top-k on held-out
    tokens (k = keep * d_ff). x (N, d), z (N, d_ff)."""
    torch.manual_seed(seed)
    d, dff = x_tr.shape[1], z_tr.shape[1]
    k = keep_count(dff, keep)

    def labels(z):
        t = torch.from_numpy(np.abs(z))
        y = torch.zeros_like(t)
        y.scatter_(1, t.topk(k, dim=1).indices, 1.0)
        return y

    xt, yt = torch.from_numpy(x_tr), labels(z_tr)
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(d, rank, bias=False), torch.nn.Linear(rank, dff, bias=False))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    pos_w = torch.tensor((1 - keep) / keep)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net((xt - mu) / sd), yt, pos_weight=pos_w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net((torch.from_numpy(x_te) - mu) / sd).topk(k, dim=1).indices
    ye = labels(z_te)
    hit = ye.gather(1, pred).sum(1) / k                    # (N,)
    # what a static choice (the k neurons most often in the training top-k) would get
    static = yt.mean(0).topk(k).indices
    hit_static = ye[:, static].sum(1) / k
    return {"recall": float(hit.mean()), "static_recall": float(hit_static.mean()), "random_recall": k / dff}


def _compare_one(lm, p: CompareParams) -> dict:
    L = lm.n_layers
    layers = sorted({int(round(i)) for i in np.linspace(0, L - 1, min(p.n_layers, L))})
    x_tr, z_tr = _gather(lm, _windows(lm, p.train_tokens, 0.0), layers)
    x_te, z_te = _gather(lm, _windows(lm, p.test_tokens, 0.95), layers)
    x_tr, z_tr = x_tr[:, :p.train_tokens], z_tr[:, :p.train_tokens]
    x_te, z_te = x_te[:, :p.test_tokens], z_te[:, :p.test_tokens]
    per_layer = []
    for j, layer in enumerate(layers):
        r = router_recall(x_tr[j], z_tr[j], x_te[j], z_te[j], p.keep, min(p.router_rank, x_tr.shape[-1]),
                          p.router_steps, p.seed)
        per_layer.append({"layer": layer, **sparsity(z_te[j:j + 1], p.near_zero), **r})
    mean = {k: float(np.mean([row[k] for row in per_layer])) for k in per_layer[0] if k != "layer"}
    return {"model": lm.name, "hidden_act": getattr(lm.model.config, "hidden_act",
                                                     getattr(lm.model.config, "hidden_activation", "?")),
            "layers": layers, "per_layer": per_layer, **mean,
            "recall_ci": stats.mean_ci([row["recall"] for row in per_layer], p.seed)}


def compare(p: CompareParams, store=None, progress=None, force: bool = False) -> dict:
    out, skipped = {}, {}
    for i, name in enumerate(p.models):
        try:
            lm = models.load(name)
        except Exception as e:  # a model that is not available here is reported, not fatal
            skipped[name] = str(e).splitlines()[0][:200]
            continue
        key = {"params": {**asdict(p), "models": None}, "model": lm.fingerprint, "version": 1}
        out[name] = common.cached(store, KIND + ":model", key, lambda: _compare_one(lm, p), model=name, force=force)
        if progress:
            progress((i + 1) / len(p.models))
    return {"models": out, "skipped": skipped, "verdicts": verdicts(out, p)}


def verdicts(res: dict, p: CompareParams) -> dict:
    """Limitation 1: a router trained on history predicts ReLU activations well and SwiGLU ones
    poorly. Judged on the controlled pair (per-layer recall, paired by layer), plus sparsity."""
    relu = [n for n, r in res.items() if str(r.get("hidden_act")) == "relu"]
    silu = [n for n, r in res.items() if str(r.get("hidden_act")) == "silu" and n.startswith("tiny-")]
    out = {}
    if relu and silu:
        a, b = res[relu[0]], res[silu[0]]
        ra = np.array([r["recall"] for r in a["per_layer"]])
        rb = np.array([r["recall"] for r in b["per_layer"]])
        out["limitation_1_router"] = stats.verdict_greater(
            f"a DejaVu router recalls the true top-{p.keep:g} better on ReLU than on SwiGLU ({relu[0]} vs {silu[0]})",
            stats.diff_ci(ra, rb, p.seed, paired=True))
        za = np.array([r["exact_zero"] for r in a["per_layer"]])
        zb = np.array([r["exact_zero"] for r in b["per_layer"]])
        out["relu_sparser"] = stats.verdict_greater(
            f"ReLU activations are sparser (exact zeros) than SwiGLU ({relu[0]} vs {silu[0]})",
            stats.diff_ci(za, zb, p.seed, paired=True))
    else:
        out["note"] = "the trained pair is missing: run `python -m moyu_core relu-swiglu` to train it"
    return out


register_trained()


def summary_text(res: dict) -> str:
    lines = ["ReLU vs SwiGLU (router keep %g)" % res["params"]["keep"]]
    for n, t in res.get("training", {}).items():
        lines.append(f"  trained {n}: {t['hidden_act']}, {t['params']:,} params, {t['steps']} steps in "
                     f"{t['seconds']} s, held-out ppl {t['held_out_ppl']:.1f}")
    for n, r in res["models"].items():
        lines.append(f"  {n:16s} ({r['hidden_act']}) exact zeros {r['exact_zero']:.3f}  near zeros "
                     f"{r['near_zero']:.3f}  90% mass in {r['share_for_90pct_mass']:.3f}  router recall "
                     f"{r['recall']:.3f} (static {r['static_recall']:.3f}, random {r['random_recall']:.3f})")
    for n, why in res.get("skipped", {}).items():
        lines.append(f"  {n}: skipped ({why})")
    for v in res["verdicts"].values():
        lines.append(f"- {v['claim']}: {v['text']}" if isinstance(v, dict) else f"- {v}")
    return "\n".join(lines)
