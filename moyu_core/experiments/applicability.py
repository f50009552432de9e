"""Applicability across architectures (the paper's "impossible trinity"): every registered DA
method's quality at the same keep on each shipped model, side by side. Uses the methods registry
and the quality protocol (moyu_core.evaluate); each evaluation is cached by evaluate itself
(results kind "eval"), the table by this module."""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass

from .. import models
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


def available() -> str | None:
    """None when the methods registry and the quality protocol are importable, else why not."""
    for mod, attr in (("moyu_core.methods", "REGISTRY"), ("moyu_core.evaluate", "evaluate")):
        try:
            if not hasattr(importlib.import_module(mod), attr):
                return f"{mod}.{attr} is missing"
        except Exception as e:  # the methods issue may not be merged yet
            return f"{mod} is not available ({type(e).__name__}: {e})"
    return None


def _make(methods, name: str, keep: float):
    try:
        return methods.make(name, keep=keep)
    except (MoyuError, TypeError):
        return methods.make(name)  # methods without a keep parameter (dense, thresholds)


def measure(p: ApplicabilityParams, store=None, progress=None) -> dict:
    why = available()
    if why:
        return {"skipped": f"applicability needs the DA methods and the quality protocol: {why}"}
    methods = importlib.import_module("moyu_core.methods")
    evaluate = importlib.import_module("moyu_core.evaluate").evaluate
    table, errors = [], {}
    names = sorted(methods.REGISTRY)
    for mi, model in enumerate(p.models):
        try:
            lm = models.load(model)
        except Exception as e:
            errors[model] = str(e).splitlines()[0][:200]
            continue
        for name in names:
            try:
                m = _make(methods, name, p.keep)
                r = evaluate(lm, m, store=store, windows=p.windows, prompt_len=p.prompt_len, gen_len=p.gen_len)
                table.append({"model": model, "method": name, "params": r.get("params"),
                              **{k: r.get(k) for k in ("ppl", "dense_ppl", "ppl_ratio", "kl", "top1_agree", "sparsity")}})
            except Exception as e:  # one method failing on one architecture is itself a finding
                table.append({"model": model, "method": name, "error": str(e).splitlines()[0][:200]})
        if progress:
            progress((mi + 1) / len(p.models))
    return {"table": table, "model_errors": errors}


def run(store=None, params: ApplicabilityParams = ApplicabilityParams(), progress=None, force: bool = False) -> dict:
    why = available()
    if why:
        return {"experiment": "applicability", "params": asdict(params),
                "skipped": f"applicability needs the DA methods and the quality protocol: {why}"}
    fps = {}
    for m in params.models:
        try:
            fps[m] = models.resolve(m)[1]
        except Exception:
            fps[m] = None
    key = {"params": asdict(params), "fingerprints": fps, "methods": sorted(importlib.import_module("moyu_core.methods").REGISTRY), "version": 1}
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
