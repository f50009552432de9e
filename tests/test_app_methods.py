"""The Methods page against the methods API contract (moyu_core.methods / evaluate / decode).

One test plugs in a stand-in that follows the contract (so the page is checked whatever state the
methods package is in); the other runs the real methods on the real default model when present.
"""
from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest

from test_app import app_db, assert_clean, open_app  # noqa: F401  (fixture re-used)


@dataclasses.dataclass(frozen=True)
class TopKParams:
    keep: float = 0.5
    layers_from: int = 0


class TopK:
    """Stand-in method: the true top-k of |z| (what the oracle keeps), from layer `layers_from`."""

    name = "topk_standin"

    def __init__(self, **params):
        self.params = TopKParams(**params)

    def describe(self) -> dict:
        return {"family": "test"}


@dataclasses.dataclass(frozen=True)
class ThresholdParams:
    threshold: float = 0.05


class Threshold:
    """Stand-in threshold method (no keep): keeps |z| >= threshold."""

    name = "threshold_standin"

    def __init__(self, **params):
        self.params = ThresholdParams(**params)

    def describe(self) -> dict:
        return {"family": "TDA"}


class Dense:
    name = "dense"
    params = TopKParams(keep=1.0)


def standin_modules(lm):
    from moyu_core import analysis, hooks
    from moyu_core.errors import MoyuError

    calls = {"keep_masks": 0, "evaluate": 0, "generate": 0}

    def make(name, **params):
        if name == "dense":
            return Dense()
        if name not in (TopK.name, Threshold.name):
            raise MoyuError(f"unknown method '{name}'")
        try:
            return (TopK if name == TopK.name else Threshold)(**params)
        except TypeError as e:
            raise MoyuError(str(e)) from e

    def keep_masks(lm_, method, ids):
        calls["keep_masks"] += 1
        z = hooks.capture(lm_, ids).z  # (L, T, d_ff)
        if method.name == Threshold.name:
            return np.abs(z) >= method.params.threshold
        masks = np.stack([analysis.top_mask(zl, method.params.keep) for zl in z])
        masks[:method.params.layers_from] = True
        return masks

    def evaluate(lm_, method, store=None, windows=12, prompt_len=256, gen_len=64, progress=None):
        calls["evaluate"] += 1
        if progress:
            progress(1.0)
        return {"method": method.name, "params": dataclasses.asdict(method.params), "ppl": 11.0,
                "dense_ppl": 10.0, "ppl_ratio": 1.1, "kl": 0.02, "top1_agree": 0.93,
                "sparsity": 1 - method.params.keep, "per_layer": [], "windows": windows}

    def generate(lm_, text, method, max_new_tokens=64, executed=True):
        calls["generate"] += 1
        dense = method.name == "dense"
        return {"text": f"{method.name} continuation", "tokens": max_new_tokens, "prefill_ms": 50.0,
                "decode_tokens_per_s": 20.0 if dense else 25.0, "label": "executed" if executed else "simulated"}

    methods = types.ModuleType("moyu_core.methods")
    methods.REGISTRY = {"dense": Dense, TopK.name: TopK, Threshold.name: Threshold}
    methods.make, methods.keep_masks = make, keep_masks
    evaluate_mod = types.ModuleType("moyu_core.evaluate")
    evaluate_mod.evaluate = evaluate
    decode = types.ModuleType("moyu_core.decode")
    decode.generate = generate
    return {"methods": methods, "evaluate": evaluate_mod, "decode": decode}, calls


def test_methods_page_against_the_contract(app_db, lm, monkeypatch):  # noqa: F811
    import moyu_core

    mods, calls = standin_modules(lm)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, f"moyu_core.{name}", mod)
        monkeypatch.setattr(moyu_core, name, mod, raising=False)
    from moyu_core.runs import capture_run

    store, _ = app_db  # float32 activations, so the oracle drawn from the store is exact
    rid = capture_run(lm, store, "Oracle check: the quick brown fox.", dtype="float32").run_id
    at = open_app("methods", run=rid, method=TopK.name, keep="0.25", layer="6")
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Recall of the oracle"] == "100.0%"  # the stand-in keeps the oracle's set
    assert metrics["Kept (this layer)"] == "25.0%"
    assert at.query_params["keep"] == "0.25" and at.query_params["method"] == TopK.name
    # a parameter edited live
    at.number_input(key=f"p_{TopK.name}_layers_from").set_value(10).run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Kept (this layer)"] == "100.0%"  # layer 6 < 10: dense
    n_masks = calls["keep_masks"]
    at.slider(key="url_layer").set_value(12).run()  # switching layer: no new forward pass
    assert calls["keep_masks"] == n_masks
    next(b for b in at.button if b.label == "Evaluate quality").click().run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Perplexity ratio"] == "1.100" and calls["evaluate"] == 1
    next(b for b in at.button if b.label == "Generate").click().run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Speed-up (executed)"] == "1.25×"
    from moyu_core import analysis

    ceiling = analysis.speedup_ceiling(analysis.mlp_weight_share(lm.model), 0.25)
    assert 1.75 < ceiling < 1.85 and metrics["Ceiling at keep 0.25"] == f"{ceiling:.2f}×"
    assert any(t.value == f"{TopK.name} continuation" for t in at.text)


def test_threshold_method_without_keep_gets_its_measured_ceiling(app_db, lm, monkeypatch):  # noqa: F811
    import moyu_core
    from moyu_core import analysis, hooks

    mods, _ = standin_modules(lm)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, f"moyu_core.{name}", mod)
        monkeypatch.setattr(moyu_core, name, mod, raising=False)
    store, rid = app_db
    at = open_app("methods", run=rid, method=Threshold.name)
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    next(b for b in at.button if b.label == "Generate").click().run()
    assert_clean(at)
    z = hooks.capture(lm, [i for i, _ in store.tokens(rid)]).z
    kept = float((np.abs(z) >= 0.05).mean())
    label = f"Ceiling at keep {kept:.2f}"
    ceiling = analysis.speedup_ceiling(analysis.mlp_weight_share(lm.model), kept)
    assert {m.label: m.value for m in at.metric}[label] == f"{ceiling:.2f}×"


def test_methods_page_on_real_methods(app_db):  # noqa: F811
    methods = pytest.importorskip("moyu_core.methods")
    names = [n for n in methods.REGISTRY if n not in ("dense", "oracle")]
    _, rid = app_db
    at = open_app("methods", run=rid, method=names[0], keep="0.5")
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Kept (this layer)"].endswith("%") and "Recall of the oracle" in metrics


def test_methods_page_dejavu_without_router_offers_training(app_db, tmp_path, monkeypatch):  # noqa: F811
    """No router yet: the dejavu tab explains and offers the Train router button (no error),
    and the other chosen method is drawn as usual."""
    monkeypatch.setenv("MOYU_ROUTER_DIR", str(tmp_path / "routers"))
    _, rid = app_db
    at = open_app("methods", run=rid, method="dejavu,tda", keep="0.5")
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any(b.label == "Train router" for b in at.button)
    assert "Recall of the oracle" in {m.label for m in at.metric}


def test_a_page_showing_a_run_prepares_the_methods_page(app_db, lm):  # noqa: F811
    """Explore, once drawn, starts in the background the forward the gate/input methods read and
    the oracle at the session's keep for every layer; both equal what is computed directly."""
    import moyu_ui
    from moyu_core import analysis, methods

    store, rid = app_db
    at = open_app(run=rid)  # Explore
    assert_clean(at)
    gate, x = moyu_ui._INPUTS[(moyu_ui.db_path(), lm.name, rid)].result(timeout=120)
    ids = [i for i, _ in store.tokens(rid)]
    want_gate, want_x = methods.method_inputs(lm, ids)
    np.testing.assert_allclose(gate, want_gate, atol=1e-5)
    np.testing.assert_allclose(x, want_x, atol=1e-5)
    moyu_ui._INPUTS_POOL.submit(lambda: None).result(timeout=120)  # one worker: the oracle is done
    for li in range(lm.n_layers):
        assert (moyu_ui.db_path(), rid, li, 0.5) in moyu_ui._ORACLES
    for li in (0, lm.n_layers - 1):
        np.testing.assert_array_equal(moyu_ui.oracle_mask(rid, li, 0.5),
                                      analysis.top_mask(store.activations(rid, li), 0.5))
