"""Quality versus executed speed-up for every DA method at keep 0.75, 0.5 and 0.25.

Quality: the protocol of DESIGN.md (`moyu_core.evaluate`, W windows of P + G tokens of
pydoc_data.topics). Speed: decode tokens/s of the method over dense, alternating in one process,
median of the per-pair ratios (benchmarks/decode_speed.py), executed, beside the method's ceiling
(`decode.ceiling`: 1 / (1 - s (1 - k)), s the bytes its kind can skip). Each row is stored in DuckDB
as a result of kind "pareto" (the app's Compare page draws them) and printed as a table.

    python benchmarks/pareto.py                       # full protocol (W=12, 5 pairs): ~30 min here
    python benchmarks/pareto.py --windows 4 --pairs 3 --methods griffin,tda --json
"""
from __future__ import annotations

import argparse
import json

from decode_speed import bench

from moyu_core.evaluate import evaluate
from moyu_core.methods import make
from moyu_core.models import load, setup_compute
from moyu_core.store import DEFAULT_DB, Store

METHODS = ("oracle", "tda", "cats", "cett", "dejavu", "griffin", "moe", "moe-oracle", "static", "teal")
KEEPS = (0.75, 0.5, 0.25)


def ensure_router(lm, store) -> None:
    """DejaVu needs a trained router: train it from the store's history if there is none."""
    from moyu_core import router
    if router.load_router(lm) is None:
        print("training the DejaVu router (once per model)...", flush=True)
        router.train(lm, store)


def row(lm, store, name: str, keep: float, a) -> dict:
    m = make(name, keep=keep)
    q = evaluate(lm, m, store, a.windows, a.prompt_len, a.gen_len)
    s = bench(lm, name, keep, a.pairs, a.tokens)
    r = {"method": name, "keep": keep, "params": q["params"], "ppl_ratio": q["ppl_ratio"],
         "kl": q["kl"], "top1_agree": q["top1_agree"], "sparsity": q["sparsity"],
         "speedup": s["speedup_median"], "ceiling": s["ceiling"], "label": s["label"],
         "pairs": s["pairs"], "windows": a.windows}
    key = {"model": lm.fingerprint, "method": name, "params": q["params"], "windows": a.windows,
           "prompt_len": a.prompt_len, "gen_len": a.gen_len, "pairs": a.pairs, "tokens": a.tokens}
    store.put_result("pareto", key, r, model=lm.name, method=name)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--keeps", default=",".join(map(str, KEEPS)))
    p.add_argument("--windows", type=int, default=12)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--model", default=None)
    p.add_argument("--db", default=str(DEFAULT_DB))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    setup_compute()
    lm = load(a.model) if a.model else load()
    store = Store(a.db)
    names = [n for n in a.methods.split(",") if n]
    if "dejavu" in names:
        ensure_router(lm, store)
    rows = []
    print(f"{'method':10s} {'keep':>5s} {'ppl ratio':>9s} {'top-1':>6s} {'sparsity':>8s} {'speed-up':>9s} "
          f"{'ceiling':>8s}  label", flush=True)
    for name in names:
        for keep in (float(k) for k in a.keeps.split(",")):
            r = row(lm, store, name, keep, a)
            rows.append(r)
            print(f"{name:10s} {keep:5.2f} {r['ppl_ratio']:9.3f} {r['top1_agree']:6.3f} {r['sparsity']:8.3f} "
                  f"{r['speedup']:8.2f}x {r['ceiling']:7.2f}x  {r['label']}", flush=True)
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
