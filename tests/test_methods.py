"""Methods: registry errors, identity at keep 1.0 on the real model, griffin's flocking statistic,
no hook left behind."""
import numpy as np
import pytest
import torch

from moyu_core.errors import MoyuError
from moyu_core.hooks import hook_count
from moyu_core.masks import keep_masks, masked_logits
from moyu_core.methods import REGISTRY, make
from moyu_core.methods.griffin import flocking_score

TEXT = "The quick brown fox jumps over the lazy dog because it wants to reach the river before dark."
FULL = {"dense": {}, "oracle": {"keep": 1.0}, "tda": {"keep": 1.0}, "cats": {"keep": 1.0},
        "cett": {"cett": 0.0}, "dejavu": {"keep": 1.0}, "griffin": {"keep": 1.0},
        "moe": {"keep": 1.0}, "moe-oracle": {"keep": 1.0}, "static": {"keep": 1.0}, "teal": {"keep": 1.0}}


def test_registry_errors():
    assert set(REGISTRY) == set(FULL)
    with pytest.raises(MoyuError, match="valid"):
        make("nope")
    with pytest.raises(MoyuError, match="valid"):
        make("griffin", kep=0.5)
    with pytest.raises(MoyuError):
        make("griffin", keep=1.5)


def test_identity_every_method_real_model(lm):
    ids = lm.encode(TEXT)
    with torch.inference_mode():
        dense = lm.model(torch.tensor([ids]), use_cache=False).logits[0].float()
    for name, params in FULL.items():
        logits, masks = masked_logits(lm, make(name, **params), ids)
        assert masks.shape == (lm.n_layers, len(ids), lm.d_ff) and masks.all(), name
        assert torch.equal(logits, dense), name
    assert hook_count(lm.model) == 0


def test_topk_mask_is_torch_topk_on_distinct_scores():
    from moyu_core.methods.base import topk_mask

    score = torch.randn(64, 1536)
    for keep in (0.1, 0.5, 0.75):
        k = round(keep * 1536)
        ref = torch.zeros_like(score, dtype=torch.bool).scatter_(1, score.topk(k, dim=1).indices, True)
        assert torch.equal(topk_mask(score, keep), ref)
    tied = torch.randint(-3, 4, (64, 1536)).float()  # ties at the k-th value: still exactly k
    assert (topk_mask(tied, 0.5).sum(dim=1) == 768).all()
    v = score[0]  # a vector (griffin, static)
    assert torch.equal(topk_mask(v, 0.5), torch.zeros_like(v, dtype=torch.bool).scatter_(0, v.topk(768).indices, True))


def test_griffin_keeps_flocking_topk(lm):
    from moyu_core.hooks import capture
    ids = lm.encode(TEXT)
    z = capture(lm, ids).z                                   # (L, T, d_ff)
    masks = keep_masks(lm, make("griffin", keep=0.25), ids)
    k = round(0.25 * lm.d_ff)
    for layer in (0, lm.n_layers // 2, lm.n_layers - 1):
        zl = z[layer].astype(np.float64)
        s = np.linalg.norm(zl / np.linalg.norm(zl, axis=1, keepdims=True), axis=0)
        direct = set(np.argsort(-s)[:k].tolist())
        chosen = set(np.flatnonzero(masks[layer, 0]).tolist())
        assert len(direct & chosen) >= k - 2          # float ties at the boundary only
        assert (masks[layer] == masks[layer, 0]).all()
    assert torch.allclose(flocking_score(z[0]), torch.as_tensor(np.linalg.norm(
        z[0] / np.linalg.norm(z[0], axis=1, keepdims=True), axis=0)), atol=1e-5)


def test_sparse_methods_keep_about_keep(lm):
    ids = lm.encode(TEXT)
    for name in ("oracle", "griffin", "moe", "moe-oracle", "static"):
        m = keep_masks(lm, make(name, keep=0.5), ids)
        assert abs(m[:, 1:].mean() - 0.5) < 0.05, name


def test_calibrated_thresholds_hit_target_on_held_out_windows(lm):
    """tda / cats / cett thresholds are calibrated on standard-library docstrings; on the
    evaluation corpus (pydoc_data.topics, disjoint) the measured sparsity is within 2 points."""
    from moyu_core.evaluate import evaluate
    from moyu_core.corpora import pydoc_topics, stdlib_docstrings
    assert stdlib_docstrings()[:2000] not in pydoc_topics()
    for name in ("tda", "cats", "cett"):
        for keep in (0.5, 0.25):
            r = evaluate(lm, make(name, keep=keep), None, windows=3, prompt_len=64, gen_len=64)
            assert abs(r["sparsity"] - (1 - keep)) <= 0.02, (name, keep, r["sparsity"])


def test_no_hook_left_after_error(lm):
    from moyu_core.methods.base import Method

    class Boom(Method):
        name = "boom"

        def select(self, layer, z, gate, lm, x=None):
            raise MoyuError("boom")

    ids = lm.encode(TEXT)
    with pytest.raises(MoyuError):
        keep_masks(lm, Boom(make("oracle").params), ids)
    with pytest.raises(MoyuError):
        masked_logits(lm, Boom(make("oracle").params), ids)
    assert hook_count(lm.model) == 0


def test_keep_masks_without_a_forward_match_the_forward(lm):
    """Methods deciding from z give the same masks from captured z as from a forward (float32
    capture); those reading the gate or the MLP input from `method_inputs`; each says None when
    handed only what it does not read."""
    from moyu_core.hooks import capture
    from moyu_core.masks import keep_masks_from, method_inputs
    ids = lm.encode(TEXT)
    z = capture(lm, ids).z
    inputs = method_inputs(lm, ids)
    assert inputs[0].shape == (lm.n_layers, len(ids), lm.d_ff)
    for name in ("oracle", "tda", "cett", "griffin", "static", "cats", "moe"):
        m = make(name, keep=0.5)
        got, ref = keep_masks_from(lm, m, lambda i: z[i], inputs), keep_masks(lm, m, ids)
        assert got.shape == ref.shape and (got == ref).mean() > 0.999, name
    for name in ("cats", "moe", "dejavu"):
        assert keep_masks_from(lm, make(name, keep=0.5), layer_z=lambda i: z[i]) is None
    assert keep_masks_from(lm, make("tda", keep=0.5), inputs=inputs) is None


def test_moe_router_reads_x_only_and_moe_oracle_reads_the_gate(lm):
    """moe's router scores experts by x . centroid (no gate needed); moe-oracle by the exact gate;
    both keep whole experts of the same clusters."""
    from moyu_core.masks import method_inputs
    from moyu_core.preparation import prepare

    gate, x = method_inputs(lm, lm.encode(TEXT))
    moe, oracle = prepare(lm, make("moe", keep=0.5)), prepare(lm, make("moe-oracle", keep=0.5))
    a = moe.select(5, None, None, lm, x[5])
    b = oracle.select(5, None, gate[5], lm, None)
    ex = moe.resource(lm, "derived")[5]
    assert torch.equal(ex.assign, oracle.resource(lm, "derived")[5].assign)
    for m in (a, b):
        per_expert = m[:, ex.members]                            # (T, E, d_ff / E)
        assert (per_expert.all(-1) | ~per_expert.any(-1)).all()  # whole experts
        assert (per_expert.all(-1).sum(-1) == 16).all()
    assert ex.centroids.shape == (32, lm.d_model)
    assert moe.needs == "x" and oracle.needs == "gate"
    assert (moe.skips, oracle.skips) == ("mlp", "up_down")


def test_teal_thresholds_every_projection_per_layer(lm):
    """teal calibrates one threshold per layer and projection; uniform mode keeps about `keep`
    of each input on held-out text."""
    from moyu_core.evaluate import evaluate
    from moyu_core.methods.teal import PROJECTIONS
    from moyu_core.preparation import prepare

    m = prepare(lm, make("teal", keep=0.5))
    t = m.layer_thresholds(3, lm)
    assert set(t) == set(PROJECTIONS) and all(v > 0 for v in t.values())
    assert t["q"] == t["k"] == t["v"] and t["gate"] == t["up"]
    r = evaluate(lm, m, None, windows=2, prompt_len=64, gen_len=32)
    assert abs(r["sparsity"] - 0.5) <= 0.05 and r["ppl_ratio"] > 1.0


def test_teal_greedy_allocation_follows_the_cheapest_error():
    """TEAL's greedy allocation (pure, on a synthetic block): the projection whose sparsity costs
    least is raised first, and the block's byte-weighted sparsity reaches 1 - keep."""
    from moyu_core.methods.base import Sample
    from moyu_core.methods.teal import GREEDY_STEP, PROJECTIONS

    g = torch.Generator().manual_seed(0)
    inputs = {p: torch.randn(256, 16, generator=g) for p in PROJECTIONS}
    weights = {p: 16 * 16 for p in PROJECTIONS}
    cost = {p: (0.1 if p == "down" else 1.0) for p in PROJECTIONS}

    def block_error(th):   # error grows with each projection's threshold, down's ten times slower
        return sum(cost[p] * th[p] for p in PROJECTIONS)

    sample = Sample(z=inputs["down"], gate=inputs["down"], inputs=inputs, weights=weights, block_error=block_error)
    m = make("teal", keep=0.8, greedy=True)
    s = m.greedy_sparsities(sample)
    assert s["down"] == max(s.values()) and s["down"] > 0
    block = sum(s.values()) / len(s)
    assert 0.2 - 1e-9 <= block < 0.2 + GREEDY_STEP + 1e-9
    th = m.calibrate(0, sample, None)
    assert set(th) == set(PROJECTIONS) and th["down"] > 0
