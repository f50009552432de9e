"""Decode speed: dense and method alternating in one process (A B A B ...), median of per-pair
decode tokens/s ratios, with the ceiling 1 / (1 - m (1 - k)) printed beside (m = MLP byte share).

    python benchmarks/decode_speed.py --method griffin --keep 0.5 --json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import json
import statistics

from moyu_core.decode import generate
from moyu_core.methods import make
from moyu_core.models import load, set_threads

PROMPT = "Python's standard library reference describes the built-in types, the exceptions and"


def mlp_share(lm) -> float:
    mlp = sum(p.numel() for l in lm.layers for p in l.mlp.parameters())
    return mlp / sum(p.numel() for p in lm.model.parameters())


def bench(lm, name: str, keep: float, pairs: int, tokens: int) -> dict:
    m = make(name, keep=keep)
    ratios, label = [], ""
    generate(lm, PROMPT, make("dense"), 4)
    for _ in range(pairs):
        d = generate(lm, PROMPT, make("dense"), tokens)
        r = generate(lm, PROMPT, m, tokens)
        ratios.append(r["decode_tokens_per_s"] / d["decode_tokens_per_s"])
        label = r["label"]
    share = mlp_share(lm)
    return {"method": name, "keep": keep, "speedup_median": statistics.median(ratios),
            "ceiling": 1 / (1 - share * (1 - keep)), "pairs": pairs, "label": label,
            "mlp_share": share, "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    set_threads()
    lm = load()
    rows = [bench(lm, a.method, a.keep, a.pairs, a.tokens)] if a.method else [
        bench(lm, n, k, a.pairs, a.tokens) for n in ("griffin", "static") for k in (0.5, 0.25)]
    for r in rows:
        print(f"{r['method']:8s} keep {r['keep']:.2f}  speed-up {r['speedup_median']:.2f}x  "
              f"(ceiling {r['ceiling']:.2f}x, {r['pairs']} pairs, {r['label']})")
    if a.json:
        print(json.dumps(rows[0] if a.method else rows))


if __name__ == "__main__":
    main()
