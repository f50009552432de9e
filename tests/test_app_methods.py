"""A new method is one file and one registry line: a toy method written to a temporary module and
registered works in evaluation, in simulated decode and on the app's Methods page, with nothing
else changed. Then the Methods page on the real methods, and the background work it reads."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from moyu_core import analysis
from test_app import app_db, assert_clean, chart_specs, open_app, plotly_array, settle  # noqa: F401  (fixture re-used)

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


def grid_panels(grid: dict) -> dict[str, tuple[list[str], np.ndarray]]:
    """The side-by-side grid's methods in order: name -> (its neuron columns, its categories (T,
    columns)); a row of methods is one heatmap whose columns are named "n17 · tda"."""
    out: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    for d in grid["data"]:
        z = plotly_array(d["z"])
        for j, x in enumerate(d["x"]):
            neuron, name = x.split(" · ")
            cols, cats = out.setdefault(name, ([], []))
            cols.append(neuron)
            cats.append(z[:, j])
    return {name: (cols, np.stack(cats, axis=1)) for name, (cols, cats) in out.items()}


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
    at = open_app("methods", run=rid, keep="0.5", layer="6", method="")
    assert_clean(at)
    assert {"toy", "toy_threshold", "dense", "oracle"} <= set(at.multiselect(key="url_method").options)
    at.multiselect(key="url_method").set_value(["toy"]).run()
    settle(at)
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.query_params["method"] == "toy"
    grid = next(s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Layer 6, keep 0.50: tokens"))
    assert list(grid_panels(grid)) == ["toy"]

    def expect(li: int, odd_weight: float) -> tuple[str, str]:
        mask = toy_mask(z[li], 0.5, odd_weight)
        return f"{mask.mean():.1%}", f"{recall(mask, analysis.top_mask(z[li], 0.5)):.1%}"

    shown = metrics(at)
    assert (shown["Kept (this layer)"], shown["Recall of the oracle"]) == expect(6, 2.0)
    assert recall(toy_mask(z[6], 0.5, 2.0), analysis.top_mask(z[6], 0.5)) < 0.99  # not the oracle's set
    per_layer = next(s for s in chart_specs(at) if s["layout"]["title"]["text"] == "Recall of the oracle per layer")
    want = [recall(toy_mask(zl, 0.5, 2.0), analysis.top_mask(zl, 0.5)) for zl in z]
    np.testing.assert_allclose(plotly_array(per_layer["data"][0]["y"]), want, atol=1e-4)

    at.number_input(key="p_toy_odd_weight").set_value(1.0).run()  # the toy's rule becomes |z|
    settle(at)
    assert_clean(at)
    shown = metrics(at)
    assert (shown["Kept (this layer)"], shown["Recall of the oracle"]) == expect(6, 1.0)
    n = toy.Toy.selections
    at.slider(key="url_layer").set_value(12).run()
    assert toy.Toy.selections == n  # every layer's masks were drawn in the background already
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
    from moyu_core import decode

    assert shown["Ceiling at keep 0.50"] == f"{decode.ceiling(lm, 'toy', 0.5):.2f}×"   # the toy's own ceiling
    assert "Speed-up (executed)" in shown or "Speed-up (simulated)" in shown
    assert len([t for t in at.text if t.value]) == 2  # dense and toy continuations


def test_method_without_keep_gets_the_ceiling_at_its_measured_share(app_db, lm, toy):  # noqa: F811
    store, rid = app_db
    at = open_app("methods", run=rid, method="toy_threshold")
    settle(at)
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    next(s for s in at.select_slider if s.label == "New tokens").set_value(16)
    next(b for b in at.button if b.label == "Generate").click().run()
    assert_clean(at)
    rec = store.run(rid)
    kept = float(np.mean([(np.abs(store.activations(rid, li)) >= 0.05).mean() for li in range(rec.n_layers)]))
    from moyu_core import decode

    assert metrics(at)[f"Ceiling at keep {kept:.2f}"] == f"{decode.ceiling(lm, 'toy_threshold', kept):.2f}×"


def test_methods_page_on_real_methods(app_db):  # noqa: F811
    from moyu_core.methods import REGISTRY

    names = [n for n in REGISTRY if n not in ("dense", "oracle")]
    _, rid = app_db
    at = open_app("methods", run=rid, method=names[0], keep="0.5")
    settle(at)
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
    settle(at)
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.button(key="train_router").label == "Train router"
    assert "Recall of the oracle" in {m.label for m in at.metric}


def test_a_page_showing_a_run_prepares_the_methods_page(app_db, lm):  # noqa: F811
    """Explore, once drawn, starts in the background the forward the gate/input methods read, the
    oracle at the session's keep for every layer and the data methods derive from the weights;
    the first two equal what is computed directly."""
    import ui_jobs
    import ui_store
    from moyu_core import masks, methods, preparation

    store, rid = app_db
    preparation._derived.clear()   # other tests may have derived them already
    ui_jobs._PREFETCHED.pop(("derived", lm.name, str(lm.fingerprint)))
    at = open_app(run=rid)  # Explore
    assert_clean(at)
    gate, x = ui_jobs.INPUTS.peek((ui_store.db_path(), lm.name, rid)).result(timeout=120)
    ids = [i for i, _ in store.tokens(rid)]
    want_gate, want_x = masks.method_inputs(lm, ids)
    np.testing.assert_allclose(gate, want_gate, atol=1e-5)
    np.testing.assert_allclose(x, want_x, atol=1e-5)
    ui_jobs._NUMBER_POOL.submit(lambda: None).result(timeout=120)  # one worker: the oracle is done
    ui_jobs._MODEL_POOL.submit(lambda: None).result(timeout=120)   # and the derived data
    derived = [m for m in map(methods.make, methods.REGISTRY) if "derived" in m.requires()]
    assert {m.name for m in derived} >= {"moe", "static", "cett"}
    for m in derived:
        assert (lm.fingerprint, m.name, m.derive_key()) in preparation._derived, m.name
    for li in range(lm.n_layers):
        assert (ui_store.db_path(), rid, li, 0.5) in ui_jobs._ORACLES
    for li in (0, lm.n_layers - 1):
        np.testing.assert_array_equal(ui_jobs.oracle_mask(rid, li, 0.5),
                                      analysis.top_mask(store.activations(rid, li), 0.5))


def test_side_by_side_with_dense_and_oracle_from_the_url(app_db):  # noqa: F811
    """method=oracle in a link is kept; several methods, dense and the oracle among them, in one
    grid for the same layer and tokens, each with recall, kept share and quality; an unknown
    name is left out with a notice."""
    store, rid = app_db
    at = open_app("methods", run=rid, method="oracle,dense,tda,nosuch", keep="0.25", layer="4")
    settle(at)
    assert_clean(at)
    assert at.multiselect(key="url_method").value == ["oracle", "dense", "tda"]
    assert any("nosuch" in w.value and "not registered" in w.value for w in at.warning)
    grid = next(s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Layer 4, keep 0.25: tokens"))
    panels = grid_panels(grid)
    assert list(panels) == ["oracle", "dense", "tda"]
    ys = {tuple(d["y"]) for d in grid["data"]}
    assert len(ys) == 1   # the same tokens for every method
    assert len({tuple(cols) for cols, _ in panels.values()}) == 1   # and the same neurons
    recalls = [m.value for m in at.metric if m.label == "Recall of the oracle"]
    kept = [m.value for m in at.metric if m.label == "Kept (this layer)"]
    assert recalls[:2] == ["100.0%", "100.0%"] and kept[1] == "100.0%" and kept[0] == "25.0%"
    assert len([m for m in at.metric if m.label == "Perplexity ratio"]) >= 3   # quality on each card
    z = store.activations(rid, 4)
    oracle_cats = panels["oracle"][1]
    assert set(np.unique(oracle_cats)) <= {0, 1}   # the oracle never disagrees with itself
    assert at.query_params["method"] == "oracle,dense,tda" and z.shape[1] == 1536


def test_quality_on_the_prompt_equals_the_core_computation(app_db, lm):  # noqa: F811
    from moyu_core import prompt_quality
    from moyu_core.methods import make

    store, rid = app_db
    at = open_app("methods", run=rid, method="oracle,griffin", keep="0.5")
    settle(at)
    at.button(key="pq_run").click().run()
    settle(at)
    assert_clean(at)
    chart = next(s for s in chart_specs(at) if "on each token of the prompt" in s["layout"]["title"]["text"])
    by_name = {d["name"]: plotly_array(d["y"]).astype(float) for d in chart["data"]}
    ids = [i for i, _ in store.tokens(rid)]
    for name in ("oracle", "griffin"):
        want = prompt_quality.prompt_quality(lm, make(name, keep=0.5), ids)["kl"]
        np.testing.assert_allclose(by_name[name], np.round(want, 5), atol=2e-5, equal_nan=True)
    assert np.isnan(by_name["griffin"][:len(ids) // 2 + 1]).all()   # decides from the first half
    table = next(d.value for d in at.dataframe if "where it acts" in d.value)
    assert list(table["method"]) == ["oracle", "griffin"] and table["where it acts"][1].startswith("decides from")
    assert any("pydoc_data.topics" in c.value for c in at.caption)   # the standard protocol says its text
    assert any("KL on this prompt" == m.label for m in at.metric)


def test_dejavu_banner_goes_when_the_router_is_trained(app_db, monkeypatch):  # noqa: F811
    import torch

    from moyu_core import router

    _, rid = app_db
    trained = []
    fake = router.Router([torch.randn(8, 576) for _ in range(30)], [torch.randn(1536, 8) for _ in range(30)], {})
    monkeypatch.setattr(router, "load_router", lambda lm: fake if trained else None)
    monkeypatch.setattr(router, "train", lambda lm, store, progress=None: trained.append(1) or {"recall": 0.9})
    at = open_app("methods", run=rid, method="dejavu", keep="0.5")
    settle(at)
    assert at.button(key="train_router").label == "Train router"
    assert any("no trained router" in i.value for i in at.info)
    at.button(key="train_router").click().run()
    assert any("Router trained" in s.value for s in at.success)
    assert not any("no trained router" in i.value for i in at.info)
    settle(at)
    assert_clean(at)
    assert not any("no trained router" in i.value for i in at.info)
    assert "Recall of the oracle" in {m.label for m in at.metric}


def test_generate_and_evaluate_are_stored_and_charted_on_compare(app_db, lm):  # noqa: F811
    store, rid = app_db
    at = open_app("methods", run=rid, method="griffin", keep="0.5")
    settle(at)
    next(s for s in at.select_slider if s.label == "New tokens").set_value(16)
    next(b for b in at.button if b.label == "Generate").click().run()
    assert_clean(at)
    got = [r for r in store.results(kind="decode") if r["method"] == "griffin"]
    assert got and got[-1]["result"]["label"] in ("executed", "simulated") and got[-1]["result"]["ratios"]
    next(s for s in at.select_slider if s.label == "Windows").set_value(2)
    next(b for b in at.button if b.label == "Evaluate quality").click().run()
    assert_clean(at)
    at.switch_page("app_pages/compare.py").run()
    assert_clean(at)
    df = at.dataframe[0].value
    row = df[(df["method"] == "griffin") & (df["keep"] == 0.5)].iloc[0]
    assert row["speedup"] == pytest.approx(got[-1]["result"]["speedup"]) and row["timing"] == got[-1]["result"]["label"]
    assert row["ppl_ratio_lo"] <= row["ppl_ratio"] <= row["ppl_ratio_hi"]
    spec = next(s for s in chart_specs(at) if any(d.get("name") == "Pareto frontier" for d in s["data"]))
    assert any(d.get("error_y") for d in spec["data"] if d.get("name") == "griffin")
    at.radio(key="url_x").set_value("keep").run()
    spec = next(s for s in chart_specs(at) if any(d.get("name") == "Pareto frontier" for d in s["data"]))
    assert spec["layout"]["xaxis"]["range"] == [0, 1.02]
