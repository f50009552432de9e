"""Neuron atlas benchmark (issue 15): build throughput against the plain forward, Ray scaling,
the dashboard query over a 1M-token atlas, size on disk.

    .venv/bin/python benchmarks/atlas.py --json                       # the full run (quiet machine)
    .venv/bin/python benchmarks/atlas.py --pairs 2 --ray-chunks 2 --query-tokens 20000     # a quick look

1. Throughput: the same 512-token pieces of pydoc_data.topics through the plain forward (decoder
   body, SDPA, no hook: what the build runs) and through `collect.compute_chunk`, alternating; the
   median of per-pair tokens/s ratios (goal >= 0.85) for: "build", what `atlas build` runs by
   default (every method, its choices counted on every `METHOD_EVERY`-th piece); "methods every
   piece" (`--method-every 1`); "no method" (`--methods none`). The pieces form one chunk, as a
   build groups them (a chunk's per-neuron top-K fills on its first piece, then rarely changes; a
   build's default chunk holds 32 pieces, this one --pieces).
2. Ray: one-piece chunks (every method on every piece, so the chunks weigh the same) in-process
   with one torch thread, then on a local Ray cluster of 2 workers (one thread each); scaling
   efficiency per core = (t_1 / t_2) / 2 over the chunk work (goal >= 0.8), with the cluster
   start and model loads reported apart.
3. Query: an atlas of `--query-tokens` tokens (default 1M) whose tables are SYNTHESISED with the
   real schema (random values, the model's real shapes: a real 1M-token build takes about an hour
   on 2 cores); the median time of `Atlas.neuron` over random neurons (goal <= 200 ms).
4. Size on disk: the synthetic atlas's files, and a real small build's per-token and fixed
   parts extrapolated to 1M tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from moyu_core import corpora, models
from moyu_core.atlas import METHOD_EVERY, build, collect, corpus, shards
from moyu_core.atlas.query import open_atlas


def pieces(lm, n: int) -> list[corpus.Chunk]:
    """n pieces of 512 tokens of pydoc_data.topics, one chunk each."""
    ids = corpora.pydoc_ids(lm.tokenizer)
    bos = tuple(lm.bos_ids)
    w = corpus.PIECE_TOKENS - len(bos)
    return [corpus.Chunk(i, (corpus.Piece(0, i * w, bos + tuple(ids[i * w:(i + 1) * w]), len(bos), i),))
            for i in range(n)]


def one_chunk(lm, n: int) -> list[corpus.Chunk]:
    """The same n pieces as one chunk, as a build groups them (`corpus.CHUNK_TOKENS`: 32 pieces)."""
    return [corpus.Chunk(0, tuple(c.pieces[0] for c in pieces(lm, n)))]


def throughput(lm, chunks, pairs: int) -> dict:
    methods, skipped = collect.ready_methods(lm)

    @torch.inference_mode()
    def plain():
        with models.fused_attention(lm):
            for p in (p for c in chunks for p in c.pieces):
                lm.body(torch.tensor([p.ids]), use_cache=False)

    def build_with(ms, every):
        for c in chunks:
            collect.compute_chunk(lm, ms, c, 20, every)

    def timed(f):
        t = time.perf_counter()
        f()
        return time.perf_counter() - t

    plain()
    build_with(methods, 1)   # warm-up
    tokens = sum(c.tokens for c in chunks)
    sides = {"build": (methods, METHOD_EVERY), "methods every piece": (methods, 1), "no method": ([], 1)}
    rows = {name: [] for name in sides}
    for _ in range(pairs):
        for name, (ms, every) in sides.items():
            p = timed(plain)
            b = timed(lambda: build_with(ms, every))
            rows[name].append(p / b)
    n_pieces = sum(len(c.pieces) for c in chunks)
    return {"tokens_per_pair": tokens, "pieces": n_pieces, "pairs": pairs, "method_every": METHOD_EVERY,
            "sampled_pieces": sum(collect.counts_methods(p, METHOD_EVERY) for c in chunks for p in c.pieces),
            "methods": [m.name for m in methods], "skipped": list(skipped),
            **{f"ratio_{k.replace(' ', '_')}": round(statistics.median(v), 3) for k, v in rows.items()},
            **{f"ratio_{k.replace(' ', '_')}_range": [round(min(v), 3), round(max(v), 3)] for k, v in rows.items()},
            "plain_tokens_per_s": round(tokens / timed(plain), 1)}


def ray_scaling(lm, chunks) -> dict:
    from moyu_core.atlas import ray_runner
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        return {"skipped": "ray is not installed (pip install -e '.[ray]')"}
    methods, _ = collect.ready_methods(lm)
    names = [m.name for m in methods]
    models.setup_compute(1)
    t = time.perf_counter()
    for c in chunks:
        collect.compute_chunk(lm, methods, c, 20, 1)
    t1 = time.perf_counter() - t
    models.setup_compute()
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": ray_runner.worker_env()})
    try:
        start = time.perf_counter() - t
        actor = ray.remote(num_cpus=1)(ray_runner.ChunkWorker)
        t = time.perf_counter()
        workers = [actor.remote(lm.name, str(lm.fingerprint), names, 20, 1) for _ in range(2)]
        ray.get([w.run.remote(chunks[0]) for w in workers])   # model loaded, paths warm
        warm = time.perf_counter() - t
        t = time.perf_counter()
        list(ActorPool(workers).map_unordered(lambda a, c: a.run.remote(c), chunks))
        t2 = time.perf_counter() - t
    finally:
        ray.shutdown()
    return {"chunks": len(chunks), "in_process_1_thread_s": round(t1, 2), "ray_2_workers_s": round(t2, 2),
            "efficiency_per_core": round(t1 / t2 / 2, 3), "ray_init_s": round(start, 2),
            "workers_ready_s": round(warm, 2)}


def synthetic_atlas(lm, folder: Path, n_tokens: int, top_k: int = 20) -> None:
    """A complete atlas of n_tokens tokens with the real schema and shapes, random contents."""
    rng = np.random.default_rng(0)
    L, D = lm.n_layers, lm.d_ff
    rows = L * D
    layer = np.repeat(np.arange(L, dtype=np.int16), D)
    neuron = np.tile(np.arange(D, dtype=np.int32), L)
    doc_len = 300
    docs = np.arange(n_tokens, dtype=np.int32) // doc_len
    pos = np.arange(n_tokens, dtype=np.int32) % doc_len
    token_ids = rng.integers(0, len(lm.tokenizer), n_tokens).astype(np.int32)
    vocab_table = collect.token_pieces(lm, np.unique(token_ids))
    piece_of = dict(zip(np.unique(token_ids).tolist(), vocab_table))
    n = np.full(rows, n_tokens - n_tokens // doc_len, np.int64)
    hist = rng.multinomial(int(n[0]), np.ones(shards.N_BINS) / shards.N_BINS, size=rows).astype(np.int64)
    methods = collect.method_names()
    pick = rng.integers(0, n_tokens, (rows, top_k))
    tables = {
        "stats": pa.table({"layer": layer, "neuron": neuron, "n": n, "top10": rng.integers(0, n[0] // 5, rows),
                           "stay": rng.integers(0, n[0] // 10, rows), "prev": n // 5, "sum_abs": rng.random(rows) * n,
                           "max_abs": rng.random(rows).astype(np.float32),
                           "hist": pa.ListArray.from_arrays(np.arange(0, rows * shards.N_BINS + 1, shards.N_BINS,
                                                                      dtype=np.int32), hist.reshape(-1))}),
        "kept": pa.table({"layer": np.repeat(layer, len(methods)), "neuron": np.repeat(neuron, len(methods)),
                          "method": pa.array(methods * rows).dictionary_encode(),
                          "kept": rng.integers(0, n[0] // METHOD_EVERY, rows * len(methods)),
                          "n": np.full(rows * len(methods), n[0] // METHOD_EVERY, np.int64)}),
        "top": pa.table({"layer": np.repeat(layer, top_k), "neuron": np.repeat(neuron, top_k),
                         "value": -np.sort(-rng.random((rows, top_k)).astype(np.float32), axis=1).reshape(-1),
                         "doc": docs[pick].reshape(-1), "pos": pos[pick].reshape(-1),
                         "token_id": token_ids[pick].reshape(-1)}),
        "tokens": pa.table({"doc": docs, "pos": pos, "token_id": token_ids,
                            "piece": pa.array([piece_of[t] for t in token_ids.tolist()])}),
    }
    fp = str(lm.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    from moyu_core.atlas.vocab import cached_vocab_effect
    manifest = {"format": shards.FORMAT, "version": shards.VERSION, "model": lm.name, "fingerprint": fp,
                "n_layers": L, "d_ff": D, "d_model": lm.d_model,
                "settings": {"corpus": "synthetic", "top_k": top_k, "context": build.CONTEXT,
                             "hist_edges": shards.HIST_EDGES.tolist()},
                "plan": {"chunks": 1, "documents": int(docs[-1]) + 1, "tokens": n_tokens, "measured": int(n[0])},
                "methods": methods, "skipped_methods": {}, "chunks": {"0": {"tokens": n_tokens, "measured": int(n[0])}},
                "complete": True, "seconds": 0.0,
                "vocab": shards.write_shard(folder, "vocab.parquet", cached_vocab_effect(lm), fp, "vocab"),
                "final": {name: shards.write_shard(folder, f"{name}.parquet", t, fp, name)
                          for name, t in tables.items()}}
    shards.write_manifest(folder, manifest)


def query_time(lm, n_tokens: int, repeats: int) -> dict:
    folder = Path(tempfile.mkdtemp()) / "atlas"
    t = time.perf_counter()
    synthetic_atlas(lm, folder, n_tokens)
    made = time.perf_counter() - t
    atlas = open_atlas(folder)
    rng = np.random.default_rng(1)
    times = []
    atlas.neuron(0, 0)   # warm-up: imports, file cache
    for _ in range(repeats):
        layer, neuron = int(rng.integers(lm.n_layers)), int(rng.integers(lm.d_ff))
        t = time.perf_counter()
        d = atlas.neuron(layer, neuron)
        times.append(time.perf_counter() - t)
        assert len(d["top"]) == 20
    t = time.perf_counter()
    open_atlas(folder).neuron(3, 5)
    cold = time.perf_counter() - t
    sizes = {f.name: f.stat().st_size for f in folder.glob("*.parquet")}
    shutil.rmtree(folder.parent)
    return {"tokens": n_tokens, "synthesised": True, "synthesis_s": round(made, 1),
            "neuron_query_ms_median": round(1000 * statistics.median(times), 1),
            "neuron_query_ms_max": round(1000 * max(times), 1), "open_and_query_ms": round(1000 * cold, 1),
            "queries": repeats, "size_mb": round(sum(sizes.values()) / 2**20, 1),
            "files_mb": {k: round(v / 2**20, 2) for k, v in sizes.items()}}


def real_size(lm, tokens: int) -> dict:
    """A real build of `tokens` pydoc tokens: bytes of each final file, the tokens table's per-token
    bytes, extrapolated to 1M tokens (every other table has one row set per neuron)."""
    folder = Path(tempfile.mkdtemp()) / "atlas"
    r = build.build(lm, "pydoc", folder, max_tokens=tokens)
    sizes = {f.name: f.stat().st_size for f in folder.glob("*.parquet")}
    per_token = sizes["tokens.parquet"] / r["tokens"]
    fixed = sum(v for k, v in sizes.items() if k != "tokens.parquet")
    shutil.rmtree(folder.parent)
    return {"tokens": r["tokens"], "build_s": r["seconds"], "size_mb": round(sum(sizes.values()) / 2**20, 2),
            "tokens_table_bytes_per_token": round(per_token, 2),
            "estimate_1m_tokens_mb": round((fixed + per_token * 1_000_000) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--pieces", type=int, default=METHOD_EVERY,
                    help="512-token pieces per throughput pair (a multiple of the build's --method-every)")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--ray-chunks", type=int, default=8, help="512-token chunks for the Ray comparison (0: skip)")
    ap.add_argument("--query-tokens", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--size-tokens", type=int, default=4096, help="tokens of the real build whose size is measured")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.pieces % METHOD_EVERY:
        ap.error(f"--pieces must be a multiple of {METHOD_EVERY}, so the build samples its share of them")
    models.setup_compute()
    lm = models.load(args.model)
    out = {"model": lm.name, "threads": torch.get_num_threads()}
    out["throughput"] = throughput(lm, one_chunk(lm, args.pieces), args.pairs)
    if args.ray_chunks:
        out["ray"] = ray_scaling(lm, pieces(lm, args.ray_chunks))
    out["query"] = query_time(lm, args.query_tokens, args.queries)
    out["real_size"] = real_size(lm, args.size_tokens)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
