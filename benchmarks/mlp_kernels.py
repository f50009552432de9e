"""The MLP decode kernels alone (issue 13): one token's MLP of every layer, on the real weights,
each kernel against the dense one, alternating, the median over passes.

    .venv/bin/python benchmarks/mlp_kernels.py [--threads 1] [--passes 15] [--json]
    .venv/bin/python benchmarks/mlp_kernels.py --gather [--threads 1]   what skipping half the rows saves

A pass calls one kernel for all layers (so the weights come from memory, not cache); x is a
seeded random vector per layer and each threshold is set at the median of that x's scores, so
every sparse kernel keeps half its neurons (or input channels). "bytes" is the share of the dense
kernel's weight bytes the kernel reads: a kernel at the memory's streaming rate would run at
that share of dense's time.

--gather measures what the speed ceilings assume, that reading half of a matrix's rows takes half
the time of reading all of them: one product of the kernels (`linear_t`, TEAL's input-channel
skipping, on 30 random matrices of about 10 MB each, more than the caches hold) with a threshold
that keeps half the rows, at positions as random as a method's, against the same product keeping
every row, alternating. Rows of the lengths the kernels gather: 576 floats (rows of W_down^T:
tda, cett, oracle; teal's o and down), 960 (teal's q, k, v), 1152 (cats' up and down), 1728
(the routers' records) and 3072 (teal's gate and up). "share" is the time at half over the time
at all (0.5 where skipping is free); "rate" is the bytes per second at half over those at all;
"all GB/s" the rate at all rows, and "dot GB/s" the rate of a product that reads the same rows
by dot products (`gemv`, as the dense kernels stream gate and up) instead of adding them up.
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


def gather(passes: int, mb: float = 10.0, layers: int = 30) -> list[dict]:
    """Per row length: the median over passes of time(half the rows) / time(every row)."""
    ops, g, rows = kernels.ops(), torch.Generator().manual_seed(0), []
    for span in (576, 960, 1152, 1728, 3072):
        n = int(mb * 2**20 / 4 / span)
        wts = [kernels.input_major(torch.randn(span, n, generator=g)) for _ in range(layers)]
        xs = [torch.randn(n, generator=g) for _ in range(layers)]
        half = [float(x.abs().median()) for x in xs]
        xd = torch.randn(span, generator=g)
        calls = {"half": lambda i: ops.linear_t(wts[i], xs[i], [0, span], [half[i]]),
                 "all": lambda i: ops.linear_t(wts[i], xs[i], [0, span], [0.0]),
                 "dot": lambda i: ops.gemv(wts[i], xd)}
        for f in calls.values():   # warm up
            for i in range(layers):
                f(i)
        shares, t_all, t_dot, order = [], [], [], list(calls)
        for p in range(passes):
            t = {}
            for k in order[p % 3:] + order[:p % 3]:
                t0 = time.perf_counter()
                for i in range(layers):
                    calls[k](i)
                t[k] = time.perf_counter() - t0
            shares.append(t["half"] / t["all"])
            t_all.append(t["all"])
            t_dot.append(t["dot"])
        share, gb = statistics.median(shares), layers * n * span * 4 / 1e9
        rows.append({"row_floats": span, "row_bytes": 4 * span, "share": share, "rate": 0.5 / share,
                     "all_gb_per_s": gb / statistics.median(t_all), "dot_gb_per_s": gb / statistics.median(t_dot),
                     "passes": passes})
        del wts
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--gather", action="store_true", help="half the rows against all (see above)")
    args = ap.parse_args()
    if args.gather:
        setup_compute(args.threads)
        rows = gather(args.passes)
        print(f"{'row floats':>10s} {'row bytes':>9s} {'share':>6s} {'rate':>5s} {'all GB/s':>8s} {'dot GB/s':>8s}  "
              f"(half the rows / all; {args.passes} passes, {args.threads} thread(s))")
        for r in rows:
            print(f"{r['row_floats']:10d} {r['row_bytes']:9d} {r['share']:6.2f} {r['rate']:5.2f} "
                  f"{r['all_gb_per_s']:8.1f} {r['dot_gb_per_s']:8.1f}")
        if args.json:
            print(json.dumps({"threads": args.threads, "rows": rows}))
        return
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
