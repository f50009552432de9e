"""How often moe's similarity router (x . centroid) keeps the neurons moe-oracle keeps (the exact
expert choice from the gate), per layer, on a window of pydoc_data.topics; at keep k, a router
that picks experts at random agrees on a share k. Also the share of |z| mass each keeps.

    .venv/bin/python benchmarks/moe_router.py [--keep 0.5] [--start 5000] [--tokens 257] [--json]

Token 0 of the window (the attention sink) is left out.
"""
from __future__ import annotations

import argparse
import json

import torch

from moyu_core import corpora, hooks
from moyu_core.methods import make
from moyu_core.models import DEFAULT_MODEL, load
from moyu_core.preparation import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--start", type=int, default=5000)
    ap.add_argument("--tokens", type=int, default=257)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lm = load(args.model)
    ids = corpora.pydoc_ids(lm.tokenizer)[args.start:args.start + args.tokens]
    router, oracle = make("moe", keep=args.keep), make("moe-oracle", keep=args.keep)
    prepare(lm, router)
    prepare(lm, oracle)
    seen = {}

    def on(i, z, gate, x):
        seen[i] = (z.detach()[0].float(), gate.float(), x.float())

    with torch.inference_mode(), hooks.method_intervention(lm, on):
        lm.body(torch.tensor([ids]), use_cache=False)
    rows = []
    for i in sorted(seen):
        z, gate, x = seen[i]
        a, b = router.select(i, z, gate, lm, x)[1:], oracle.select(i, z, gate, lm, x)[1:]
        az = z[1:].abs()
        rows.append({"layer": i, "agreement": float((a & b).sum() / b.sum()),
                     "z_mass_router": float((az * a).sum() / az.sum()), "z_mass_oracle": float((az * b).sum() / az.sum())})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("agreement", "z_mass_router", "z_mass_oracle")}
    print(f"{lm.name}, keep {args.keep}, {len(ids) - 1} tokens: moe keeps {mean['agreement']:.3f} of moe-oracle's "
          f"neurons (random experts: {args.keep:.3f}); |z| mass kept: moe {mean['z_mass_router']:.3f}, "
          f"moe-oracle {mean['z_mass_oracle']:.3f}")
    print("per layer:", " ".join(f"{r['agreement']:.2f}" for r in rows))
    if args.json:
        print(json.dumps({"model": lm.name, "keep": args.keep, "tokens": len(ids) - 1, "mean": mean, "per_layer": rows}))


if __name__ == "__main__":
    main()
