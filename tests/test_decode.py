"""Decode: sliced griffin gives the same tokens as masked griffin; dense loop matches HF generate."""
import torch

from moyu_core.decode import generate
from moyu_core.hooks import hook_count
from moyu_core.methods import make

TEXT = "The history of the Roman empire begins"


def test_sliced_griffin_equals_masked(lm):
    m = make("griffin", keep=0.5)
    a = generate(lm, TEXT, m, max_new_tokens=8, executed=True)
    b = generate(lm, TEXT, m, max_new_tokens=8, executed=False)
    assert a["label"] == "executed" and b["label"] == "simulated"
    assert a["tokens"] == b["tokens"]
    assert lm.layers[0].mlp.gate_proj.weight.shape[0] == lm.d_ff and hook_count(lm.model) == 0


def test_dense_matches_hf_generate(lm):
    d = generate(lm, TEXT, make("dense"), max_new_tokens=8)
    with torch.inference_mode():
        ref = lm.model.generate(torch.tensor([lm.encode(TEXT)]), max_new_tokens=8, do_sample=False)
    assert d["tokens"] == ref[0, -8:].tolist()


def test_gathered_per_token_methods_equal_masked(lm):
    """Executed per-token paths (gathered rows) give the tokens of the masked (simulated) run,
    and every layer's MLP is restored afterwards."""
    mlps = [layer.mlp for layer in lm.layers]
    for name in ("tda", "cats", "cett", "moe", "oracle"):
        m = make(name, keep=0.5)
        a = generate(lm, TEXT, m, max_new_tokens=6, executed=True)
        b = generate(lm, TEXT, m, max_new_tokens=6, executed=False)
        assert (a["label"], b["label"]) == ("executed", "simulated"), name
        assert a["tokens"] == b["tokens"], name
    assert [layer.mlp for layer in lm.layers] == mlps and hook_count(lm.model) == 0


def test_mlps_restored_when_a_method_raises(lm):
    from moyu_core.errors import MoyuError
    from moyu_core.methods.base import Method

    class Boom(Method):
        name = "boom"

        def select(self, layer, z, gate, lm, x=None):
            raise MoyuError("boom")

    mlps = [layer.mlp for layer in lm.layers]
    import pytest
    with pytest.raises(MoyuError):
        generate(lm, TEXT, Boom(make("oracle").params), max_new_tokens=3, executed=True)
    assert [layer.mlp for layer in lm.layers] == mlps and hook_count(lm.model) == 0


def test_llama_step_logits_match_transformers(lm):
    """The hand-written decode step gives transformers' logits, step after step."""
    from moyu_core import llama_step

    assert llama_step.supported(lm)
    ids = lm.encode(TEXT)
    with torch.inference_mode():
        out = lm.model(torch.tensor([ids]), use_cache=True)
        tok = int(out.logits[0, -1].argmax())
        dec = llama_step.LlamaDecoder(lm, out.past_key_values, len(ids), 6)
        past = out.past_key_values   # the decoder copied it; transformers goes on extending it
        for _ in range(5):
            ours = dec.step(tok)
            ref = lm.model(torch.tensor([[tok]]), cache=past, use_cache=True)
            past = ref.past_key_values
            assert torch.allclose(ours, ref.logits[0, -1], atol=1e-3, rtol=1e-4)
            tok = int(ours.argmax())
