"""Shared pieces of the experiments: corpus texts, overlap measures, Griffin's flocking score,
cached execution through the store's results table."""
from __future__ import annotations

import random
import re
from dataclasses import asdict
from typing import Callable

import numpy as np

from ..analysis import top_mask
from ..corpora import pydoc_prose
from ..keep import keep_count
from ..methods.griffin import flocking_score as flocking


def flocking_score(z: np.ndarray) -> np.ndarray:
    """Griffin's flocking score (`methods.griffin.flocking_score`) as float64 numpy (d_ff,)."""
    return flocking(z).double().numpy()


def top_set(score: np.ndarray, keep: float) -> np.ndarray:
    """Bool (d_ff,) mask of the top keep*d_ff entries of `score`."""
    k = keep_count(len(score), keep)
    m = np.zeros(len(score), dtype=bool)
    m[np.argsort(-score, kind="stable")[:k]] = True
    return m


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def overlap_figures(z: np.ndarray, fraction: float = 0.1, ids=None) -> dict:
    """For one layer's z (T, d_ff), first token already removed: mean pairwise Jaccard of the
    per-token top-`fraction` |z| sets, mean consecutive overlap |S_t ∩ S_t-1| / k, and the share of
    the flocking score held by its top-`fraction` neurons. With the token `ids` (T,), pairs of the
    same token are left out of the first two: in parallel input their sets are identical by
    construction, so a text that repeats tokens (sentences repeat "the", ",") would score higher
    for that alone."""
    mask = top_mask(z, fraction)                      # (T, d_ff)
    m = mask.astype(np.float32)
    k = keep_count(z.shape[1], fraction)
    ids = np.arange(len(m)) if ids is None else np.asarray(ids)
    inter = m @ m.T                                   # (T, T) intersection sizes
    iu = np.triu_indices(len(m), 1)
    pair = inter[iu][ids[iu[0]] != ids[iu[1]]]
    jac = float((pair / (2 * k - pair)).mean()) if len(pair) else float("nan")
    adjacent = (m[1:] * m[:-1]).sum(axis=1)[ids[1:] != ids[:-1]]
    cons = float(adjacent.mean() / k) if len(adjacent) else float("nan")
    s = flocking_score(z)
    share = float(np.sort(s)[::-1][:k].sum() / s.sum()) if s.sum() > 0 else float("nan")
    return {"jaccard": jac, "consecutive": cons, "flocking_share": share}


def sentence_texts(n: int, chars: int = 400, seed: int = 0) -> list[str]:
    """`n` prose passages of `chars` characters from pydoc_data.topics, each starting at a sentence
    boundary, at seeded offsets spread over the corpus; passages that are mostly code or symbols
    are skipped."""
    text = pydoc_prose()
    starts = [m.end() for m in re.finditer(r"\. (?=[A-Z][a-z]+ [a-z]+ [a-z]+)", text)]
    rng = random.Random(seed)
    out: list[str] = []
    for s in rng.sample(starts, len(starts)):
        piece = text[s:s + chars]
        if len(piece) < chars:  # too near the end of the corpus
            continue
        letters = sum(c.isalpha() or c == " " for c in piece) / max(1, len(piece))
        if letters > 0.93 and not re.search(r"[=*>|]{2,}|=", piece):
            out.append(piece)
        if len(out) == n:
            break
    return out


def random_texts(n: int, n_words: int = 80, seed: int = 0) -> list[str]:
    """`n` seeded random word lists drawn from the vocabulary of the same corpus (lower-case
    alphabetic words), so the only difference from the sentences is order and meaning."""
    vocab = sorted(set(re.findall(r"\b[a-z]{3,12}\b", pydoc_prose())))
    return [" ".join(random.Random(seed * 1000 + i).choices(vocab, k=n_words)) for i in range(n)]


def cached(store, kind: str, key: dict, compute: Callable[[], dict], model: str | None = None,
           force: bool = False) -> dict:
    """Serve `kind`/`key` from the store's results table, or compute and store it."""
    if store is not None and not force:
        got = store.get_result(kind, key)
        if got is not None:
            return {**got, "cached": True}
    result = compute()
    if store is not None:
        store.put_result(kind, key, result, model=model)
    return {**result, "cached": False}


def params_key(params, lm_fingerprint: str, version: int = 1) -> dict:
    return {"params": asdict(params), "model": lm_fingerprint, "version": version}
