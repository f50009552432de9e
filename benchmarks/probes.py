"""Probes behind the closing notes' explanations (not goals): where the atlas' method counts and
teal's decode spend their time, and what a garbage collection costs the app server.

    .venv/bin/python benchmarks/probes.py topk         a 512x1536 top-k mask: row_stats.cpp's radix select
                                                       against torch.topk (topk_mask's fallback); the oracle
                                                       mask of a 1024-token layer (analysis.top_mask)
                                                       against numpy's argpartition
    .venv/bin/python benchmarks/probes.py atlas-pass   the atlas' statistics on a 512-token piece (ms per layer)
    .venv/bin/python benchmarks/probes.py selects      each method's `select` on one 512-token piece (ms per layer)
    .venv/bin/python benchmarks/probes.py teal-decode  teal_mlp against mlp_dense per layer call inside a real
                                                       decode (cProfile), with teal's kept share of its inputs
    .venv/bin/python benchmarks/probes.py decode-parts where a dense decode token's time goes (cProfile, 48
                                                       tokens), with the attention half in torch ops and fused
    .venv/bin/python benchmarks/probes.py linear-t     input-channel products (linear_t) against the dense gemv,
                                                       30 layers of each attention/MLP shape, half and all kept
    .venv/bin/python benchmarks/probes.py gc           a full garbage collection in a process holding the app's
                                                       modules and the model, before and after gc.freeze
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import numpy as np
import torch

from moyu_core import analysis, corpora, hooks, kernels, models
from moyu_core.atlas import collect
from moyu_core.decode import generate
from moyu_core.keep import keep_count
from moyu_core.methods import make
from moyu_core.preparation import prepare

PROMPT = "Python's standard library reference describes the built-in types, the exceptions and"


def _median_ms(f, n: int = 15) -> float:
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def topk(lm) -> None:
    z = torch.randn(512, lm.d_ff, generator=torch.Generator().manual_seed(0))
    for keep in (0.1, 0.5):
        k = keep_count(lm.d_ff, keep)
        radix = _median_ms(lambda: kernels.row_ops().topk_mask_rows(z, k, True))
        fallback = _median_ms(lambda: torch.zeros_like(z, dtype=torch.bool).scatter_(
            -1, z.abs().topk(k, dim=-1, sorted=False).indices, True))
        print(f"keep {keep}: radix select {radix:.2f} ms, torch.topk {fallback:.2f} ms")
    z = np.random.default_rng(0).standard_normal((1024, lm.d_ff)).astype(np.float32)   # a 1024-token layer
    k = keep_count(lm.d_ff, 0.5)
    print(f"analysis.top_mask, 1024 tokens, keep 0.5: {_median_ms(lambda: analysis.top_mask(z, 0.5)):.2f} ms; "
          f"numpy argpartition (its fallback, and what it did before) "
          f"{_median_ms(lambda: analysis.top_mask_numpy(z, k)):.2f} ms")


def atlas_pass(lm) -> None:
    """The atlas' statistics on every layer of a 512-token piece, as `collect._Aggregates.add`
    runs them on a chunk's second piece (its top-K filled by the first): each layer's top-10%
    mask, then the one pass of `atlas_accumulate`; ms per layer, the median of 15 passes."""
    agg = collect._Aggregates(lm, [], 20)
    k10 = keep_count(lm.d_ff, collect.TOP_FRACTION)
    ops, L = agg.ops, lm.n_layers

    def zs(piece: int) -> list[torch.Tensor]:
        out = []
        with torch.inference_mode(), models.fused_attention(lm), hooks.method_intervention(
                lm, lambda i, z, g, x: out.append(z[0].float().contiguous().clone())):
            w = 512 - len(lm.bos_ids)
            lm.body(torch.tensor([lm.bos_ids + corpora.pydoc_ids(lm.tokenizer)[piece * w:(piece + 1) * w]]),
                    use_cache=False)
        return out

    def accumulate(z: list[torch.Tensor], m10: list[torch.Tensor]) -> None:
        for i in range(L):
            ops.atlas_accumulate(z[i], m10[i], agg.counts[i], agg.sum_abs[i], agg.max_abs[i], agg.hist[i],
                                 *collect._HIST_TABLE, agg.top_v[i], agg.top_j[i], 0)

    def masks(z: list[torch.Tensor]) -> list[torch.Tensor]:
        return [ops.topk_mask_rows(zi, k10, True) for zi in z]

    first = zs(0)
    accumulate(first, masks(first))
    z = zs(1)
    m10 = masks(z)
    print(f"per layer ({L} layers, {len(z[0])} tokens): top-10% mask {_median_ms(lambda: masks(z)) / L:.2f} ms, "
          f"atlas_accumulate {_median_ms(lambda: accumulate(z, m10)) / L:.2f} ms")


def selects(lm, layer: int = 5) -> None:
    """Each ready method's select on layer `layer` of 512 pydoc tokens, as the atlas calls it."""
    ids = (lm.bos_ids + corpora.pydoc_ids(lm.tokenizer))[:512]
    seen = {}

    def grab(i, z, g, x):
        if i == layer:
            seen.update(z=z[0].float().contiguous(), g=g, x=x)

    with torch.inference_mode(), models.fused_attention(lm), hooks.method_intervention(lm, grab):
        lm.body(torch.tensor([ids]), use_cache=False)
    methods, skipped = collect.ready_methods(lm)
    with torch.inference_mode():
        for m in methods:
            ms = _median_ms(lambda: m.select(layer, seen["z"], seen["g"], lm, seen["x"]), 10)
            print(f"{m.name:12s} {ms:6.2f} ms")
    for name, why in skipped.items():
        print(f"{name:12s} skipped: {why}")


def teal_decode(lm, tokens: int = 48) -> None:
    teal, dense = prepare(lm, make("teal", keep=0.5)), make("dense")
    ops, shares = kernels.ops(), []
    run = ops.teal_mlp

    def counted(gut, dt, x, kind, tg, tu, td):
        shares.append(float((x.abs() >= tg).float().mean()))
        return run(gut, dt, x, kind, tg, tu, td)

    ops.teal_mlp = counted
    try:
        for m in (dense, teal):
            generate(lm, PROMPT, m, 8)          # warm: layouts built, kernels loaded
        for m, fn in ((dense, "mlp_dense"), (teal, "teal_mlp")):
            prof = cProfile.Profile()
            prof.runcall(generate, lm, PROMPT, m, tokens)
            st = pstats.Stats(prof).stats
            calls, total = next((v[1], v[2]) for k, v in st.items() if k[2].endswith(f".{fn}>"))
            print(f"{m.name:6s} {fn}: {calls} calls, {1e3 * total / calls:.3f} ms per call")
    finally:
        ops.teal_mlp = run
    print(f"teal's kept share of the MLP input: {statistics.mean(shares):.3f} over {len(shares)} calls")


def decode_parts(lm, tokens: int = 48) -> None:
    from moyu_core import llama_step

    fused = llama_step.LlamaDecoder._fused_layers
    dense = make("dense")
    generate(lm, PROMPT, dense, 8)                       # warm: layouts built, kernels loaded
    for step in ("torch", "fused", "torch", "fused"):
        llama_step.LlamaDecoder._fused_layers = fused if step == "fused" else (lambda self: None)
        try:
            prof = cProfile.Profile()
            r = prof.runcall(generate, lm, PROMPT, dense, tokens)
        finally:
            llama_step.LlamaDecoder._fused_layers = fused
        parts = {"mlp": 0.0, "products": 0.0}
        for (_, _, name), v in pstats.Stats(prof).stats.items():
            if "moyu_sparse_decode." in name:
                parts["mlp" if ".mlp_" in name else "products"] += v[2]
        per = 1e3 / (tokens - 1)
        total = 1e3 / r["decode_tokens_per_s"]
        print(f"{step:5s} step, ms a token under cProfile: {total:.1f} decode; {parts['mlp'] * per:.1f} MLP "
              f"kernels, {parts['products'] * per:.1f} other kernels (q/k/v, o, LM head, fused attention), "
              f"{total - (parts['mlp'] + parts['products']) * per:.1f} the rest")


def linear_t(lm) -> None:
    ops, L, d = kernels.ops(), lm.n_layers, lm.d_model
    g = torch.Generator().manual_seed(0)
    for out, bounds in ((960, [0, 576, 768, 960]), (576, [0, 576]), (3072, [0, 1536, 3072])):
        ws = [torch.randn(out, d, generator=g) for _ in range(L)]
        wt, wr = [kernels.input_major(w) for w in ws], [kernels.hugepage(w) for w in ws]
        xs = [torch.randn(d, generator=g) for _ in range(L)]
        half = [float(x.abs().median()) for x in xs]
        S = len(bounds) - 1
        row = {"gemv": _median_ms(lambda: [ops.gemv(wr[i], xs[i]) for i in range(L)]),
               "linear_t half": _median_ms(lambda: [ops.linear_t(wt[i], xs[i], bounds, [half[i]] * S) for i in range(L)]),
               "linear_t all": _median_ms(lambda: [ops.linear_t(wt[i], xs[i], bounds, [0.0] * S) for i in range(L)])}
        print(f"{out}x{d}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()))


def gc_pass(lm) -> None:
    """What Streamlit's collection after every script run costs the app (ui_store freezes the model)."""
    import gc

    import pandas  # noqa: F401 - the app's modules, as the server holds them
    import plotly.graph_objects  # noqa: F401
    import streamlit  # noqa: F401

    def full():
        t = time.perf_counter()
        gc.collect(2)
        return (time.perf_counter() - t) * 1000

    before = statistics.median(full() for _ in range(5))
    gc.freeze()
    after = statistics.median(full() for _ in range(5))
    print(f"gc.collect(2), median of 5: {before:.1f} ms; after gc.freeze: {after:.1f} ms "
          f"({gc.get_freeze_count()} objects frozen)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", choices=["topk", "atlas-pass", "selects", "teal-decode", "decode-parts",
                                      "linear-t", "gc"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    models.setup_compute(args.threads)
    lm = models.load()
    probes = {"topk": topk, "atlas-pass": atlas_pass, "selects": selects, "teal-decode": teal_decode,
              "decode-parts": decode_parts, "linear-t": linear_t, "gc": gc_pass}
    probes[args.probe](lm)


if __name__ == "__main__":
    main()
