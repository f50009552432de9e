"""Every supported architecture family, on a tiny random config saved to a folder and opened with
`models.load`: captures, attention, interventions and canonical MLP weights go through the family
adapter and agree with hooks placed by hand on the family's own modules."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers as tf

from moyu_core import hooks, models
from moyu_core.decode import generate
from moyu_core.errors import MoyuError
from moyu_core.families import FAMILIES
from moyu_core.methods import make

V = 49152  # the default model's tokenizer, copied into each folder
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

# family -> (config, MLP input module, down projection module), paths written by hand from
# transformers' modeling files, independent of moyu_core/families.py
SPECS = {
    "llama": (lambda: tf.LlamaConfig(**SMALL), "mlp", "mlp.down_proj"),
    "qwen2": (lambda: tf.Qwen2Config(**SMALL), "mlp", "mlp.down_proj"),
    "qwen3": (lambda: tf.Qwen3Config(**SMALL, head_dim=8), "mlp", "mlp.down_proj"),
    "mistral": (lambda: tf.MistralConfig(**SMALL), "mlp", "mlp.down_proj"),
    "gemma2": (lambda: tf.Gemma2Config(**SMALL, head_dim=8), "mlp", "mlp.down_proj"),
    "gemma3_text": (lambda: tf.Gemma3TextConfig(**SMALL, head_dim=8), "mlp", "mlp.down_proj"),
    "phi3": (lambda: tf.Phi3Config(**SMALL, pad_token_id=0), "mlp", "mlp.down_proj"),
    "gpt2": (lambda: tf.GPT2Config(vocab_size=V, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=128),
             "mlp", "mlp.c_proj"),
    "opt": (lambda: tf.OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                 num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128),
            "fc1", "fc2"),
    "gpt_neox": (lambda: tf.GPTNeoXConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128),
                 "mlp", "mlp.dense_4h_to_h"),
}
GATED = {"llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3"}
TEXT = "Heavy hitters start the inertia"


def _copy_tokenizer(folder):
    src = models.CACHE_DIR / "models" / models.DEFAULT_MODEL
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, folder / name)


@pytest.fixture(scope="module", params=sorted(SPECS))
def fam(request, tmp_path_factory):
    """(family name, LoadedModel, token ids) for a tiny random model of that family."""
    name = request.param
    make_config, _, _ = SPECS[name]
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(make_config())
    with torch.no_grad():   # larger weights than the default init, so every MLP output matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    _copy_tokenizer(folder)
    lm = models.load(str(folder))
    return name, lm, lm.encode(TEXT)


def _module(layer, path):
    for a in path.split("."):
        layer = getattr(layer, a)
    return layer


def _by_hand(name, lm, ids):
    """Per layer: MLP input x (T, d), down-projection input z (T, d_ff) and output (T, d), from
    hooks placed by hand on the family's own modules."""
    _, mlp_in, down = SPECS[name]
    got: dict = {}

    def flat(t):
        return t.reshape(-1, t.shape[-1]).detach()

    def x_pre(i):
        return lambda m, a: got.__setitem__(("x", i), flat(a[0]))

    def down_post(i):
        return lambda m, a, o: got.update({("z", i): flat(a[0]), ("out", i): flat(o)})

    placed = [(_module(layer, mlp_in), "pre", x_pre(i)) for i, layer in enumerate(lm.layers)]
    placed += [(_module(layer, down), "post", down_post(i)) for i, layer in enumerate(lm.layers)]
    with hooks.hooked(lm, placed), torch.inference_mode():
        lm.model(torch.tensor([ids]), use_cache=False)
    return got


def test_shapes_and_flags(fam):
    name, lm, _ = fam
    assert lm.family.name == name and lm.gated == (name in GATED)
    assert (lm.n_layers, lm.d_ff, lm.d_model, lm.n_heads) == (2, 64, 32, 4)
    w = lm.mlp_weights(1)
    assert w.up.shape == (64, 32) and w.down.shape == (32, 64) and w.up.dtype == torch.float32
    assert (w.gate is not None) == lm.gated and not w.up.requires_grad


def test_capture_z_equals_down_projection_input(fam):
    name, lm, ids = fam
    got = hooks.capture(lm, ids)
    ref = _by_hand(name, lm, ids)
    T = len(ids)
    assert got.z.shape == (2, T, 64)
    for i in range(2):
        np.testing.assert_allclose(got.z[i], ref["z", i].numpy(), rtol=1e-5, atol=1e-6)
    # each query's attention sums to 1, so the received totals sum to T per layer and head
    assert got.attn_received.shape == (2, 4, T)
    np.testing.assert_allclose(got.attn_received.sum(axis=2), T, rtol=1e-4)
    assert got.resid_norm.shape == (2, T) and (got.resid_norm > 0).all()
    assert hooks.hook_count(lm.model) == 0


def test_parallel_capture_equals_each_token_alone(fam):
    """Batches of sequences (OPT's MLP sees them flattened to (B*T, d))."""
    _, lm, ids = fam
    prefix, toks = ids[:2], ids[2:5]
    par = hooks.capture(lm, toks, mode="parallel", prefix_ids=prefix)
    for t, tok in enumerate(toks):
        alone = hooks.capture(lm, prefix + [tok])
        np.testing.assert_allclose(par.z[:, t], alone.z[:, -1], rtol=1e-4, atol=1e-5)


def test_mlp_weights_reproduce_the_mlp(fam):
    name, lm, ids = fam
    ref = _by_hand(name, lm, ids)
    for i in range(2):
        w, act = lm.mlp_weights(i), lm.parts(i).act
        x = ref["x", i][-1]                                     # one token (d,)

        def lin(weight, bias, v):
            return weight @ v + (0 if bias is None else bias)
        with torch.inference_mode():
            h = lin(w.up, w.up_bias, x)
            z = act(lin(w.gate, w.gate_bias, x)) * h if lm.gated else act(h)
            out = lin(w.down, w.down_bias, z)
        torch.testing.assert_close(z, ref["z", i][-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, ref["out", i][-1], rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_method_intervention_identity_and_zero(fam):
    _, lm, ids = fam
    x = torch.tensor([ids])
    dense = lm.model(x, use_cache=False).logits
    seen = []

    def identity(i, z, gate, xi):
        seen.append((i, tuple(z.shape), tuple(gate.shape), tuple(xi.shape)))
        return z

    with hooks.method_intervention(lm, identity):
        same = lm.model(x, use_cache=False).logits
    torch.testing.assert_close(same, dense, rtol=0, atol=0)
    T = len(ids)
    assert seen == [(i, (1, T, 64), (T, 64), (T, 32)) for i in range(2)]
    with hooks.method_intervention(lm, lambda i, z, gate, xi: torch.zeros_like(z)):
        zeroed = lm.model(x, use_cache=False).logits
    assert not torch.allclose(zeroed, dense, atol=1e-4)
    assert hooks.hook_count(lm.model) == 0


def test_mask_key_attention(fam):
    """Key 1 blocked for later queries: only query 1 gives it weight, rows still sum to 1."""
    _, lm, ids = fam
    with hooks.mask_key_attention(lm, 1):
        got = hooks.capture(lm, ids)
    assert (got.attn_received[:, :, 1] <= 1 + 1e-5).all()
    np.testing.assert_allclose(got.attn_received.sum(axis=2), len(ids), rtol=1e-4)
    assert not np.allclose(got.z[:, 2:], hooks.capture(lm, ids).z[:, 2:])
    assert hooks.hook_count(lm.model) == 0


def test_generate_executed_only_where_a_path_exists(fam):
    name, lm, ids = fam
    dense = generate(lm, ids, make("dense"), max_new_tokens=3)
    with torch.inference_mode():
        ref = lm.model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert dense["tokens"] == ref[0, -3:].tolist()
    m = make("oracle", keep=0.5)
    a = generate(lm, ids, m, max_new_tokens=3, executed=True)
    b = generate(lm, ids, m, max_new_tokens=3, executed=False)
    assert a["label"] == ("executed" if name in GATED else "simulated") and b["label"] == "simulated"
    assert a["tokens"] == b["tokens"] and hooks.hook_count(lm.model) == 0


@pytest.mark.parametrize("model_type", ["mamba", "t5"])
def test_unsupported_family_is_one_clear_line(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(MoyuError) as e:
        models.load(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and model_type in msg and all(f in msg for f in FAMILIES)
