"""Decode speed: dense and method alternating in one process, the median of the per-pair ratios of
the median decode step (`decode.compare_speed`: an executed method on a Llama-architecture model
decodes in turn with dense, step for step, `decode.in_turn`), at 1 and 2 threads, beside
each method's ceiling 1 / (1 - s (1 - k)) (s: the bytes its kind can skip, `decode.ceiling`) and
the fraction of that ceiling it reaches.

    python benchmarks/decode_speed.py                                  every method, keep 0.5, 1 and 2 threads
    python benchmarks/decode_speed.py --method teal --keep 0.5 --threads 2 --json   one row
    python benchmarks/decode_speed.py --keeps 0.5,0.25 --pairs 7       more keeps, more pairs
    python benchmarks/decode_speed.py --vs-hf --json      lean dense loop vs transformers' generate

Columns: speed-up (median over pairs of dense's median step / the method's), its interval (the
median's distribution-free interval from order statistics at >= 95%, `stats.median_ci`; with
fewer than 6 pairs, the full range at its lower coverage), tok/s (median over
pairs of the decode tokens/s ratio: whole sides, so stalls of the machine weigh in), cpu (median
ratio of decode CPU time: on one thread the work itself, a check that holds on a busy machine),
ceiling, x/ceil = speed-up / ceiling, gain = (speed-up - 1) / (ceiling - 1), the share of the
possible gain reached, and for the methods with a goal (issue 13, at keep 0.5) the goal and a
verdict: met (interval above it), missed (below) or open (the interval holds it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from moyu_core.decode import ceiling, compare_speed, generate
from moyu_core.experiments.stats import median_ci
from moyu_core.methods import make
from moyu_core.models import fused_attention, load, setup_compute

PROMPT = "Python's standard library reference describes the built-in types, the exceptions and"
GOALS = {"cats": 1.15, "dejavu": 1.25, "teal": 1.40, "tda": 1.05}   # speed-up goals at keep 0.5 (issue 13)
METHODS = ("tda", "cett", "oracle", "cats", "moe-oracle", "dejavu", "moe", "teal", "griffin", "static")


def bench(lm, name: str, keep: float, pairs: int, tokens: int, executed: bool = True, threads: int | None = None) -> dict:
    """Alternate dense and method `pairs` times (`decode.compare_speed`): the median of the per-pair ratios."""
    if threads:
        setup_compute(threads)
    r = compare_speed(lm, PROMPT, make(name, keep=keep), tokens, pairs, executed)
    c = ceiling(lm, name, keep)
    s, ci = r["speedup_median"], median_ci(r["ratios"])
    goal = GOALS.get(name) if keep == 0.5 else None
    verdict = None if goal is None else "met" if ci["lo"] >= goal else "missed" if ci["hi"] < goal else "open"
    return {"method": name, "keep": keep, "threads": torch.get_num_threads(), "speedup_median": s,
            "speedup_ci": [ci["lo"], ci["hi"]], "ci_level": ci["level"], "goal": goal, "verdict": verdict,
            "throughput_median": statistics.median(r["throughput_ratios"]),
            "cpu_ratio_median": r["cpu_ratio_median"], "ceiling": c, "of_ceiling": s / c,
            "gain_of_ceiling": (s - 1) / (c - 1) if c > 1 else float("nan"), "pairs": r["pairs"],
            "tokens": tokens, "label": r["label"], "ratios": r["ratios"], "throughput_ratios": r["throughput_ratios"],
            "slice_ms": r["method"]["slice_ms"], "prefill_ms": r["method"]["prefill_ms"],
            "dense_tokens_per_s": r["dense"]["decode_tokens_per_s"]}


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
    p.add_argument("--keep", type=float, default=None, help="one keep (default: --keeps)")
    p.add_argument("--keeps", default="0.5")
    p.add_argument("--threads", default="1,2")
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
    keeps = [a.keep] if a.keep is not None else [float(k) for k in a.keeps.split(",")]
    names = [a.method] if a.method else list(METHODS)
    threads = [int(t) for t in a.threads.split(",")]
    print(f"{'method':10s} {'keep':>5s} {'thr':>3s} {'speed-up':>8s} {'interval':>13s} {'tok/s':>6s} {'cpu':>6s} "
          f"{'ceiling':>7s} {'x/ceil':>6s} {'gain':>5s} {'slice ms':>8s} {'goal':>5s} {'verdict':7s} "
          f"label ({a.pairs} pairs, {a.tokens} tokens)", flush=True)
    rows = []
    for t in threads:
        for name in names:
            for keep in keeps:
                r = bench(lm, name, keep, a.pairs, a.tokens, not a.simulated, t)
                rows.append(r)
                lo, hi = r["speedup_ci"]
                goal = f"{r['goal']:4.2f}x" if r["goal"] else "-"
                print(f"{name:10s} {keep:5.2f} {t:3d} {r['speedup_median']:7.2f}x  [{lo:4.2f}, {hi:4.2f}] "
                      f"{r['throughput_median']:5.2f}x {r['cpu_ratio_median']:5.2f}x {r['ceiling']:6.2f}x "
                      f"{r['of_ceiling']:6.2f} {r['gain_of_ceiling']:5.2f} {r['slice_ms']:8.1f} {goal:>5s} "
                      f"{r['verdict'] or '-':7s} {r['label']}", flush=True)
    if a.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))


if __name__ == "__main__":
    main()
