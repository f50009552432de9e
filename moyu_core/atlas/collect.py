"""One chunk through the model: per layer and neuron, the partial aggregates an atlas merges.

Each piece of the chunk is one forward of the decoder body (no LM head; SDPA attention, as no
attention weight is read: z matches `hooks.capture`'s eager forward to ~1e-4, and is exactly
`hooks.capture_mlp_io`'s under `models.fused_attention`) with `hooks.method_intervention`
handing every layer's z (T, d_ff), act(gate_proj(x)) and the MLP input x to `_Aggregates.add`,
which updates, over the piece's positions 1..T-1 (position 0 is the sink):

    n        measured tokens
    top10    tokens where the neuron is in its layer's top 10% by |z| (ties: the lowest neuron ids)
    stay     tokens t with the neuron in the top 10% at t and at t+1 (t+1 in the same piece)
    prev     tokens t with the neuron in the top 10% at t and a token t+1 in the piece
    sum_abs  sum of |z| (float64 across pieces)     max_abs  max |z|
    hist     counts of z in `shards.HIST_EDGES`' bins (as numpy.searchsorted(edges, z, "right"))
    kept     per method: tokens where it keeps the neuron (the method's own `select` at keep 0.5,
             given the whole piece as its prompt), on the sampled pieces only
    kept_n   the measured tokens of the sampled pieces: every `method_every`-th piece of the plan
             (ordinal % method_every == 0), so the sample depends neither on the chunking nor on
             the workers
    top      the K largest z with the token each came from (candidates, merged later)

All are sums, maxima or top-K candidates, so chunks merge exactly in any grouping (`shards.py`).
frequency = top10 / n, inertia = stay / prev, mean |z| = sum_abs / n, a method's keep rate =
kept / kept_n.

Why sample the methods: the ten methods' own choices on every token cost about a third of the
forward (dejavu's router, the moe routers, six top-k selections per layer), the statistics about
a tenth (`benchmarks/atlas.py`). A keep rate estimated on every 8th piece (the default) has a
standard error below 0.5 / sqrt(kept_n), e.g. 0.0014 at kept_n = 125,000 (1M tokens; a piece's
tokens are correlated, so somewhat more); `--method-every 1` counts every token.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from .. import hooks, kernels
from ..analysis import TOP_FRACTION
from ..errors import MoyuError
from ..methods import REGISTRY, Method, make
from ..keep import keep_count
from ..models import fused_attention
from ..preparation import prepare
from .corpus import Chunk
from . import METHOD_EVERY, shards

KEEP = 0.5          # the keep at which each method's choice is counted
METHOD_EVERY_RANGE = (1, 10**6)
TOP_K_RANGE = (1, 100)


def method_names() -> list[str]:
    """Every registered method but dense (which keeps everything)."""
    return [n for n in REGISTRY if n != "dense"]


def ready_methods(lm, names: list[str] | None = None) -> tuple[list[Method], dict[str, str]]:
    """The methods at keep KEEP, prepared (thresholds calibrated, router loaded...), and those
    that cannot run here with the reason (dejavu without a trained router). With `names`, each
    named method must be ready (a resumed build or a Ray worker needs the same set)."""
    ready, skipped = [], {}
    for name in names if names is not None else method_names():
        try:
            ready.append(prepare(lm, make(name, keep=KEEP)))
        except MoyuError as e:
            if names is not None:
                raise MoyuError(f"method {name} cannot run here: {e}") from None
            skipped[name] = str(e)
    return ready, skipped


def token_pieces(lm, ids) -> list[str]:
    """Readable text of each token id (decoded one at a time, as the store's tokens), memoised
    per loaded model."""
    memo = lm.derived(("atlas", "pieces"), dict)
    missing = [int(i) for i in set(int(i) for i in ids) if int(i) not in memo]
    for i, text in zip(missing, lm.pieces(missing)):
        memo[i] = text
    return [memo[int(i)] for i in ids]


def _hist_table() -> tuple[torch.Tensor, torch.Tensor]:
    """`row_stats.cpp`'s histogram lookup table over the top 11 bits of a float32 |z| (sign 0,
    8 exponent bits, 2 mantissa bits): per bucket, the count of positive edges below its lowest
    value and the one edge inside it (inf where none); quarter-decade edges are too far apart
    for two in one bucket."""
    mags = shards.HIST_EDGES[shards.HIST_EDGES > 0]
    bits = np.arange(2049, dtype=np.uint64) << 21          # bucket starts; from 1024 on: sign set
    bounds = np.where(bits < 0x7F800000, bits.astype(np.uint32).view(np.float32), np.inf).astype(np.float64)
    lo, hi = bounds[:-1], bounds[1:]                          # [lo, hi) per bucket; inf and NaN at the top
    below = np.searchsorted(mags, lo, side="left")            # edges < lo
    inside = np.searchsorted(mags, hi, side="left") - below   # edges in [lo, hi)
    assert inside.max() <= 1
    edge = np.where(inside == 1, mags[np.minimum(below, len(mags) - 1)], np.inf)
    return torch.from_numpy(below.astype(np.int32)), torch.from_numpy(edge)


_HIST_TABLE = _hist_table()


class _Aggregates:
    """Running partial aggregates of one chunk, per layer (L, ...) tensors: counts (L, 3, D) =
    top10, stay, prev; the top-K (L, K, D) values (descending, -inf where empty) and the index
    of each one's measured token in the chunk. `row_stats.cpp`'s `atlas_accumulate` updates all
    but the methods' counts in one pass over z; `add_column_counts` adds a method's mask."""

    def __init__(self, lm, methods: list[Method], top_k: int):
        L, D = lm.n_layers, lm.d_ff
        self.lm, self.methods, self.top_k, self.D = lm, methods, top_k, D
        self.ops = kernels.row_ops()
        self.counts = torch.zeros(L, 3, D, dtype=torch.int64)
        self.sum_abs = torch.zeros(L, D, dtype=torch.float64)
        self.max_abs = torch.zeros(L, D)
        self.hist = torch.zeros(L, shards.N_BINS, D, dtype=torch.int64)
        self.kept = torch.zeros(len(methods), L, D, dtype=torch.int64)
        self.top_v = torch.full((L, top_k, D), -torch.inf)
        self.top_j = torch.full((L, top_k, D), -1, dtype=torch.int64)
        self.base = 0   # measured tokens of the chunk before the running piece
        self.sampled = False   # whether the running piece counts the methods' choices
        self.kept_n = 0        # measured tokens of the sampled pieces before the running one

    def add(self, i: int, z: torch.Tensor, gate: torch.Tensor, x: torch.Tensor) -> None:
        z = z[0].detach().float().contiguous()         # (T, D)
        T = len(z)
        m10 = self.ops.topk_mask_rows(z, keep_count(self.D, TOP_FRACTION), True)   # each token's top 10% by |z|
        self.ops.atlas_accumulate(z, m10, self.counts[i], self.sum_abs[i], self.max_abs[i], self.hist[i],
                                  *_HIST_TABLE, self.top_v[i], self.top_j[i], self.base)
        for j, method in enumerate(self.methods if self.sampled else ()):
            keep = method.select(i, z, gate, self.lm, x)                # (T, D) bool
            if method.sequence_level:   # one set for every token of the piece
                self.kept[j, i] += keep[1].long() * (T - 1)
            else:
                self.ops.add_column_counts(keep.contiguous(), 1, self.kept[j, i])


def counts_methods(piece, method_every: int) -> bool:
    """Whether `piece` is one of the sampled pieces on which the methods' choices are counted."""
    return piece.ordinal % method_every == 0


@torch.inference_mode()
def compute_chunk(lm, methods: list[Method], chunk: Chunk, top_k: int, method_every: int = METHOD_EVERY,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Run every piece of `chunk` and return its partial aggregates as Arrow tables
    {"stats", "kept", "top", "tokens"} plus its "index" and its "n_tokens" and "n_measured" counts.
    The methods' choices are counted on the pieces whose ordinal is a multiple of `method_every`.
    `progress(n)` is told the text tokens of each piece done."""
    agg = _Aggregates(lm, methods, top_k)
    docs, poss = [], []          # (doc, position) of each measured token, in order
    with fused_attention(lm), hooks.method_intervention(lm, agg.add):
        for piece in chunk.pieces:
            T = len(piece.ids)
            if T >= 2:
                agg.sampled = counts_methods(piece, method_every)
                lm.body(torch.tensor([piece.ids]), use_cache=False)
                agg.base += T - 1
                agg.kept_n += (T - 1) * agg.sampled
                docs += [piece.doc] * (T - 1)
                poss += [piece.doc_pos(p) for p in range(1, T)]
            if progress:
                progress(len(piece.text_ids))
    return {"index": chunk.index, "n_tokens": chunk.tokens, "n_measured": agg.base,
            **_tables(lm, agg, chunk, np.array(docs, np.int32), np.array(poss, np.int32))}


def _tables(lm, agg: _Aggregates, chunk: Chunk, docs: np.ndarray, poss: np.ndarray) -> dict[str, pa.Table]:
    L, D, M = lm.n_layers, lm.d_ff, len(agg.methods)
    layer = np.repeat(np.arange(L, dtype=np.int16), D)
    neuron = np.tile(np.arange(D, dtype=np.int32), L)
    hist = agg.hist.permute(0, 2, 1).reshape(-1).numpy()   # (L*D*shards.N_BINS,) neuron-major
    stats = pa.table({
        "layer": layer, "neuron": neuron, "n": np.full(L * D, agg.base, np.int64),
        "top10": agg.counts[:, 0].reshape(-1).numpy(), "stay": agg.counts[:, 1].reshape(-1).numpy(),
        "prev": agg.counts[:, 2].reshape(-1).numpy(), "sum_abs": agg.sum_abs.reshape(-1).numpy(),
        "max_abs": agg.max_abs.reshape(-1).numpy(),
        "hist": pa.ListArray.from_arrays(np.arange(0, L * D * shards.N_BINS + 1, shards.N_BINS, dtype=np.int32), hist)})
    names = [m.name for m in agg.methods]
    kept = pa.table({
        "layer": np.repeat(layer, M), "neuron": np.repeat(neuron, M),
        "method": pa.array(np.tile(np.array(names, dtype=object), L * D), pa.string()).dictionary_encode(),
        "kept": agg.kept.permute(1, 2, 0).reshape(-1).numpy(), "n": np.full(L * D * M, agg.kept_n, np.int64)})
    k = min(agg.top_k, agg.base)    # 0 for a chunk of one-token pieces: nothing measured
    top_v = agg.top_v[:, :k].permute(0, 2, 1).reshape(L * D, k).numpy()   # (L*D, k)
    top_j = agg.top_j[:, :k].permute(0, 2, 1).reshape(L * D, k).numpy()
    text_ids = {(p.doc, p.doc_pos(q)): t for p in chunk.pieces for q, t in enumerate(p.ids) if q >= p.n_bos}
    token_of = np.array([text_ids[(d, q)] for d, q in zip(docs.tolist(), poss.tolist())], np.int32)
    top = pa.table({
        "layer": np.repeat(layer, k), "neuron": np.repeat(neuron, k), "value": top_v.reshape(-1),
        "doc": docs[top_j.reshape(-1)], "pos": poss[top_j.reshape(-1)], "token_id": token_of[top_j.reshape(-1)]})
    t_doc = np.array([p.doc for p in chunk.pieces for _ in p.text_ids], np.int32)
    t_pos = np.array([p.start + q for p in chunk.pieces for q in range(len(p.text_ids))], np.int32)
    t_ids = [t for p in chunk.pieces for t in p.text_ids]
    tokens = pa.table({"doc": t_doc, "pos": t_pos, "token_id": np.array(t_ids, np.int32),
                       "piece": pa.array(token_pieces(lm, t_ids), pa.string())})
    return {"stats": stats, "kept": kept, "top": top, "tokens": tokens}
