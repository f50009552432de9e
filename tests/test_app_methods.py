"""A new method is one file and one registry line: a toy method written to a temporary module and
registered works in evaluation, in simulated decode and on the app's Methods page, with nothing
else changed. Then the Methods page on the real methods, and the background work it reads."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from moyu_core import analysis
from test_app import app_db, assert_clean, chart_specs, open_app, plotly_array  # noqa: F401  (fixture re-used)

TOY_SOURCE = '''
"""toy: each token's top-k of |z|, odd-indexed neurons weighted `odd_weight` times."""
from dataclasses import dataclass

import torch

from moyu_core.methods.base import Method, topk_mask


@dataclass(frozen=True)
class ToyParams:
    keep: float = 0.5
    odd_weight: float = 2.0


class Toy(Method):
    """Toy: top-k of |z| * w per token, w = odd_weight on odd-indexed neurons, 1 elsewhere."""

    name = "toy"
    Params = ToyParams
    selections = 0  # calls of select, all instances together

    def select(self, layer, z, gate, lm, x=None):
        Toy.selections += 1
        w = torch.ones(z.shape[-1])
        w[1::2] = self.params.odd_weight
        return topk_mask(z.abs() * w, self.params.keep)


@dataclass(frozen=True)
class ToyThresholdParams:
    threshold: float = 0.05


class ToyThreshold(Method):
    """Toy threshold method, no keep: keeps |z| >= threshold."""

    name = "toy_threshold"
    Params = ToyThresholdParams

    def select(self, layer, z, gate, lm, x=None):
        return z.abs() >= self.params.threshold
'''


@pytest.fixture
def toy(tmp_path):
    """The toy methods' module, imported from a file and registered; unregistered afterwards."""
    from moyu_core.methods import REGISTRY, register

    path = tmp_path / "toy_method.py"
    path.write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location("toy_method", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        register(mod.Toy)
        register(mod.ToyThreshold)
        yield mod
    finally:
        REGISTRY.pop("toy", None)
        REGISTRY.pop("toy_threshold", None)


def toy_mask(z: np.ndarray, keep: float, odd_weight: float) -> np.ndarray:
    """bool (T, d_ff): the toy's rule computed here, apart from the method's code."""
    w = np.ones(z.shape[1])
    w[1::2] = odd_weight
    k = int(round(keep * z.shape[1]))
    top = np.argsort(-np.abs(z) * w, axis=1, kind="stable")[:, :k]
    mask = np.zeros(z.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def recall(keep: np.ndarray, oracle: np.ndarray) -> float:
    return (keep & oracle).sum() / oracle.sum()


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_toy_method_from_a_file_works_in_eval_and_simulated_decode(lm, toy):
    from moyu_core.decode import generate
    from moyu_core.evaluate import evaluate
    from moyu_core.methods import make

    res = evaluate(lm, make("toy", keep=0.5), windows=1, prompt_len=32, gen_len=8)
    assert math.isfinite(res["ppl"]) and res["ppl_ratio"] != 1.0  # the toy's masks were applied
    assert res["sparsity"] == pytest.approx(0.5, abs=0.01)
    before = toy.Toy.selections
    out = generate(lm, "some text", make("toy", keep=0.5), max_new_tokens=4, executed=False)
    assert out["label"] == "simulated" and out["n_tokens"] == len(out["tokens"]) == 4
    assert toy.Toy.selections > before


def test_toy_method_on_the_methods_page(app_db, lm, toy):  # noqa: F811
    """Listed, selected, drawn; its kept share and recall of the oracle (per layer too) equal the
    toy's rule and `analysis.top_mask` computed here on the stored z; a parameter edit, a layer
    switch (no new forward), quality and timing."""
    from moyu_core.runs import capture_run

    store, _ = app_db  # float32 activations: the z read here is the z the page reads
    rid = capture_run(lm, store, "Toy check: the quick brown fox jumps over the lazy dog.", dtype="float32").run_id
    z = [store.activations(rid, li) for li in range(lm.n_layers)]
    at = open_app("methods", run=rid, keep="0.5", layer="6")
    assert_clean(at)
    assert {"toy", "toy_threshold"} <= set(at.multiselect(key="url_method").options)
    at.multiselect(key="url_method").set_value(["toy"]).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.query_params["method"] == "toy"
    titles = [s["layout"]["title"]["text"] for s in chart_specs(at) if s["data"][0]["type"] == "heatmap"]
    assert any(t.startswith("Layer 6: toy against the oracle") for t in titles), titles

    def expect(li: int, odd_weight: float) -> tuple[str, str]:
        mask = toy_mask(z[li], 0.5, odd_weight)
        return f"{mask.mean():.1%}", f"{recall(mask, analysis.top_mask(z[li], 0.5)):.1%}"

    shown = metrics(at)
    assert (shown["Kept (this layer)"], shown["Recall of the oracle"]) == expect(6, 2.0)
    assert recall(toy_mask(z[6], 0.5, 2.0), analysis.top_mask(z[6], 0.5)) < 0.99  # not the oracle's set
    per_layer = next(s for s in chart_specs(at) if s["layout"]["title"]["text"] == "Recall per layer")
    want = [recall(toy_mask(zl, 0.5, 2.0), analysis.top_mask(zl, 0.5)) for zl in z]
    np.testing.assert_allclose(plotly_array(per_layer["data"][0]["y"]), want, atol=1e-4)

    at.number_input(key="p_toy_odd_weight").set_value(1.0).run()  # the toy's rule becomes |z|
    assert_clean(at)
    shown = metrics(at)
    assert (shown["Kept (this layer)"], shown["Recall of the oracle"]) == expect(6, 1.0)
    n = toy.Toy.selections
    at.slider(key="url_layer").set_value(12).run()
    assert toy.Toy.selections == n  # every layer's masks were drawn at once
    shown = metrics(at)
    assert (shown["Kept (this layer)"], shown["Recall of the oracle"]) == expect(12, 1.0)

    next(s for s in at.select_slider if s.label == "Windows").set_value(2)
    next(b for b in at.button if b.label == "Evaluate quality").click().run()
    assert_clean(at)
    res = [r["result"] for r in store.results(kind="eval", model=lm.name) if r["result"]["method"] == "toy"][-1]
    assert res["params"] == {"keep": 0.5, "odd_weight": 1.0} and res["windows"] == 2
    shown = metrics(at)
    assert shown["Perplexity ratio"] == f"{res['ppl_ratio']:.3f}" and shown["Measured sparsity"] == "50.0%"

    next(s for s in at.select_slider if s.label == "New tokens").set_value(16)
    next(b for b in at.button if b.label == "Generate").click().run()
    assert_clean(at)
    shown = metrics(at)
    ceiling = analysis.speedup_ceiling(analysis.mlp_weight_share(lm.model), 0.5)
    assert shown["Ceiling at keep 0.50"] == f"{ceiling:.2f}×" and "Speed-up (executed)" in shown
    assert len([t for t in at.text if t.value]) == 2  # dense and toy continuations


def test_method_without_keep_gets_the_ceiling_at_its_measured_share(app_db, lm, toy):  # noqa: F811
    store, rid = app_db
    at = open_app("methods", run=rid, method="toy_threshold")
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    next(s for s in at.select_slider if s.label == "New tokens").set_value(16)
    next(b for b in at.button if b.label == "Generate").click().run()
    assert_clean(at)
    rec = store.run(rid)
    kept = float(np.mean([(np.abs(store.activations(rid, li)) >= 0.05).mean() for li in range(rec.n_layers)]))
    ceiling = analysis.speedup_ceiling(analysis.mlp_weight_share(lm.model), kept)
    assert metrics(at)[f"Ceiling at keep {kept:.2f}"] == f"{ceiling:.2f}×"


def test_methods_page_on_real_methods(app_db):  # noqa: F811
    from moyu_core.methods import REGISTRY

    names = [n for n in REGISTRY if n not in ("dense", "oracle")]
    _, rid = app_db
    at = open_app("methods", run=rid, method=names[0], keep="0.5")
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    shown = metrics(at)
    assert shown["Kept (this layer)"].endswith("%") and "Recall of the oracle" in shown


def test_methods_page_dejavu_without_router_offers_training(app_db, tmp_path, monkeypatch):  # noqa: F811
    """No router yet: the dejavu tab explains and offers the Train router button (no error),
    and the other chosen method is drawn as usual."""
    monkeypatch.setenv("MOYU_ROUTER_DIR", str(tmp_path / "routers"))
    _, rid = app_db
    at = open_app("methods", run=rid, method="dejavu,tda", keep="0.5")
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.button(key="train_router").label == "Train router"
    assert "Recall of the oracle" in {m.label for m in at.metric}


def test_a_page_showing_a_run_prepares_the_methods_page(app_db, lm):  # noqa: F811
    """Explore, once drawn, starts in the background the forward the gate/input methods read and
    the oracle at the session's keep for every layer; both equal what is computed directly."""
    import ui_jobs
    import ui_store
    from moyu_core import masks

    store, rid = app_db
    at = open_app(run=rid)  # Explore
    assert_clean(at)
    gate, x = ui_jobs._INPUTS[(ui_store.db_path(), lm.name, rid)].result(timeout=120)
    ids = [i for i, _ in store.tokens(rid)]
    want_gate, want_x = masks.method_inputs(lm, ids)
    np.testing.assert_allclose(gate, want_gate, atol=1e-5)
    np.testing.assert_allclose(x, want_x, atol=1e-5)
    ui_jobs._POOL.submit(lambda: None).result(timeout=120)  # one worker: the oracle is done
    for li in range(lm.n_layers):
        assert (ui_store.db_path(), rid, li, 0.5) in ui_jobs._ORACLES
    for li in (0, lm.n_layers - 1):
        np.testing.assert_array_equal(ui_jobs.oracle_mask(rid, li, 0.5),
                                      analysis.top_mask(store.activations(rid, li), 0.5))
