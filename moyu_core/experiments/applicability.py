"""Applicability across architectures (the paper's "impossible trinity"): every registered DA
method's quality at the same keep on each shipped model, side by side. Uses the methods registry
and the quality protocol (moyu_core.evaluate); each evaluation is cached by evaluate itself
(results kind "eval"), the table by this module."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import methods, models
from ..errors import MoyuError
from . import common

KIND = "experiment:applicability"


@dataclass(frozen=True)
class ApplicabilityParams:
    keep: float = 0.5
    models: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")
    windows: int = 4
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


def measure(p: ApplicabilityParams, store=None, progress=None) -> dict:
    from ..evaluate import evaluate
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
                r = evaluate(lm, _make(name, p.keep), store=store, windows=p.windows,
                             prompt_len=p.prompt_len, gen_len=p.gen_len)
                table.append({"model": model, "method": name, "params": r.get("params"),
                              **{k: r.get(k) for k in ("ppl", "dense_ppl", "ppl_ratio", "kl", "top1_agree", "sparsity")}})
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
    key = {"params": asdict(params), "fingerprints": fps, "methods": sorted(methods.REGISTRY), "version": 2}
    res = common.cached(store, KIND, key, lambda: measure(params, store, progress), force=force)
    return {"experiment": "applicability", "params": asdict(params), **res}


def summary_text(res: dict) -> str:
    if "skipped" in res:
        return f"applicability skipped: {res['skipped']}"
    lines = [f"method quality at keep {res['params']['keep']} (ppl ratio to dense; top-1 agreement)"]
    for row in res["table"]:
        if "error" in row:
            lines.append(f"  {row['model']:14s} {row['method']:8s} error: {row['error']}")
        else:
            lines.append(f"  {row['model']:14s} {row['method']:8s} ppl ratio {row['ppl_ratio']:.3f}  "
                         f"top-1 {row['top1_agree']:.3f}  sparsity {row['sparsity']:.3f}")
    for m, e in res.get("model_errors", {}).items():
        lines.append(f"  {m}: not loaded ({e})")
    return "\n".join(lines)
