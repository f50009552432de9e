"""atlas build | neuron | search: corpus-scale statistics per neuron (DESIGN.md, "Neuron atlas")."""
from __future__ import annotations

import argparse
import math
import os
import sys

from ..atlas import DEFAULT_TOP_K, METHOD_EVERY, REPRODUCIBLE_MKL
from ..atlas.corpus import CHUNK_TOKENS

os.environ.setdefault("MKL_CBWR", REPRODUCIBLE_MKL)   # before this process's first matrix product

HELP = "neuron atlas: build one over a corpus, show a neuron, search neurons"


def _common(p) -> None:
    """--db / --model / --json after the subcommand too (SUPPRESS: absent keeps the parent's)."""
    p.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--model", default=argparse.SUPPRESS, help="model name or path (default: smollm2-135m)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object last")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="atlas_command", required=True, metavar="build|neuron|search")
    b = sub.add_parser("build", help="stream a corpus through the model once and write the atlas")
    b.add_argument("--corpus", required=True, help="a UTF-8 text file (documents split at blank lines), "
                                                   "or pydoc / docstrings for the built-in texts")
    b.add_argument("--out", required=True, help="atlas folder (a killed build resumes there)")
    b.add_argument("--max-tokens", type=int, default=None, help="take at most N corpus tokens")
    b.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                   help="top contexts kept per neuron (default %(default)s)")
    b.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS,
                   help="tokens per chunk: the unit of work, of resume and of a Ray task (default %(default)s)")
    b.add_argument("--ray", default=None, metavar="local|ADDRESS", help="run on Ray: a local cluster, or join one")
    b.add_argument("--workers", type=int, default=None, help="Ray workers (one model each; default 2 for local)")
    b.add_argument("--methods", default=None, help="comma-separated DA methods whose keep counts to keep "
                                                   "(default: every one that can run here; 'none' for none)")
    b.add_argument("--method-every", type=int, default=METHOD_EVERY,
                   help="count the methods' choices on every N-th piece of 512 tokens (default %(default)s: "
                        "they cost about a third of the forward on every token; 1 counts every token)")
    _common(b)
    n = sub.add_parser("neuron", help="one neuron's dashboard data")
    n.add_argument("dir", help="atlas folder, or an s3:// or http(s):// location")
    n.add_argument("layer", type=int)
    n.add_argument("neuron", type=int)
    n.add_argument("--partial", action="store_true", help="allow an incomplete atlas (answers from the done chunks)")
    _common(n)
    s = sub.add_parser("search", help="find neurons by top token, promoted token, frequency or method agreement")
    s.add_argument("dir", help="atlas folder, or an s3:// or http(s):// location")
    s.add_argument("--token", help="neurons whose top contexts are this token (trimmed, any case)")
    s.add_argument("--promotes", help="neurons that promote this token most (vocabulary effect)")
    s.add_argument("--min-frequency", type=float, default=None)
    s.add_argument("--max-frequency", type=float, default=None)
    s.add_argument("--method", help="rank by how far this method's keep rate departs from the oracle's")
    s.add_argument("--layer", type=int, default=None)
    s.add_argument("--sort", default=None, help="frequency, inertia, mean, max, disagreement, hits or promoted")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--partial", action="store_true", help="allow an incomplete atlas")
    _common(s)


def _build(args) -> dict:
    from .. import models
    from ..atlas import build

    build.check_settings(args.top_k, args.max_tokens, args.chunk_tokens, args.ray, args.workers, args.method_every)
    from ..atlas.corpus import read_corpus
    read_corpus(args.corpus)   # a missing, empty or binary corpus fails before the model loads
    lm = models.load(args.model, progress=lambda m: print(m, file=sys.stderr))
    models.setup_compute()
    from tqdm import tqdm
    bar = tqdm(total=0, desc="atlas", unit="tok", unit_scale=True, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        out = build.build(lm, args.corpus, args.out, top_k=args.top_k, max_tokens=args.max_tokens,
                          chunk_tokens=args.chunk_tokens, ray=args.ray, workers=args.workers,
                          methods=_methods(args.methods), method_every=args.method_every, progress=progress)
    finally:
        bar.close()
    out["text_summary"] = (f"atlas {out['atlas']}: {out['tokens']:,} tokens, {out['shards']} shards merged, "
                           f"{out['seconds']:.1f} s"
                           + (f" (resumed after {out['resumed_chunks']} chunks)" if out["resumed_chunks"] else "")
                           + "".join(f"\n  {m} skipped: {why}" for m, why in out["skipped_methods"].items()))
    return out


def _methods(spec: str | None) -> list[str] | None:
    if spec is None or spec == "all":
        return None
    return [] if spec == "none" else [m.strip() for m in spec.split(",") if m.strip()]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return "–" if v is None else str(v)


def _neuron(args) -> dict:
    from ..atlas.query import open_atlas

    d = open_atlas(args.dir, allow_partial=args.partial).neuron(args.layer, args.neuron)
    lines = [f"layer {d['layer']} neuron {d['neuron']}: frequency {_fmt(d['frequency'])}, inertia "
             f"{_fmt(d['inertia'])}, mean |z| {_fmt(d['mean_abs'])}, max |z| {_fmt(d['max_abs'])}"]
    lines += [f"  {t['value']:8.3f}  doc {t['doc']} pos {t['pos']}  {t['before']!r} [{t['token']!r}] {t['after']!r}"
              for t in d["top"]]
    lines.append(f"  kept at keep 0.5 (on {d['methods_tokens']:,} tokens): "
                 + ", ".join(f"{m} {_fmt(v)}" for m, v in d["methods"].items()))
    lines.append("  promotes: " + " ".join(repr(t["token"]) for t in d["promoted"]))
    lines.append("  suppresses: " + " ".join(repr(t["token"]) for t in d["suppressed"]))
    return {**_finite(d), "text_summary": "\n".join(lines)}


def _finite(d):
    """NaN (undefined: no pair for inertia, no token) as null in JSON."""
    if isinstance(d, float) and math.isnan(d):
        return None
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_finite(v) for v in d]
    return d


def _search(args) -> dict:
    from ..atlas.query import open_atlas

    rows = open_atlas(args.dir, allow_partial=args.partial).search(
        token=args.token, promotes=args.promotes, min_frequency=args.min_frequency,
        max_frequency=args.max_frequency, method=args.method, layer=args.layer, sort=args.sort, limit=args.limit)
    lines = ["  ".join(f"{k} {_fmt(v)}" for k, v in r.items()) for r in rows] or ["no neuron matches"]
    return {"neurons": rows, "text_summary": "\n".join(lines)}


def run(args) -> dict:
    return {"build": _build, "neuron": _neuron, "search": _search}[args.atlas_command](args)
