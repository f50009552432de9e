"""Decode: sliced griffin gives the same tokens as masked griffin; dense loop matches HF generate."""
import pytest
import torch

from moyu_core.decode import generate
from moyu_core.errors import MoyuError
from moyu_core.hooks import hook_count
from moyu_core.methods import make
from moyu_core.methods.base import Method

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


def test_kernel_per_token_methods_equal_masked(lm):
    """Executed per-token paths (fused kernels) give the tokens of the masked (simulated) run,
    and every layer's MLP is restored afterwards. (A threshold method can flip an entry sitting
    within rounding of its threshold, so the run is short.)"""
    from moyu_core.router import load_router

    mlps = [layer.mlp for layer in lm.layers]
    names = ["tda", "cats", "cett", "moe", "moe-oracle", "oracle", "teal"]
    names += ["dejavu"] if load_router(lm) is not None else []
    for name in names:
        m = make(name, keep=0.5)
        a = generate(lm, TEXT, m, max_new_tokens=6, executed=True)
        b = generate(lm, TEXT, m, max_new_tokens=6, executed=False)
        assert (a["label"], b["label"]) == ("executed", "simulated"), name
        assert a["tokens"] == b["tokens"], name
    assert [layer.mlp for layer in lm.layers] == mlps and hook_count(lm.model) == 0


def test_slicing_time_is_measured_for_sequence_level_methods(lm):
    g = generate(lm, TEXT, make("griffin", keep=0.5), max_new_tokens=3)
    d = generate(lm, TEXT, make("dense"), max_new_tokens=3)
    assert g["slice_ms"] > 0 and g["prefill_ms"] > 0 and d["slice_ms"] >= 0
    assert g["slice_ms"] > d["slice_ms"]


def test_ceiling_per_method_kind(lm):
    """One formula, s by what the method can skip: smollm2 at keep 0.5 (DESIGN.md)."""
    from moyu_core.decode import ceiling

    got = {n: ceiling(lm, n, 0.5) for n in ("tda", "cats", "dejavu", "griffin", "moe", "moe-oracle", "teal")}
    assert round(got["tda"], 2) == 1.11 and round(got["cats"], 2) == 1.25 and round(got["moe-oracle"], 2) == 1.25
    assert round(got["dejavu"], 2) == round(got["griffin"], 2) == round(got["moe"], 2) == 1.42
    assert round(got["teal"], 2) == 1.65
    assert ceiling(lm, "dense", 0.5) == 1.0 and ceiling(lm, "no-such-method", 0.5) is None


def test_compare_speed_reports_the_median_of_alternating_pairs(lm):
    from moyu_core.decode import compare_speed

    r = compare_speed(lm, TEXT, make("griffin", keep=0.5), max_new_tokens=4, pairs=3)
    assert len(r["ratios"]) == 3 and sorted(r["ratios"])[1] == r["speedup_median"]
    assert r["label"] == "executed" and r["method"]["method"] == "griffin"


def test_in_turn_decodes_each_side_as_generate_does(lm):
    """Two decoders stepping in turn (the speed protocol's pairs) give each side the tokens of its
    own decode: dense, a per-token method, a sequence-level one and teal (its own attention
    products); the model's MLPs are left as they were."""
    from moyu_core.decode import compare_speed, in_turn

    mlps = [layer.mlp for layer in lm.layers]
    for m in (make("cats", keep=0.5), make("griffin", keep=0.5), make("teal", keep=0.5)):
        d, r = in_turn(lm, TEXT, m, 6)
        assert d["tokens"] == generate(lm, TEXT, make("dense"), 6)["tokens"]
        assert r["tokens"] == generate(lm, TEXT, m, 6)["tokens"], m.name
        assert r["label"] == "executed" and r["method"] == m.name and len(r["tokens"]) == 6
        assert (r["slice_ms"] > 0) == m.sequence_level
    assert [layer.mlp for layer in lm.layers] == mlps and hook_count(lm.model) == 0
    with pytest.raises(MoyuError, match="max_new_tokens"):
        compare_speed(lm, TEXT, make("cats", keep=0.5), max_new_tokens=0)

    class NoKernel(Method):   # a method without an executed path
        name = "no-kernel"

        def select(self, layer, z, gate, lm, x=None):
            return z.abs() > 0
    with pytest.raises(MoyuError, match="in turn"):
        in_turn(lm, TEXT, NoKernel(make("oracle").params), 4)


def test_mlps_restored_when_a_method_raises(lm):

    class Boom(Method):
        name = "boom"

        def select(self, layer, z, gate, lm, x=None):
            raise MoyuError("boom")

    mlps = [layer.mlp for layer in lm.layers]
    with pytest.raises(MoyuError):
        generate(lm, TEXT, Boom(make("oracle").params), max_new_tokens=3, executed=True)
    assert [layer.mlp for layer in lm.layers] == mlps and hook_count(lm.model) == 0


def test_fused_attention_step_equals_the_torch_step(lm):
    """The step with each layer's attention half in one kernel call (`llama_attention`) gives the
    logits and KV caches of the same step in torch ops, dense and with TEAL's skipped channels."""
    from moyu_core import llama_step
    from moyu_core.preparation import prepare

    ids = lm.encode(TEXT)
    teal = make("teal", keep=0.5)
    prepare(lm, teal)
    for linears in (llama_step.DenseLinears(lm),
                    llama_step.InputSparseLinears(lm, [teal.layer_thresholds(i, lm) for i in range(lm.n_layers)])):
        with torch.inference_mode():
            past = lm.model(torch.tensor([ids]), use_cache=True).past_key_values
            fused = llama_step.LlamaDecoder(lm, past, len(ids), 4, linears)
            plain = llama_step.LlamaDecoder(lm, past, len(ids), 4, linears)
            assert fused.fused is not None
            plain.fused = None
            tok = ids[-1]
            for _ in range(4):
                a, b = fused.step(tok), plain.step(tok)
                assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), type(linears).__name__
                tok = int(b.argmax())
            for i in range(lm.n_layers):
                assert torch.allclose(fused.k[i], plain.k[i], atol=1e-5)
                assert torch.allclose(fused.v[i], plain.v[i], atol=1e-5)


def test_native_step_equals_the_python_step(lm):
    """With bound MLP kernels the whole step is one call (the kernels' `Decoder`): the logits and KV
    caches of the step driven from Python, dense and teal; a Python function as an MLP keeps the
    Python step; a step past the positions the decoder was built for is refused."""
    from moyu_core import llama_step
    from moyu_core.decode import _sparse_linears, method_kernels
    from moyu_core.preparation import prepare

    ids = lm.encode(TEXT)
    for m in (make("dense"), make("teal", keep=0.5)):
        prepare(lm, m)
        runs = method_kernels(lm, m)
        with torch.inference_mode():
            past = lm.model(torch.tensor([ids]), use_cache=True).past_key_values
            native = llama_step.LlamaDecoder(lm, past, len(ids), 4, _sparse_linears(lm, m), runs)
            plain = llama_step.LlamaDecoder(lm, past, len(ids), 4, _sparse_linears(lm, m), runs)
            assert native.native is not None
            plain.native = None
            tok = ids[-1]
            for _ in range(4):
                a, b = native.step(tok), plain.step(tok)
                assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), m.name
                tok = int(b.argmax())
            for i in range(lm.n_layers):
                assert torch.allclose(native.k[i], plain.k[i], atol=1e-5)
                assert torch.allclose(native.v[i], plain.v[i], atol=1e-5)
            with pytest.raises(RuntimeError, match="outside the rotary table"):
                native.step(tok)
            as_python = [lambda x, r=r: r(x) for r in runs]
            assert llama_step.LlamaDecoder(lm, past, len(ids), 2, None, as_python).native is None


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
