"""Capture hooks on a tiny random Llama and on the real default model."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from moyu_core import hooks


def _z_by_hand(lm, ids):
    """Independent recomputation: a separate pre-hook on each layer's `mlp` takes its input x,
    then act_fn(gate_proj(x)) * up_proj(x) by hand."""
    xs = {}
    handles = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: xs.__setitem__(i, a[0].detach()))
               for i, layer in enumerate(lm.layers)]
    try:
        with torch.inference_mode():
            lm.model(torch.tensor([ids]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, layer in enumerate(lm.layers):
        mlp = layer.mlp
        with torch.inference_mode():
            out.append((mlp.act_fn(mlp.gate_proj(xs[i])) * mlp.up_proj(xs[i]))[0].numpy())
    return np.stack(out)


def test_capture_equals_recomputation_tiny(tiny_lm):
    ids = [3, 17, 42, 5, 8, 60]
    got = hooks.capture(tiny_lm, ids)
    assert got.z.shape == (2, 6, 64)
    np.testing.assert_allclose(got.z, _z_by_hand(tiny_lm, ids), rtol=1e-5, atol=1e-6)
    assert got.attn_received.shape == (2, 4, 6)
    # every query's attention sums to 1, so the received totals sum to the number of queries
    np.testing.assert_allclose(got.attn_received.sum(axis=2), 6.0, rtol=1e-4)
    assert got.resid_norm.shape == (2, 6) and (got.resid_norm > 0).all()
    assert hooks.hook_count(tiny_lm.model) == 0


def test_hooks_removed_when_forward_raises(tiny_lm):
    def boom(layer, z):
        if layer == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with hooks.mlp_intervention(tiny_lm, boom):
            tiny_lm.model(torch.tensor([[1, 2, 3]]))
    assert hooks.hook_count(tiny_lm.model) == 0

    with pytest.raises(IndexError):  # a capture whose forward fails (token id out of range)
        hooks.capture(tiny_lm, [1, 2, 1000])
    assert hooks.hook_count(tiny_lm.model) == 0
    assert not tiny_lm.lock._is_owned()


def test_parallel_equals_each_token_alone(tiny_lm):
    ids, prefix = [4, 9, 33], [7, 11]
    got = hooks.capture(tiny_lm, ids, mode="parallel", prefix_ids=prefix)
    for t, tok in enumerate(ids):
        alone = hooks.capture(tiny_lm, prefix + [tok])
        np.testing.assert_allclose(got.z[:, t], alone.z[:, -1], rtol=1e-5, atol=1e-6)


def test_sequential_prefix_is_not_recorded(tiny_lm):
    full = hooks.capture(tiny_lm, [7, 11, 4, 9])
    part = hooks.capture(tiny_lm, [4, 9], prefix_ids=[7, 11])
    np.testing.assert_allclose(part.z, full.z[:, 2:], rtol=1e-5, atol=1e-6)


def test_stored_activations_equal_recomputation_real_model(lm, db):
    from moyu_core import runs

    text = "Activation inertia: neurons that fire for early tokens keep firing for later ones."
    r = runs.capture_run(lm, db, text)
    ref = _z_by_hand(lm, lm.encode(text))
    for layer in (0, 7, 15, 29):
        got = db.activations(r.run_id, layer)
        bound = np.abs(ref[layer]).max(axis=1, keepdims=True) * 0.005
        assert got.shape == (r.tokens, 1536)
        assert (np.abs(got - ref[layer]) <= bound + 1e-6).all(), f"layer {layer} beyond 0.5% bound"


def test_two_threads_capture_equal_serial(lm):
    prompts = ["The cat sat on the mat and looked out at the rain.",
               "Quantum chromodynamics describes the strong interaction."]
    serial = [hooks.capture(lm, lm.encode(p)).z for p in prompts]
    out: dict[int, np.ndarray] = {}
    errors = []

    def work(i):
        try:
            for _ in range(2):
                out[i] = hooks.capture(lm, lm.encode(prompts[i])).z
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        np.testing.assert_array_equal(out[i], serial[i])
    assert hooks.hook_count(lm.model) == 0
