"""Capture benchmark (issue 2): capture-and-store time over plain forward time, stored bytes per
activation value, and the time to read one layer back.

    .venv/bin/python benchmarks/capture.py --json

Ratios are measured in one process, plain forward, capture+store and the forward without the LM
head alternating, the median of the per-pair ratios; each capture is a new run (a different
prompt) so nothing is a cache hit. The goal's ratio is over the model's own forward (logits
included); capture runs the decoder body only, so the ratio over the body's forward is reported
too: it is what the hooks and the store cost on top of the same computation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from moyu_core import models, runs
from moyu_core.store import Store


def corpus_prompts(lm, n_tokens: int, count: int) -> list[str]:
    """`count` different prompts of about `n_tokens` tokens from pydoc_data.topics."""
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    ids = lm.encode(text[: n_tokens * 8 * count], max_tokens=10**7)
    return [lm.tokenizer.decode(ids[i * n_tokens:(i + 1) * n_tokens]) for i in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    models.setup_compute()
    lm = models.load(args.model)
    texts = corpus_prompts(lm, args.tokens, args.pairs + 2)
    text = texts[0]
    ids = lm.encode(text)
    x = torch.tensor([ids])
    tmp = Path(tempfile.mkdtemp())
    store = Store(tmp / "bench.duckdb")

    def plain():  # the model's own forward, logits included
        with torch.inference_mode():
            lm.model(x, use_cache=False)

    def body():  # the same without the LM head, which capture skips (it reads no logits)
        with torch.inference_mode():
            lm.body(x, use_cache=False)

    def capture(i):
        r = runs.capture_run(lm, store, texts[i], dtype=args.dtype)
        assert not r.cached
        store.close()  # counted: the file checkpointed and released, no work left for later
        return r

    plain()
    body()
    capture(-1)  # warm up every path
    ratios, body_ratios, plain_s, body_s, cap_s = [], [], [], [], []
    for i in range(args.pairs):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        r = capture(i)
        t2 = time.perf_counter()
        body()
        t3 = time.perf_counter()
        plain_s.append(t1 - t0)
        cap_s.append(t2 - t1)
        body_s.append(t3 - t2)
        ratios.append((t2 - t1) / (t1 - t0))
        body_ratios.append((t2 - t1) / (t3 - t2))

    # bytes per value: file growth of one capture over an empty database
    empty = Store(tmp / "empty.duckdb")
    empty.close()
    one = Store(tmp / "one.duckdb")
    runs.capture_run(lm, one, text, dtype=args.dtype)
    one.close()
    time.sleep(1.0)  # let the idle connection close and checkpoint
    values = lm.n_layers * len(ids) * lm.d_ff
    bytes_per_value = ((tmp / "one.duckdb").stat().st_size - (tmp / "empty.duckdb").stat().st_size) / values

    read_ms = []
    for k in range(max(10, args.pairs)):
        t0 = time.perf_counter()
        z = store.activations(r.run_id, k % lm.n_layers)
        read_ms.append((time.perf_counter() - t0) * 1000)
    out = {
        "model": args.model, "tokens": len(ids), "dtype": args.dtype, "pairs": args.pairs,
        "capture_over_forward_median": round(statistics.median(ratios), 3),
        "ratios": [round(v, 3) for v in ratios],
        "forward_s_median": round(statistics.median(plain_s), 3),
        "capture_over_body_forward_median": round(statistics.median(body_ratios), 3),
        "body_forward_s_median": round(statistics.median(body_s), 3),
        "capture_store_s_median": round(statistics.median(cap_s), 3),
        "bytes_per_value": round(bytes_per_value, 3),
        "read_layer_ms_median": round(statistics.median(read_ms), 2),
        "read_shape": list(z.shape),
        "goals": {"capture_over_forward": 1.10, "bytes_per_value_int8": 1.05, "read_layer_ms": 15},
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>28}: {v}")


if __name__ == "__main__":
    main()
