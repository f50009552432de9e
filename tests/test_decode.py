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
