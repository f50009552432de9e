"""The MLP decode kernels alone (issue 13): one token's MLP of every layer, on the real weights,
each kernel against the dense one, alternating, the median over passes.

    .venv/bin/python benchmarks/mlp_kernels.py [--threads 1] [--passes 15] [--json]

A pass calls one kernel for all layers (so the weights come from memory, not cache); x is a
seeded random vector per layer and each threshold is set at the median of that x's scores, so
every sparse kernel keeps half its neurons (or input channels). "bytes" is the share of the dense
kernel's weight bytes the kernel reads: a kernel at the memory's streaming rate would run at
that share of dense's time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from moyu_core import kernels
from moyu_core.decode import activation
from moyu_core.models import DEFAULT_MODEL, load, setup_compute


def cases(lm) -> dict[str, tuple[float, list]]:
    ops, L, D, d = kernels.ops(), lm.n_layers, lm.d_ff, lm.d_model
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(d, generator=g) for _ in range(L)]
    kind = activation(lm)
    if kind is None or lm.mlp_weights(0).gate is None:
        raise SystemExit(f"{lm.name}: these kernels need a gated MLP with an activation they have")
    st = [kernels.stream_layout(lm, i) for i in range(L)]
    gl = [kernels.gate_layout(lm, i) for i in range(L)]
    rc = [kernels.records(lm, i) for i in range(L)]
    tl = [kernels.teal_layout(lm, i) for i in range(L)]
    none = torch.empty(0)
    z_t, g_t, x_t = [], [], []
    for i in range(L):
        w = lm.mlp_weights(i)
        gate = lm.parts(i).act(w.gate.float() @ xs[i])
        z_t.append(float((gate * (w.up.float() @ xs[i])).abs().median()))
        g_t.append(float(gate.abs().median()))
        x_t.append(float(xs[i].abs().median()))
    r = max(1, round(0.05 * 3 * D * d / (d + D)))   # a router of about 5% of the MLP
    router = [kernels.router_blocks(torch.randn(r, d, generator=g), torch.randn(D, r, generator=g)) for _ in range(L)]
    return {
        "dense": (1.0, [lambda i=i: ops.mlp_dense(st[i][0], st[i][1], xs[i], kind) for i in range(L)]),
        "z threshold (tda)": (5 / 6, [lambda i=i: ops.mlp_z_threshold(st[i][0], st[i][1], xs[i], kind, z_t[i], none)
                                      for i in range(L)]),
        "gate threshold (cats)": (2 / 3, [lambda i=i: ops.mlp_gate_threshold(gl[i][0], gl[i][1], xs[i], kind, g_t[i])
                                          for i in range(L)]),
        "router top-k (dejavu)": (0.5, [lambda i=i: ops.mlp_router_topk(rc[i], xs[i], kind, router[i], D // 2)
                                        for i in range(L)]),
        "input channels (teal)": (0.5, [lambda i=i: ops.teal_mlp(tl[i], st[i][1], xs[i], kind, x_t[i], x_t[i], z_t[i])
                                        for i in range(L)]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lm = load(args.model)
    setup_compute(args.threads)
    all_cases = cases(lm)
    for _, fs in all_cases.values():   # build the layouts, warm up
        for f in fs:
            f()
    times = {k: [] for k in all_cases}
    for _ in range(args.passes):
        for k, (_, fs) in all_cases.items():
            t0 = time.perf_counter()
            for f in fs:
                f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    dense = statistics.median(times["dense"])
    rows = [{"kernel": k, "bytes": share, "ms_median": statistics.median(v), "dense_over_this": dense / statistics.median(v),
             "at_streaming_rate": 1 / share} for k, (share, _), v in
            ((k, all_cases[k], times[k]) for k in all_cases)]
    print(f"{'kernel':24s} {'ms':>7s} {'dense/this':>10s} {'if streamed':>11s}  ({args.passes} passes, {args.threads} thread(s))")
    for r in rows:
        print(f"{r['kernel']:24s} {r['ms_median']:7.2f} {r['dense_over_this']:10.2f} {r['at_streaming_rate']:11.2f}")
    if args.json:
        print(json.dumps({"model": lm.name, "threads": args.threads, "passes": args.passes, "rows": rows}))


if __name__ == "__main__":
    main()
