"""Build an atlas: check everything, plan the chunks, run them (in this process, or on Ray with
one model per worker), record each as it lands, then merge.

Nothing is written before every check has passed (corpus, settings, an existing folder's model
and settings, the methods): bad input leaves no partial atlas. A killed build leaves a manifest
that says how far it got; the same command resumes it, skipping the chunks it names.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from ..errors import MoyuError
from . import DEFAULT_TOP_K, METHOD_EVERY, collect, corpus, shards
from .vocab import VOCAB_TOP, cached_vocab_effect

CONTEXT = 8   # tokens of context shown on each side of a top activation


def check_settings(top_k: int, max_tokens: int | None, chunk_tokens: int, ray: str | None,
                   workers: int | None, method_every: int = METHOD_EVERY) -> None:
    """The build's numbers in range (cheap: before the model loads)."""
    lo, hi = collect.TOP_K_RANGE
    if not lo <= top_k <= hi:
        raise MoyuError(f"--top-k must be between {lo} and {hi}, got {top_k}")
    lo, hi = collect.METHOD_EVERY_RANGE
    if not lo <= method_every <= hi:
        raise MoyuError(f"--method-every must be between {lo} and {hi:,}, got {method_every}")
    lo, hi = corpus.MAX_TOKENS_RANGE
    if max_tokens is not None and not lo <= max_tokens <= hi:
        raise MoyuError(f"--max-tokens must be between {lo} and {hi:,}, got {max_tokens}")
    lo, hi = corpus.CHUNK_TOKENS_RANGE
    if not lo <= chunk_tokens <= hi:
        raise MoyuError(f"--chunk-tokens must be between {lo} and {hi:,}, got {chunk_tokens}")
    if workers is not None and not 1 <= workers <= 1024:
        raise MoyuError(f"--workers must be between 1 and 1024, got {workers}")
    if workers is not None and ray is None:
        raise MoyuError("--workers needs --ray (local or a cluster address)")


def _new_manifest(lm, settings: dict, chunks: list[corpus.Chunk], n_docs: int, methods: list[str],
                  skipped: dict[str, str]) -> dict:
    return {
        "format": shards.FORMAT, "version": shards.VERSION, "model": lm.name, "fingerprint": str(lm.fingerprint),
        "n_layers": lm.n_layers, "d_ff": lm.d_ff, "d_model": lm.d_model, "settings": settings,
        "plan": {"chunks": len(chunks), "documents": n_docs, "tokens": sum(c.tokens for c in chunks),
                 "measured": sum(c.measured for c in chunks), "digest": corpus.plan_digest(chunks)},
        "methods": methods, "skipped_methods": skipped, "vocab": None, "chunks": {}, "complete": False,
        "final": None, "seconds": 0.0, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _check_resumable(old: dict, new: dict, out: Path) -> None:
    """An existing folder is resumed only for the same model, settings and chunk plan."""
    hint = f"choose another --out or delete {out} to start over"
    if old["fingerprint"] != new["fingerprint"]:
        raise MoyuError(f"{out} holds an atlas of another model ({old['model']}, fingerprint "
                        f"{old['fingerprint'][:12]}); {hint}")
    if old["settings"] != new["settings"]:
        diff = sorted(k for k in set(old["settings"]) | set(new["settings"])
                      if old["settings"].get(k) != new["settings"].get(k))
        raise MoyuError(f"{out} holds an atlas built with other settings ({', '.join(diff)}); {hint}")
    if old["plan"] != new["plan"]:
        raise MoyuError(f"{out} holds an atlas of another corpus plan; {hint}")


def build(lm, corpus_spec: str, out: str | Path, top_k: int = DEFAULT_TOP_K, max_tokens: int | None = None,
          chunk_tokens: int = corpus.CHUNK_TOKENS, ray: str | None = None, workers: int | None = None,
          methods: list[str] | None = None, method_every: int = METHOD_EVERY,
          progress: Callable[[int, int], None] | None = None, on_chunk: Callable[[int], None] | None = None) -> dict:
    """Build (or resume) the atlas of `corpus_spec` in folder `out`. `ray`: None (in-process),
    "local" (start a local cluster of `workers` CPUs) or a cluster address. `methods`: the DA
    methods whose keep counts are kept (default: every registered one but dense, skipping those
    that cannot run here, e.g. dejavu without a router; [] for none), counted on every
    `method_every`-th piece (`collect.py`: why it samples). `progress(done,
    total)` is told text tokens done; `on_chunk(index)` runs after each chunk is recorded (tests
    use it to stop a build midway). Returns {"atlas", "tokens", "shards", "seconds", ...}."""
    t0 = time.perf_counter()
    check_settings(top_k, max_tokens, chunk_tokens, ray, workers, method_every)
    text, label = corpus.read_corpus(corpus_spec)
    docs = corpus.documents(text)
    if not docs:
        raise MoyuError(f"corpus {label} is empty")
    settings = {"corpus": label, "corpus_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "max_tokens": max_tokens, "top_k": top_k, "chunk_tokens": chunk_tokens,
                "piece_tokens": corpus.PIECE_TOKENS, "context": CONTEXT, "top_fraction": collect.TOP_FRACTION,
                "keep": collect.KEEP, "methods": "all" if methods is None else list(methods),
                "method_every": method_every,
                "hist_edges": shards.HIST_EDGES.tolist(), "vocab_top": VOCAB_TOP}
    chunks = corpus.plan(lm, docs, max_tokens, chunk_tokens)
    out = Path(out).expanduser()
    old = shards.read_manifest(out)
    if old is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MoyuError(f"{out} exists and is not an atlas folder; choose another --out")
    ready, skipped = collect.ready_methods(lm, old["methods"] if old else methods)
    manifest = _new_manifest(lm, settings, chunks, len(docs), [m.name for m in ready], skipped)
    if old is not None:
        _check_resumable(old, manifest, out)
        manifest = old
        for rec in shards.shard_records(old):
            shards.check_shard(out, rec, manifest["fingerprint"])
    done_before = len(manifest["chunks"])
    if not manifest["complete"]:
        vocab = None if manifest["vocab"] else cached_vocab_effect(lm)
        with ExitStack() as stack:
            if ray is not None:   # joined (or started) before anything is written
                from .ray_runner import ray_session
                workers = stack.enter_context(ray_session(ray, workers))
            stack.enter_context(shards.writing(out))
            if vocab is not None:
                manifest["vocab"] = shards.write_shard(out, "vocab.parquet", vocab, manifest["fingerprint"], "vocab")
            shards.write_manifest(out, manifest)
            _run(lm, out, manifest, [c for c in chunks if str(c.index) not in manifest["chunks"]], ready,
                 ray is not None, workers, progress, on_chunk)
    return {"atlas": str(out), "tokens": manifest["plan"]["tokens"], "shards": manifest["plan"]["chunks"],
            "seconds": round(time.perf_counter() - t0, 3), "complete": True, "resumed_chunks": done_before,
            "measured": manifest["plan"]["measured"], "documents": manifest["plan"]["documents"],
            "methods": manifest["methods"], "skipped_methods": manifest["skipped_methods"]}


def _run(lm, out: Path, manifest: dict, todo: list[corpus.Chunk], methods, on_ray: bool,
         workers: int | None, progress, on_chunk) -> None:
    """Run the chunks not yet done (here, or on the Ray session open), recording each in the
    manifest as it lands; then merge."""
    t0, seconds_before = time.perf_counter(), manifest["seconds"]
    top_k, every, total = (manifest["settings"]["top_k"], manifest["settings"]["method_every"],
                           manifest["plan"]["tokens"])
    done = total - sum(c.tokens for c in todo)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    def record(result: dict) -> None:
        i = result["index"]
        files = {t: shards.write_shard(out, shards.chunk_file(i, t), result[t], manifest["fingerprint"], t, i)
                 for t in shards.CHUNK_TABLES}
        manifest["chunks"][str(i)] = {"tokens": result["n_tokens"], "measured": result["n_measured"], "files": files}
        manifest["seconds"] = round(seconds_before + time.perf_counter() - t0, 3)
        shards.write_manifest(out, manifest)
        if on_chunk:
            on_chunk(i)

    advance(0)
    if not on_ray:
        for chunk in todo:
            record(collect.compute_chunk(lm, methods, chunk, top_k, every, progress=advance))
    else:
        from .ray_runner import run_on_ray

        def landed(result: dict) -> None:
            record(result)
            advance(result["n_tokens"])
        run_on_ray(lm, manifest["methods"], top_k, every, todo, workers, landed)
    manifest["final"] = shards.compact(out, manifest)
    manifest["complete"] = True
    manifest["seconds"] = round(seconds_before + time.perf_counter() - t0, 3)
    shards.write_manifest(out, manifest)
    shards.remove_chunk_files(out, manifest)
    shards.write_manifest(out, manifest)
