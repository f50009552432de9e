"""Decode speed: dense and method alternating in one process (A B A B ...), median of the per-pair
decode tokens/s ratios, with the ceiling 1 / (1 - m (1 - k)) beside (m = MLP byte share).

    python benchmarks/decode_speed.py --method griffin --keep 0.5 --json   one row
    python benchmarks/decode_speed.py                                      every method at 0.5, 0.25
    python benchmarks/decode_speed.py --vs-hf --json      lean dense loop vs transformers' generate
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from moyu_core.analysis import speedup_ceiling
from moyu_core.decode import generate
from moyu_core.methods import make
from moyu_core.models import fused_attention, load, setup_compute

PROMPT = "Python's standard library reference describes the built-in types, the exceptions and"
METHODS = ("griffin", "static", "tda", "cats", "cett", "dejavu", "moe", "oracle")


def mlp_share(lm) -> float:
    mlp = sum(p.numel() for l in lm.layers for p in l.mlp.parameters())
    return mlp / sum(p.numel() for p in lm.model.parameters())


def bench(lm, name: str, keep: float, pairs: int, tokens: int, executed: bool = True) -> dict:
    """Alternate dense and method `pairs` times; the median of per-pair decode tokens/s ratios."""
    m = make(name, keep=keep)
    generate(lm, PROMPT, make("dense"), 4)
    generate(lm, PROMPT, m, 4, executed=executed)            # warm-up (calibration, router load)
    ratios, label = [], ""
    for _ in range(pairs):
        d = generate(lm, PROMPT, make("dense"), tokens)
        r = generate(lm, PROMPT, m, tokens, executed=executed)
        ratios.append(r["decode_tokens_per_s"] / d["decode_tokens_per_s"])
        label = r["label"]
    share = mlp_share(lm)
    return {"method": name, "keep": keep, "speedup_median": statistics.median(ratios),
            "ceiling": speedup_ceiling(share, keep), "pairs": pairs, "tokens": tokens, "label": label,
            "mlp_share": share, "ratios": ratios}


@torch.inference_mode()
def vs_hf(lm, pairs: int, tokens: int) -> dict:
    """Lean loop tokens/s over transformers' generate tokens/s (whole call incl. prefill, both;
    both with SDPA attention)."""
    ids = torch.tensor([lm.encode(PROMPT)])
    ratios = []
    for _ in range(pairs + 1):
        with fused_attention(lm):
            t0 = time.perf_counter()
            lm.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            hf = time.perf_counter() - t0
        t0 = time.perf_counter()
        generate(lm, PROMPT, make("dense"), tokens)
        ours = time.perf_counter() - t0
        ratios.append(hf / ours)
    ratios = ratios[1:]                                       # the first pair warms up
    return {"method": "dense", "vs": "transformers generate", "speedup_median": statistics.median(ratios),
            "pairs": pairs, "tokens": tokens, "label": "executed", "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--simulated", action="store_true", help="mask instead of executing")
    p.add_argument("--vs-hf", action="store_true", help="dense: lean loop vs transformers' generate")
    p.add_argument("--model", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    setup_compute()
    lm = load(a.model) if a.model else load()
    if a.vs_hf:
        r = vs_hf(lm, a.pairs, a.tokens)
        print(f"lean dense loop vs transformers generate: {r['speedup_median']:.2f}x ({r['pairs']} pairs)")
        if a.json:
            print(json.dumps(r))
        return
    todo = [(a.method, a.keep)] if a.method else [(n, k) for n in METHODS for k in (0.5, 0.25)]
    print(f"{'method':8s} {'keep':>5s} {'speed-up':>9s} {'ceiling':>8s}  label ({a.pairs} pairs, {a.tokens} tokens)")
    rows = []
    for name, keep in todo:
        r = bench(lm, name, keep, a.pairs, a.tokens, not a.simulated)
        rows.append(r)
        print(f"{r['method']:8s} {r['keep']:5.2f} {r['speedup_median']:8.2f}x {r['ceiling']:7.2f}x  {r['label']}", flush=True)
    if a.json:
        print(json.dumps(rows[0] if a.method else rows))


if __name__ == "__main__":
    main()
