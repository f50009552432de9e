"""Applicability across architectures (the paper's "impossible trinity"): every registered DA
method's quality at the same keep on each shipped model, side by side. Uses the methods registry
and the quality protocol (moyu_core.evaluate) on 12 windows by default; every cell carries n (the
windows) and a 95% t interval over windows: for the perplexity ratio, exp of the interval of the
per-window mean log ratio (its mean is exactly the protocol's log ratio), for KL and top-1 the
interval of the per-window values. Each evaluation is cached by evaluate itself (results kind
"eval"; an entry stored before per-window values existed is recomputed), the table by this module."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import methods, models
from ..errors import MoyuError
from . import common, stats

KIND = "experiment:applicability"
VERSION = 3  # 3: 12 windows, intervals over windows


@dataclass(frozen=True)
class ApplicabilityParams:
    keep: float = 0.5
    models: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")
    windows: int = 12
    prompt_len: int = 128
    gen_len: int = 32
    train_router: bool = True   # train a missing DejaVu router from the store (minutes per model)


def _make(name: str, keep: float):
    return methods.make(name) if name == "dense" else methods.make(name, keep=keep)


def _prepare_router(lm, store, p: ApplicabilityParams, progress) -> None:
    from .. import router
    if p.train_router and store is not None and router.load_router(lm) is None:
        router.train(lm, store, progress=(lambda f, msg="": progress(0.0, f"{lm.name} router: {msg}"))
                     if progress else None)


def _evaluate(lm, method, store, p: ApplicabilityParams) -> dict:
    from ..evaluate import evaluate
    kw = dict(windows=p.windows, prompt_len=p.prompt_len, gen_len=p.gen_len)
    r = evaluate(lm, method, store=store, **kw)
    return r if "per_window" in r else evaluate(lm, method, store=None, **kw)


def measure(p: ApplicabilityParams, store=None, progress=None) -> dict:
    if p.windows < 2:
        raise MoyuError("applicability needs at least 2 windows (intervals are taken over windows)")
    table, errors = [], {}
    names = sorted(methods.REGISTRY)
    for mi, model in enumerate(p.models):
        try:
            lm = models.load(model)
        except MoyuError as e:
            errors[model] = str(e).splitlines()[0][:200]
            continue
        _prepare_router(lm, store, p, progress)
        for ni, name in enumerate(names):
            try:
                r = _evaluate(lm, _make(name, p.keep), store, p)
                figures = ("ppl", "dense_ppl", "ppl_ratio", "kl", "top1_agree", "sparsity")
                table.append({"model": model, "method": name, "params": r.get("params"),
                              "windows": len(r["per_window"]), **{k: r.get(k) for k in figures}, **stats.window_intervals(r["per_window"])})
            except MoyuError as e:  # one method failing on one architecture is itself a finding
                table.append({"model": model, "method": name, "error": str(e).splitlines()[0][:200]})
            if progress:
                progress((mi + (ni + 1) / len(names)) / len(p.models), f"{model}: {name}")
    return {"table": table, "model_errors": errors}


def run(store=None, params: ApplicabilityParams = ApplicabilityParams(), progress=None, force: bool = False) -> dict:
    fps = {}
    for m in params.models:
        try:
            fps[m] = models.resolve(m)[1]
        except MoyuError:
            fps[m] = None
    key = {"params": asdict(params), "fingerprints": fps, "methods": sorted(methods.REGISTRY), "version": VERSION}
    res = common.cached(store, KIND, key, lambda: measure(params, store, progress), force=force)
    return {"experiment": "applicability", "params": asdict(params), **res}


def summary_text(res: dict) -> str:
    if "skipped" in res:
        return f"applicability skipped: {res['skipped']}"
    p = res["params"]
    lines = [f"method quality at keep {p['keep']}: ppl ratio to dense and top-1 agreement with 95% t intervals "
             f"over n = {p['windows']} windows ({p['prompt_len']} prompt + {p['gen_len']} continuation tokens)"]
    for row in res["table"]:
        if "error" in row:
            lines.append(f"  {row['model']:14s} {row['method']:8s} error: {row['error']}")
        else:
            r, t = row["ppl_ratio_ci"], row["top1_ci"]
            lines.append(f"  {row['model']:14s} {row['method']:8s} ppl ratio {r['mean']:.3f} [{r['lo']:.3f}, "
                         f"{r['hi']:.3f}]  top-1 {t['mean']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}]  "
                         f"sparsity {row['sparsity']:.3f}  n = {row['windows']}")
    for m, e in res.get("model_errors", {}).items():
        lines.append(f"  {m}: not loaded ({e})")
    return "\n".join(lines)
