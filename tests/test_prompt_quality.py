"""Quality on the user's own prompt (`moyu_core.prompt_quality`) against a computation written here
with the plain model and a hook, and the display merge of byte pieces (`moyu_core.tokens_display`)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moyu_core import prompt_quality as pq
from moyu_core.hooks import mlp_intervention
from moyu_core.methods import make
from moyu_core.tokens_display import Span, display_pieces, merge_byte_pieces, per_token

IDS = [3, 17, 42, 8, 91, 5, 23, 64, 11, 77, 30, 2, 55, 19, 88, 40]


def expected(lm, method, ids, start, masks_from):
    """Loss, dense loss and KL at every target, from full logits of the plain model with the
    method's masks multiplied into z at positions >= start (masks_from(layer, z) -> (n, d_ff))."""
    x = torch.tensor([ids])
    with torch.inference_mode():
        dense = lm.model(x, use_cache=False).logits[0].float()

        def on_z(i, z):
            full = torch.ones_like(z[0])
            full[start:] = masks_from(i, z[0]).to(z.dtype)
            return z * full[None]

        with mlp_intervention(lm, on_z):
            got = lm.model(x, use_cache=False).logits[0].float()
    lp, dlp = got.log_softmax(-1), dense.log_softmax(-1)
    tgt = x[0, 1:, None]
    loss = -lp[:-1].gather(1, tgt)[:, 0]
    dloss = -dlp[:-1].gather(1, tgt)[:, 0]
    kl = (dlp.exp() * (dlp - lp)).sum(-1)[:-1]
    return loss.numpy(), dloss.numpy(), kl.clamp_min(0).numpy()


def test_dense_changes_nothing(tiny_lm):
    got = pq.prompt_quality(tiny_lm, make("dense"), IDS)
    scored = ~np.isnan(got["loss"])
    assert got["acting_from"] == 1 and scored.sum() == len(IDS) - 2 == got["n_scored"]
    np.testing.assert_allclose(got["loss"][scored], got["dense_loss"][scored], atol=1e-5)
    assert got["mean_kl"] == pytest.approx(0.0, abs=1e-6) and got["top1"] == 1.0
    assert got["ppl_ratio"] == pytest.approx(1.0, abs=1e-5) and got["kept"] == 1.0


def test_per_token_method_matches_the_plain_model_with_its_masks(tiny_lm):
    method = make("oracle", keep=0.25)
    got = pq.prompt_quality(tiny_lm, method, IDS)
    loss, dloss, kl = expected(tiny_lm, method, IDS, 1, lambda i, z: method.select(i, z, None, tiny_lm)[1:])
    # target t (predicted at position t-1) is scored from t = 2: position 1 is the first masked one
    np.testing.assert_allclose(got["loss"][2:], loss[1:], atol=1e-4)
    np.testing.assert_allclose(got["dense_loss"][2:], dloss[1:], atol=1e-4)
    np.testing.assert_allclose(got["kl"][2:], kl[1:], atol=1e-4)
    assert np.isnan(got["loss"][:2]).all()
    assert got["kept"] == pytest.approx(0.25, abs=0.02)
    assert got["mean_kl"] > 0 and math.isfinite(got["ppl_ratio"])


def test_sequence_level_method_decides_from_the_first_half(tiny_lm):
    method = make("griffin", keep=0.5)
    T, start = len(IDS), len(IDS) // 2
    got = pq.prompt_quality(tiny_lm, method, IDS)
    assert got["acting_from"] == start and "decides from tokens 0–7" in got["rule"]

    def from_first_half(i, z):
        return method.select(i, z[:start], None, tiny_lm)[:1].expand(T - start, -1)

    loss, _, kl = expected(tiny_lm, method, IDS, start, from_first_half)
    np.testing.assert_allclose(got["loss"][start + 1:], loss[start:], atol=1e-4)
    np.testing.assert_allclose(got["kl"][start + 1:], kl[start:], atol=1e-4)
    assert np.isnan(got["loss"][:start + 1]).all() and got["n_scored"] == T - start - 1


def test_reused_dense_states_give_the_same_figures(tiny_lm):
    method = make("oracle", keep=0.5)
    dense = pq.dense_hidden(tiny_lm, IDS)
    a = pq.prompt_quality(tiny_lm, method, IDS)
    b = pq.prompt_quality(tiny_lm, method, IDS, dense=dense)
    np.testing.assert_allclose(a["kl"], b["kl"], atol=1e-6, equal_nan=True)


def test_real_model_threshold_method_on_a_prompt(lm):
    ids = lm.encode("The history of Rome begins with a small town on the Tiber.")
    got = pq.prompt_quality(lm, make("tda", keep=0.5), ids)
    assert got["n_scored"] == len(ids) - 2 and got["mean_kl"] > 0 and got["ppl_ratio"] > 0.5
    assert 0.3 < got["kept"] < 0.7


# ---- byte pieces merged for display -------------------------------------------------------------------

def byte_decode(ids: list[int]) -> str:
    """A byte-level tokenizer in miniature: each id is one byte."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_merge_byte_pieces_on_bytes():
    text = "a😀bש!"
    ids = list(text.encode())
    spans = merge_byte_pieces(ids, byte_decode)
    assert [s.text for s in spans] == ["a", "😀", "b", "ש", "!"]
    assert [(s.start, s.end) for s in spans] == [(0, 1), (1, 5), (5, 6), (6, 8), (8, 9)]
    assert display_pieces(ids, byte_decode)[1:5] == [f"😀 ({k}/4)" for k in range(1, 5)]
    assert len(per_token(spans)) == len(ids)


def test_pieces_that_never_make_valid_text_stay_alone():
    ids = list("x\ufffdy".encode()) + [0xF0]   # a real U+FFFD (3 bytes), then a cut character at the end
    spans = merge_byte_pieces(ids, byte_decode)
    assert [s.text for s in spans] == ["x", "\ufffd", "\ufffd", "\ufffd", "y", "\ufffd"]
    assert spans[-1] == Span(len(ids) - 1, len(ids), "\ufffd")   # never completed: shown as it is


def test_real_tokenizer_emoji_and_hebrew(lm):
    text = "I ❤️ 🦄 and שלום עולם"
    ids = lm.encode(text)
    alone = [lm.tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in alone)   # the tokenizer does cut these characters
    spans = merge_byte_pieces(ids, lambda x: lm.tokenizer.decode(x))
    assert not any("\ufffd" in s.text for s in spans)
    assert "".join(s.text for s in spans) == lm.tokenizer.decode(ids)
    assert len(display_pieces(ids, lambda x: lm.tokenizer.decode(x))) == len(ids)
