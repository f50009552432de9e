"""The numbers the explorer draws (moyu_core.analysis, moyu_core.wordlists)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from moyu_core import analysis, wordlists


def test_normalise_per_token_scales_each_row_to_one():
    z = np.array([[1.0, -4.0, 2.0], [0.5, 0.25, -0.1]], np.float32)
    out = analysis.normalise(z, "token")
    assert np.allclose(out.max(axis=1), 1.0)
    assert np.allclose(out[0], [0.25, 1.0, 0.5])
    assert np.array_equal(analysis.normalise(z, "abs"), np.abs(z))
    assert analysis.normalise(z, "raw") is z
    with pytest.raises(ValueError):
        analysis.normalise(z, "zscore")


def test_top_mask_keeps_exactly_the_largest_magnitudes():
    z = np.array([[0.1, -5.0, 3.0, 0.2, 0.0, 1.0, -0.3, 0.4, 0.5, 0.6]], np.float32)
    m = analysis.top_mask(z, 0.2)
    assert m.sum() == 2 and m[0, 1] and m[0, 2]


def test_frequency_order_puts_always_active_neurons_first():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 100)).astype(np.float32)
    z[:, 37] = 100.0  # fires for every token
    z[:, 5] = 50.0
    order = analysis.neuron_order(z, "frequency")
    assert sorted(order.tolist()) == list(range(100))
    assert set(order[:2].tolist()) == {37, 5}
    assert np.array_equal(analysis.neuron_order(z, "index"), np.arange(100))


def test_pool2d_keeps_the_strongest_value_with_its_sign():
    a = np.zeros((10, 10), np.float32)
    a[3, 7] = -9.0
    a[8, 1] = 4.0
    pooled, re, ce = analysis.pool2d(a, 2, 2)
    assert pooled.shape == (2, 2) and list(re) == [0, 5, 10] and list(ce) == [0, 5, 10]
    assert pooled[0, 1] == -9.0 and pooled[1, 0] == 4.0 and pooled[0, 0] == 0.0
    # a 1024-token layer pools to the overview size
    big, _, _ = analysis.pool2d(np.ones((1024, 1536), np.float32), 192, 384)
    assert big.shape == (192, 384)


def test_inertia_is_one_for_a_repeated_token_and_near_random_for_noise():
    rng = np.random.default_rng(1)
    row = rng.normal(size=(1, 1000))
    same = np.repeat(row, 20, axis=0)
    got = analysis.inertia(same, 0.1)
    assert got.adjacent_overlap == pytest.approx(1.0) and got.union_share == pytest.approx(0.1)
    noise = analysis.inertia(rng.normal(size=(200, 1000)), 0.1)
    assert abs(noise.adjacent_overlap - 0.1) < 0.03 and noise.random_overlap == pytest.approx(0.1)
    assert noise.history_overlap > noise.adjacent_overlap  # the union of history grows
    assert math.isnan(analysis.inertia(row, 0.1).adjacent_overlap)


def test_heavy_hitters_rank_accumulated_attention():
    attn = np.zeros((2, 3, 5), np.float32)  # (L, H, T)
    attn[:, :, 0] = 3.0
    attn[1, 2, 3] = 4.0
    score = analysis.accumulated_attention(attn)
    assert score[0] == 18.0 and score[3] == 4.0
    assert analysis.heavy_hitters(score, 2) == [0, 3]
    assert analysis.heavy_hitters(score, 1, skip_first=True) == [3]
    assert analysis.accumulated_attention(attn, layers=[0])[3] == 0.0
    per_q = analysis.accumulated_attention(attn, per_query=True)
    assert per_q[4] == pytest.approx(0.0) and per_q[0] == pytest.approx(18.0 / 5)
    assert np.allclose(analysis.sink_share(attn), [1.0, 9 / 13])


def test_massive_activations_flag_only_outlier_tokens():
    norm = np.ones((3, 8), np.float32)
    norm[1, 0] = 50.0
    assert analysis.massive_activations(norm, 5.0) == [0]


def test_mask_categories_and_agreement():
    keep = np.array([[True, True, False, False]])
    oracle = np.array([[True, False, True, False]])
    cats = analysis.mask_categories(keep, oracle)
    assert cats.tolist() == [[1, 2, 3, 0]]
    agree = analysis.mask_agreement(keep, oracle)
    assert agree == {"recall": 0.5, "precision": 0.5, "kept": 0.5}


def test_speedup_ceiling_matches_design_figure(lm):
    m = analysis.mlp_weight_share(lm.model)
    assert 0.57 < m < 0.61  # DESIGN.md: 0.59 for SmolLM2-135M
    assert analysis.speedup_ceiling(0.59, 0.5) == pytest.approx(1.42, abs=0.01)
    assert analysis.speedup_ceiling(m, 1.0) == 1.0


def test_inertia_on_real_model_sequential_beats_random(lm, db):
    from moyu_core.runs import capture_run

    res = capture_run(lm, db, wordlists.random_word_list(24, seed=3))
    z = db.activations(res.run_id, 10)
    got = analysis.inertia(z)
    assert got.n_tokens == res.tokens and got.adjacent_overlap > got.random_overlap
    ov = analysis.layer_overview(lambda i: db.activations(res.run_id, i), 3)
    assert ov["frequency"].shape == (3, lm.d_ff) and len(ov["inertia"]) == 3


def test_random_word_list_is_seeded():
    a, b = wordlists.random_word_list(30, 7), wordlists.random_word_list(30, 7)
    assert a == b and a != wordlists.random_word_list(30, 8)
    assert len(a.split()) == 30 and len(set(a.split())) == 30
    assert len(wordlists.random_word_list(600, 1).split()) == 600
    assert set(wordlists.random_word_list(5, 0).split()) <= set(wordlists.WORDS)


def test_reference_text_is_long_prose():
    text = wordlists.reference_text(4200)
    assert len(text) == 4200 and text.count(" ") > 400


def test_inertia_pairwise_overlap_is_the_mean_over_all_token_pairs():
    """Counted per neuron (no T x T product), it equals the brute-force mean of |S_i & S_j| / k."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(40, 200)).astype(np.float32)
    z[:, :15] += 2.0                                   # shared neurons: overlaps well above chance
    m = analysis.top_mask(z, 0.1)
    k = int(m[0].sum())
    brute = np.mean([(m[i] & m[j]).sum() / k for i in range(40) for j in range(i + 1, 40)])
    got = analysis.inertia(z, 0.1)
    assert got.pairwise_overlap == pytest.approx(brute, rel=1e-12) and got.pairwise_overlap > 0.2
