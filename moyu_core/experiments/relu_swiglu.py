"""ReLU versus SwiGLU on controlled pairs (paper Section 3 and limitation 1).

Pairs of tiny Llama LMs that differ only in the MLP activation: `hidden_act="relu"` (ReGLU: relu(gate)
* up) versus `"silu"` (SwiGLU). Both are gated so that they have exactly the same parameter count,
the same module paths (hooks, methods and loading work unchanged: each is a plain
LlamaForCausalLM folder) and, within a seed, the same initialisation seed, batches, step count and
learning-rate schedule. ReLU on the gate is what makes z exactly zero, so a pair isolates the
paper's variable: the activation function. One pair per seed, at least 3 seeds by default.

Step budget, fixed before any model trains (`step_budget`): `probe_steps` timed steps of each
activation (after one warm-up step) give the slower step time; the budget is
min(steps, cap / that time). Every model of every seed then trains exactly that many steps under
the same schedule (linear warm-up over 50 steps, cosine decay over the budget); nothing stops
early, so the time cap can shorten training but never makes the two activations differ.

Data: `pydoc_data.topics` (ships with Python) tokenized with the smollm2 tokenizer; 90% train,
10% held out. Saved as Hugging Face folders (safetensors) under cache/trained/ and registered
with models.register_model. Compared on every trained model and, as reference figures, on
smollm2-135m and gemma3-270m: activation sparsity (exact zeros, near zeros) and a DejaVu-style
router's recall of the true top-k neurons at the same keep, the router sized like moyu's
(`router.rank_for`, ~5% of the MLP's parameters). Verdicts: per model, the mean over its layers;
intervals across seeds, paired by seed (never across the layers of one model)."""
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
from ..analysis import top_mask
from ..router import DEFAULT_SHARE, fit, rank_for
from . import common, stats

KIND = "experiment:relu_swiglu"
VERSION = 2  # 2: seeds, step budget fixed before training, intervals across seeds, router ~5% of the MLP
TRAINED_DIR = models.TRAINED_DIR
PAIR = {"relu": "relu", "swiglu": "silu"}   # name part -> hidden_act
WARMUP = 50


@dataclass(frozen=True)
class TrainParams:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    d_ff: int = 384
    seq_len: int = 128
    batch: int = 8
    steps: int = 1200          # requested step budget (the cap may lower it, for every model alike)
    max_minutes: float = 15.0  # wall-clock cap per model, turned into a step count before training
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    probe_steps: int = 3       # timed steps per activation that fix the budget
    suffix: str = ""           # appended to the model names (tests train their own pairs)


@dataclass(frozen=True)
class CompareParams:
    keep: float = 0.2          # router keep fraction (same for every model)
    near_zero: float = 0.01    # near zero: |z| < near_zero * max_j |z_j| of the token
    train_tokens: int = 2048   # router training tokens (from the training split)
    test_tokens: int = 512     # router held-out tokens
    n_layers: int = 4          # layers evenly spaced over the depth
    router_share: float = DEFAULT_SHARE   # router parameters / MLP parameters
    router_steps: int = 300
    models: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")   # reference models (no seeds)
    seed: int = 0


def _split(ids: list[int]) -> tuple[list[int], list[int]]:
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:]


def model_names(p: TrainParams) -> dict[str, tuple[str, int]]:
    """name -> (hidden_act, seed), e.g. tiny-relu-s0: relu, seed 0."""
    return {f"tiny-{n}-s{seed}{p.suffix}": (act, seed) for seed in p.seeds for n, act in PAIR.items()}


def lr_at(p: TrainParams, step: int, steps: int) -> float:
    """The one schedule: linear warm-up over WARMUP steps, cosine decay over the budget."""
    return p.lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / steps))


def _new_model(act: str, seed: int, p: TrainParams, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=p.hidden, intermediate_size=p.d_ff,
                      num_hidden_layers=p.layers, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
                      max_position_embeddings=max(256, p.seq_len), hidden_act=act, tie_word_embeddings=True,
                      attn_implementation="eager", bos_token_id=None, eos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.01)


def _step(model, opt, x: torch.Tensor, lr: float) -> float:
    for g in opt.param_groups:
        g["lr"] = lr
    out = model(x, labels=x)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def _batch(rng, train_ids: np.ndarray, p: TrainParams) -> torch.Tensor:
    starts = rng.integers(0, len(train_ids) - p.seq_len - 1, size=p.batch)
    return torch.from_numpy(np.stack([train_ids[s:s + p.seq_len] for s in starts]).astype(np.int64))


def step_budget(p: TrainParams, vocab: int, train_ids: np.ndarray) -> dict:
    """Time `probe_steps` steps of each activation (after a warm-up step) on throwaway models and
    fix the step count every model will train: min(steps, cap / slower step time)."""
    per_step = 0.0
    with torch.random.fork_rng(devices=[]):
        for act in PAIR.values():
            model, opt = _new_model(act, 0, p, vocab)
            rng = np.random.default_rng(0)
            _step(model, opt, _batch(rng, train_ids, p), p.lr)
            t0 = time.perf_counter()
            for _ in range(p.probe_steps):
                _step(model, opt, _batch(rng, train_ids, p), p.lr)
            per_step = max(per_step, (time.perf_counter() - t0) / p.probe_steps)
    cap_steps = int(p.max_minutes * 60 / per_step) if per_step > 0 else p.steps
    steps = max(1, min(p.steps, cap_steps))
    return {"requested": p.steps, "cap_minutes": p.max_minutes, "seconds_per_step": per_step,
            "steps": steps, "capped": steps < p.steps, "schedule": f"linear warm-up {WARMUP} steps, "
            f"cosine decay over {steps} steps, peak lr {p.lr:g}"}


def _train_one(name: str, act: str, seed: int, p: TrainParams, tokenizer, train_ids: np.ndarray,
               held_ids: np.ndarray, budget: dict, progress=None) -> dict:
    steps = budget["steps"]
    model, opt = _new_model(act, seed, p, len(tokenizer))
    rng = np.random.default_rng(seed)  # the same batches for both activations of a seed
    t0, loss, lr_sum = time.monotonic(), math.nan, 0.0
    for step in range(steps):
        lr = lr_at(p, step, steps)
        lr_sum += lr
        loss = _step(model, opt, _batch(rng, train_ids, p), lr)
        if progress:
            progress(step + 1, steps, time.monotonic() - t0)
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
    info = {"name": name, "hidden_act": act, "seed": seed, "params": sum(t.numel() for t in model.parameters()),
            "steps": steps, "lr_sum": lr_sum, "budget": budget, "seconds": round(seconds, 1),
            "final_train_loss": loss, "held_out_loss": held, "held_out_ppl": math.exp(held), "train": asdict(p)}
    (folder / "moyu_training.json").write_text(json.dumps(info, indent=1))
    models.register_model(name, folder)
    return info


def _stored(name: str, p: TrainParams) -> dict | None:
    f = TRAINED_DIR / name / "moyu_training.json"
    if not f.exists():
        return None
    info = json.loads(f.read_text())
    return info if info.get("train") == json.loads(json.dumps(asdict(p))) else None


def train_pair(p: TrainParams = TrainParams(), progress=None, force: bool = False) -> dict:
    """Train (or reuse) one ReLU/SwiGLU pair per seed; returns {"models": {name: info}, "budget"}.
    Stored models are reused when all of them match `p` and share one step count; otherwise the
    budget is measured first and every model not trained with exactly that many steps is trained.
    progress(fraction, message) reports the step and the estimated time left."""
    if len(p.seeds) < 1 or len(set(p.seeds)) != len(p.seeds):
        raise MoyuError("give one or more distinct seeds")
    names = model_names(p)
    stored = {n: None if force else _stored(n, p) for n in names}
    if all(stored.values()) and len({i["steps"] for i in stored.values()}) == 1:
        for n in names:
            models.register_model(n, TRAINED_DIR / n)
        return {"models": {n: {**i, "cached": True} for n, i in stored.items()},
                "budget": next(iter(stored.values()))["budget"]}
    tok = models.load("smollm2-135m").tokenizer
    train_ids, held = (np.asarray(a, dtype=np.int64) for a in _split(pydoc_ids(tok)))
    if progress:
        progress(0.0, "timing a few steps of each activation to fix the step budget")
    budget = step_budget(p, len(tok), train_ids)
    todo = [n for n in names if not (stored[n] and stored[n]["steps"] == budget["steps"])]
    infos: dict = {}
    for n in names:
        if n not in todo:
            models.register_model(n, TRAINED_DIR / n)
            infos[n] = {**stored[n], "cached": True}
    for k, n in enumerate(todo):
        act, seed = names[n]

        def report(done, steps, elapsed, k=k, n=n):
            if progress and (done == steps or done % 10 == 0):
                left = elapsed / done * (steps - done) + elapsed / done * steps * (len(todo) - k - 1)
                progress((k + done / steps) / len(todo),
                         f"{n} ({k + 1}/{len(todo)}): step {done}/{steps}, about {left / 60:.1f} min left")
        infos[n] = {**_train_one(n, act, seed, p, tok, train_ids, held, budget, report), "cached": False}
    return {"models": {n: infos[n] for n in names}, "budget": budget}


def estimate_minutes(p: TrainParams) -> float:
    """Upper bound of the training time before the budget is measured: every model at the cap."""
    return 2 * len(p.seeds) * p.max_minutes


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
    """moyu's DejaVu router (`router.fit`: Linear(d, r) -> Linear(r, d_ff), no bias, weighted BCE)
    trained on labels 'in the token's top-k of |z|'; recall of its top-k against the true top-k on
    held-out tokens (k = keep * d_ff), and what a static choice (the k neurons most often in the
    training top-k) gets. x (N, d), z (N, d_ff)."""
    k = keep_count(z_tr.shape[1], keep)
    y_tr = torch.from_numpy(top_mask(z_tr, keep))
    y_te = torch.from_numpy(top_mask(z_te, keep))
    w1, w2 = fit(torch.from_numpy(x_tr), y_tr, rank, steps, seed)
    with torch.no_grad():
        pred = ((torch.from_numpy(x_te) @ w1.T) @ w2.T).topk(k, dim=1).indices
    hit = y_te.gather(1, pred).float().sum(1) / k                     # (N,)
    hit_static = y_te[:, y_tr.float().mean(0).topk(k).indices].float().sum(1) / k
    return {"recall": float(hit.mean()), "static_recall": float(hit_static.mean()), "random_recall": k / z_tr.shape[1]}


def _training_info(name: str) -> dict | None:
    f = TRAINED_DIR / name / "moyu_training.json"
    return json.loads(f.read_text()) if f.exists() else None


def _compare_one(lm, p: CompareParams) -> dict:
    L = lm.n_layers
    layers = sorted({int(round(i)) for i in np.linspace(0, L - 1, min(p.n_layers, L))})
    x_tr, z_tr = _gather(lm, _windows(lm, p.train_tokens, 0.0), layers)
    x_te, z_te = _gather(lm, _windows(lm, p.test_tokens, 0.95), layers)
    x_tr, z_tr = x_tr[:, :p.train_tokens], z_tr[:, :p.train_tokens]
    x_te, z_te = x_te[:, :p.test_tokens], z_te[:, :p.test_tokens]
    rank = rank_for(lm.d_model, lm.d_ff, lm.gated, p.router_share)
    per_layer = []
    for j, layer in enumerate(layers):
        r = router_recall(x_tr[j], z_tr[j], x_te[j], z_te[j], p.keep, rank, p.router_steps, p.seed)
        per_layer.append({"layer": layer, **sparsity(z_te[j:j + 1], p.near_zero), **r})
    mean = {k: float(np.mean([row[k] for row in per_layer])) for k in per_layer[0] if k != "layer"}
    info = _training_info(lm.name)
    return {"model": lm.name, "hidden_act": getattr(lm.model.config, "hidden_act",
                                                     getattr(lm.model.config, "hidden_activation", "?")),
            "seed": info.get("seed") if info else None, "router_rank": rank,
            "layers": layers, "per_layer": per_layer, **mean}


def compare(p: CompareParams, pair: tuple[str, ...] = (), store=None, progress=None, force: bool = False) -> dict:
    """Sparsity and router recall of every trained model in `pair` and of the reference models in
    p.models (one cached result per model), and the verdicts across seeds."""
    out, skipped = {}, {}
    names = list(pair) + [m for m in p.models if m not in pair]
    for i, name in enumerate(names):
        try:
            lm = models.load(name)
        except Exception as e:  # a model that is not available here is reported, not fatal
            skipped[name] = str(e).splitlines()[0][:200]
            continue
        key = {"params": {**asdict(p), "models": None}, "model": lm.fingerprint, "version": VERSION}
        out[name] = common.cached(store, KIND + ":model", key, lambda: _compare_one(lm, p), model=name, force=force)
        if progress:
            progress((i + 1) / len(names), f"compared {name}")
    return {"models": out, "pair": list(pair), "skipped": skipped, "verdicts": verdicts(out, p)}


def by_seed(res: dict) -> dict[str, dict[int, dict]]:
    """The trained models' results grouped by activation ('relu', 'silu') and seed."""
    out: dict[str, dict[int, dict]] = {"relu": {}, "silu": {}}
    for r in res.values():
        act = str(r.get("hidden_act"))
        if r.get("seed") is not None and act in out:
            out[act][int(r["seed"])] = r
    return out


def verdicts(res: dict, p: CompareParams) -> dict:
    """Limitation 1: a router trained on history predicts ReLU activations well and SwiGLU ones
    poorly; and ReLU makes exact zeros. Per model the mean over its layers; paired t intervals
    across seeds (a seed's two models share initialisation seed, batches and steps)."""
    g = by_seed(res)
    seeds = sorted(set(g["relu"]) & set(g["silu"]))
    if len(seeds) < 2:
        return {"note": "fewer than 2 seeds with both a ReLU and a SwiGLU model: run `python -m moyu_core "
                        "relu-swiglu` (3 seeds by default) to train the pairs"}

    def diff(metric):
        return stats.diff_ci([g["relu"][s][metric] for s in seeds], [g["silu"][s][metric] for s in seeds],
                             paired=True)

    return {
        "limitation_1_router": stats.verdict_greater(
            f"a DejaVu router recalls the true top-{p.keep:g} better on ReLU than on SwiGLU (same-seed pairs)",
            diff("recall"), unit="seeds"),
        "relu_sparser": stats.verdict_greater(
            "ReLU activations are sparser (exact zeros) than SwiGLU (same-seed pairs)", diff("exact_zero"),
            unit="seeds"),
    }


def summary_text(res: dict) -> str:
    lines = [f"ReLU vs SwiGLU (router keep {res['params']['keep']:g}, router ~{DEFAULT_SHARE:.0%} of the MLP's "
             f"parameters); intervals across seeds"]
    b = res.get("budget")
    if b:
        lines.append(f"  step budget fixed before training: {b['steps']} steps for every model "
                     f"(requested {b['requested']}, cap {b['cap_minutes']:g} min per model at "
                     f"{b['seconds_per_step']:.3f} s/step{', capped' if b['capped'] else ''}); {b['schedule']}")
    for n, t in res.get("training", {}).items():
        lines.append(f"  trained {n}: {t['hidden_act']}, seed {t['seed']}, {t['params']:,} params, {t['steps']} "
                     f"steps in {t['seconds']} s, held-out ppl {t['held_out_ppl']:.1f}"
                     f"{' (reused)' if t.get('cached') else ''}")
    for act, rows in by_seed(res["models"]).items():
        if rows:
            zeros = stats.mean_ci([rows[s]["exact_zero"] for s in rows])
            recall = stats.mean_ci([rows[s]["recall"] for s in rows])
            lines.append(f"  {act:6s} over {len(rows)} seeds: exact zeros {stats.ci_text(zeros)}  "
                         f"router recall {stats.ci_text(recall)}")
    for n, r in res["models"].items():
        lines.append(f"  {n:16s} ({r['hidden_act']}) exact zeros {r['exact_zero']:.3f}  near zeros "
                     f"{r['near_zero']:.3f}  90% mass in {r['share_for_90pct_mass']:.3f}  router (rank "
                     f"{r['router_rank']}) recall {r['recall']:.3f} (static {r['static_recall']:.3f}, random "
                     f"{r['random_recall']:.3f}), mean of {len(r['layers'])} layers")
    for n, why in res.get("skipped", {}).items():
        lines.append(f"  {n}: skipped ({why})")
    for v in res["verdicts"].values():
        lines.append(f"- {v['claim']}: {v['text']}" if isinstance(v, dict) else f"- {v}")
    return "\n".join(lines)
