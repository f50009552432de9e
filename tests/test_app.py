"""Every page of the app through Streamlit's AppTest, on the real default model."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from moyu_core import wordlists

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "streamlit_app.py")

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


@pytest.fixture(scope="module")
def app_db(tmp_path_factory, lm):
    """A database with one captured run, used as the app's MOYU_DB for this module."""
    from moyu_core.runs import capture_run
    from moyu_core.store import Store

    path = tmp_path_factory.mktemp("app") / "app.duckdb"
    store = Store(path)
    run = capture_run(lm, store, "The cat sat on the mat because the mat was warm.")
    old = os.environ.get("MOYU_DB")
    os.environ["MOYU_DB"] = str(path)
    yield store, run.run_id
    store.close()
    if old is None:
        os.environ.pop("MOYU_DB", None)
    else:
        os.environ["MOYU_DB"] = old


def open_app(page: str | None = None, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    return at


def settle(at: AppTest, timeout: float = 240) -> AppTest:
    """Run again until no background job shows its progress (the browser polls; AppTest draws once)."""
    import time

    deadline = time.monotonic() + timeout
    while any(p.proto.text.startswith("⏳") for p in at.get("progress")):
        assert time.monotonic() < deadline, [p.proto.text for p in at.get("progress")]
        time.sleep(0.5)
        at.run()
    return at


def assert_clean(at: AppTest) -> None:
    """No exception element reached the page (a traceback would)."""
    assert not at.exception, [e.value for e in at.exception]


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def plotly_array(v) -> np.ndarray:
    """A plotly JSON array: a list, or the typed form {dtype, bdata (base64), shape}."""
    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v)


def test_explore_capture_shows_heatmap_inertia_and_url(app_db):
    at = open_app()
    assert_clean(at)
    at.text_area(key="prompt_text").set_value("Red blue seven apple river stone.")
    at.button(key="capture").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    rid = at.query_params["run"]
    assert rid and app_db[0].has_run(rid)
    heat = [s for s in chart_specs(at) if s["data"][0]["type"] == "heatmap"]
    assert heat and "neuron" in heat[0]["data"][0]["hovertemplate"]
    labels = {m.label: m.value for m in at.metric}
    assert labels["Adjacent top-10% overlap"].endswith("%")
    before = labels["Adjacent top-10% overlap"]
    at.slider(key="url_layer").set_value(2).run()
    assert at.query_params["layer"] == "2"
    assert {m.label: m.value for m in at.metric}["Adjacent top-10% overlap"] != before


def test_explore_view_restores_from_url(app_db):
    _, rid = app_db
    at = open_app(run=rid, layer=4, norm="abs", order="index")
    assert_clean(at)
    assert at.slider(key="url_layer").value == 4
    assert at.radio(key="url_norm").value == "abs"
    assert at.radio(key="url_order").value == "index"
    assert any(rid in c.value for c in at.code)  # the share link carries the view
    share = next(c.value for c in at.code if rid in c.value)
    assert "layer=4" in share and "norm=abs" in share


def test_layer_chosen_on_explore_is_kept_on_methods(app_db):
    _, rid = app_db
    at = open_app(run=rid, method="")  # no method chosen: the Methods page draws its controls only
    at.slider(key="url_layer").set_value(4).run()
    at.switch_page("app_pages/methods.py").run()
    assert_clean(at)
    assert at.slider(key="url_layer").value == 4 and at.query_params["layer"] == "4"


def test_bad_url_and_bad_prompt_get_friendly_messages(app_db):
    at = open_app(run="nosuchrun", layer="banana")
    assert_clean(at)
    assert any("not in this server's database" in w.value for w in at.warning)
    at.text_area(key="prompt_text").set_value("bad \x07 bell")
    at.button(key="capture").click().run()
    assert_clean(at)
    assert any("control character" in e.value for e in at.error)


def test_parallel_capture_with_prefix(app_db):
    store, _ = app_db
    at = open_app()
    at.text_area(key="prompt_text").set_value("red seven apple")
    at.radio(key="capture_mode").set_value("parallel")
    at.text_input(key="capture_prefix").set_value("Words:")
    at.button(key="capture").click().run()
    assert_clean(at)
    rec = store.run(at.query_params["run"])
    assert rec.mode == "parallel" and rec.prefix == "Words:"


def test_one_token_prompt_renders_without_undefined_figures(app_db):
    at = open_app()
    at.text_area(key="prompt_text").set_value("Hello")
    at.button(key="capture").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    values = {m.label: m.value for m in at.metric}
    assert values["Adjacent top-10% overlap"] == "–" and "nan" not in " ".join(values.values())


def test_random_word_list_button_fills_a_seeded_prompt(app_db):
    at = open_app()
    at.number_input(key="rw_n").set_value(12)
    at.number_input(key="rw_seed").set_value(5)
    at.button(key="random_words").click().run()
    assert at.text_area(key="prompt_text").value == wordlists.random_word_list(12, 5)


def test_long_prompt_heatmap_messages_stay_small(app_db, lm):
    from moyu_core.runs import capture_run

    store, _ = app_db
    text = wordlists.reference_text(6000)
    ids = lm.encode(text)[:1024]
    run = capture_run(lm, store, lm.tokenizer.decode(ids))
    assert run.tokens >= 1000
    at = open_app(run=run.run_id, tok=100, width=128, nstart=32)
    assert_clean(at)
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    titles = [json.loads(s)["layout"]["title"]["text"] for s in specs]
    assert any("tokens 100–147, neurons 32–159" in t for t in titles), titles  # window from the URL
    assert len(specs) >= 2  # pooled overview + detailed window
    assert max(len(s) for s in specs) < 500_000  # Streamlit's limit is 200 MB; stay far below
    overview = json.loads(specs[0])["data"][0]  # every token, pooled into blocks
    z, y = plotly_array(overview["z"]), overview["y"]   # y: each block's tokens, with their text
    assert overview["type"] == "heatmap" and z.shape[0] <= 128 and z.size <= 40_000
    assert y[0].startswith("0–") and int(y[-1].split("–")[1].split(" ")[0]) == run.tokens - 1
    assert len(y) == z.shape[0] and "«" in y[1]
    where = plotly_array(overview["customdata"]).reshape(*z.shape, 2)   # strongest token and neuron per block
    zz = store.activations(run.run_id, 15)
    i, j = 3, 7
    token, neuron = where[i, j]
    assert abs(abs(zz[token, neuron]) / np.abs(zz[token]).max() - abs(z[i, j])) < 2e-3   # per-token normalised


def test_heavy_hitters_page(app_db):
    _, rid = app_db
    at = open_app("heavy_hitters", run=rid)
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Top heavy hitter"].startswith("#")
    assert any("<sup" in m.value and "#1" in m.value for m in at.html)
    at.number_input(key="url_k").set_value(3).run()
    assert at.query_params["k"] == "3"
    assert sum(m.value.count("<sup") for m in at.html) == 3


def test_runs_page_lists_opens_and_deletes(app_db, lm):
    from moyu_core.runs import capture_run

    store, rid = app_db
    extra = capture_run(lm, store, "A run to delete.").run_id
    at = open_app("runs")
    assert_clean(at)
    table = at.dataframe[0].value
    assert {rid, extra} <= set(table["run_id"])
    at.text_input(key="url_rtext").set_value("delete").run()
    assert at.query_params["rtext"] == "delete"
    assert list(at.dataframe[0].value["run_id"]) == [extra]
    at.multiselect(key="runs_selected").set_value([extra]).run()
    assert any(f"run={extra}" in c.value for c in at.code)
    at.checkbox(key="runs_confirm").check().run()
    at.button(key="runs_delete").click().run()
    assert_clean(at)
    assert not store.has_run(extra) and store.has_run(rid)


def test_two_sessions_do_not_see_each_others_run(app_db, lm):
    from moyu_core.runs import capture_run

    store, rid = app_db
    other = capture_run(lm, store, "Another user's prompt about oceans.").run_id
    a, b = open_app(run=rid), open_app(run=other)
    a.slider(key="url_layer").set_value(1).run()
    b.run()
    assert a.query_params["run"] == rid and b.query_params["run"] == other
    header = (lambda at: next(m.value for m in at.markdown if m.value.startswith("**Run**")))
    assert rid in header(a) and other in header(b) and other not in header(a)
    assert b.slider(key="url_layer").value == 15 and b.query_params["layer"] == "15"


def test_compare_page_charts_stored_metrics(app_db):
    store, _ = app_db
    for keep, ratio in ((0.5, 1.2), (0.25, 1.6)):
        store.put_result("eval", {"method": "griffin", "keep": keep},
                         {"method": "griffin", "params": {"keep": keep}, "ppl": 10 * ratio, "dense_ppl": 10.0,
                          "ppl_ratio": ratio, "kl": 0.1, "top1_agree": 0.8, "sparsity": 1 - keep},
                         model="smollm2-135m", method="griffin")
    at = open_app("compare")
    assert_clean(at)
    df = at.dataframe[0].value
    assert sorted(df["keep"]) == [0.25, 0.5] and set(df["method"]) == {"griffin"}
    assert df["ceiling"].iloc[0] == pytest.approx(1 / (1 - 0.59 * 0.75), abs=0.02)
    assert chart_specs(at)


def test_methods_page(app_db):
    _, rid = app_db
    at = open_app("methods", run=rid)
    assert_clean(at)
    from moyu_core.methods import REGISTRY

    names = [n for n in REGISTRY if n not in ("dense", "oracle")]
    assert at.multiselect(key="url_method").options
    at.multiselect(key="url_method").set_value(names[:1]).run()
    at.slider(key="url_keep").set_value(0.25).run()
    assert_clean(at)
    assert at.query_params["keep"] == "0.25" and at.query_params["method"] == names[0]
    assert not at.error, [e.value for e in at.error]
    settle(at)
    assert {m.label for m in at.metric} >= {"Kept (this layer)", "Recall of the oracle", "Precision"}


def test_prompt_text_is_shown_as_plain_text():
    import ui_text

    shown = ui_text.md_escape("![x](http://evil.example/a.png) <img src=x> **bold**")
    import re

    assert not re.search(r"(?<!\\)[!\[\]()<>*]", shown), shown  # every markup character escaped


def test_too_long_prompt_says_the_limit_and_how_to_raise_it(app_db, monkeypatch):
    monkeypatch.setenv("MOYU_MAX_TOKENS", "16")
    import moyu_core.models as models

    monkeypatch.setattr(models, "DEFAULT_MAX_TOKENS", 16)
    store, _ = app_db
    at = open_app()
    text = wordlists.random_word_list(40, 1)
    at.text_area(key="prompt_text").set_value(text)
    at.button(key="capture").click().run()
    assert_clean(at)
    errors = [e.value for e in at.error]
    assert any("limit is 16" in e and "Max tokens" in e and "Advanced options" in e for e in errors), errors
    assert not any("--max-tokens" in e for e in errors)   # no command-line flag in the browser
    assert at.number_input(key="capture_max_tokens").max == 4096
    at.number_input(key="capture_max_tokens").set_value(256)
    at.button(key="capture").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert store.run(at.query_params["run"]).text == text


def test_out_of_range_url_parameters_get_a_notice(app_db):
    _, rid = app_db
    at = open_app(run=rid, layer=99, norm="sideways", width=7)
    assert_clean(at)
    notices = " ".join(w.value for w in at.warning)
    assert "layer=99" in notices and "0–29" in notices and "reset to 15" in notices
    assert "norm=sideways" in notices and "width=7" in notices
    assert at.query_params["layer"] == "15" and at.slider(key="url_layer").value == 15
    at.slider(key="url_layer").set_value(3).run()   # the user acts: the layer notice is old news
    assert "layer=99" not in " ".join(w.value for w in at.warning)


def test_explore_colour_clip_sink_toggle_and_neuron_search(app_db, lm):
    from moyu_core import analysis
    from moyu_core.runs import capture_run

    store, _ = app_db
    rid = capture_run(lm, store, wordlists.reference_text(1200)).run_id
    rec = store.run(rid)
    at = open_app(run=rid, layer=5, norm="abs")
    assert_clean(at)
    detail = next(s for s in chart_specs(at) if "tokens 0–" in s["layout"]["title"]["text"])
    z = store.activations(rid, 5)
    assert detail["data"][0]["zmax"] == pytest.approx(analysis.colour_limit(np.abs(z), 99.5), rel=1e-4)
    assert detail["data"][0]["zmax"] < np.abs(z).max() / 3   # the sink no longer sets the scale
    at.toggle(key="url_hide0").set_value(True).run()
    assert_clean(at)
    assert at.query_params["hide0"] == "1"
    specs = chart_specs(at)
    detail = next(s for s in specs if "Layer 5: tokens" in s["layout"]["title"]["text"])
    assert detail["layout"]["title"]["text"].startswith("Layer 5: tokens 1–")
    assert not detail["data"][0]["y"][0].startswith("0 ")
    assert detail["data"][0]["zmax"] == pytest.approx(analysis.colour_limit(np.abs(z[1:]), 99.5), rel=1e-4)
    overview = next(s for s in specs if "pooled" in s["layout"]["title"]["text"])
    assert overview["data"][0]["y"][0].startswith("1")
    at.number_input(key="url_neuron").set_value(1234).run()
    assert_clean(at)
    assert at.query_params["neuron"] == "1234"
    detail = next(s for s in chart_specs(at) if "Layer 5: tokens" in s["layout"]["title"]["text"])
    assert "n1234" in detail["data"][0]["x"]   # the window moved to show the neuron
    assert any(m.value.startswith("**Selected:**") and "1234" in m.value for m in at.markdown)
    assert any(s["layout"]["title"]["text"] == "Layer 5: neuron 1234 over the tokens" for s in chart_specs(at))
    at.number_input(key="url_token").set_value(7).run()
    shown = next(m.value for m in at.markdown if m.value.startswith("**Selected:**"))
    assert "token **7**" in shown and f"z = {z[7, 1234]:.4f}" in shown
    assert rec.n_tokens > 48


def test_byte_pieces_are_shown_as_whole_characters(app_db, lm):
    from moyu_core.runs import capture_run

    store, _ = app_db
    rid = capture_run(lm, store, "Emoji 🦄 and Hebrew שלום here.").run_id
    at = open_app(run=rid, order="index")
    assert_clean(at)
    detail = next(s for s in chart_specs(at) if "tokens 0–" in s["layout"]["title"]["text"])
    labels = detail["data"][0]["y"]
    assert not any("\ufffd" in y for y in labels), labels
    assert any("🦄" in y for y in labels) and any("ש" in y for y in labels)
    at.switch_page("app_pages/heavy_hitters.py").run()
    html = next(m.value for m in at.html if "<span" in m.value)
    assert "🦄" in html and "\ufffd" not in html


def test_heavy_hitters_details_drawn_only_when_open(app_db):
    """The per-head and residual-norm heatmaps wait in a closed box; a link with head_layer opens it."""
    _, rid = app_db
    titles = lambda at: [s["layout"]["title"]["text"] for s in chart_specs(at)]  # noqa: E731
    at = open_app("heavy_hitters", run=rid)
    assert_clean(at)
    assert not any("per head" in t or "Residual norm" in t for t in titles(at)), titles(at)
    assert any(t.startswith("Attention received per layer") for t in titles(at))
    at = open_app("heavy_hitters", run=rid, head_layer=3)
    assert_clean(at)
    assert any(t.startswith("Layer 3: attention received per head") for t in titles(at)), titles(at)
    assert any(t.startswith("Residual norm") for t in titles(at))
    assert at.query_params["head_layer"] == "3"


def test_heavy_hitters_skip_token0_no_shade_no_bar_and_hover_text(app_db):
    _, rid = app_db
    at = open_app("heavy_hitters", run=rid)
    scores = lambda: next(s for s in chart_specs(at)   # noqa: E731
                          if s["layout"]["title"]["text"].startswith("Accumulated attention"))
    bars = scores()
    assert bars["data"][0]["x"][0].startswith("0 ▸") and len(bars["data"][1]["x"]) == 5   # the top 5 ringed
    heat = next(s for s in chart_specs(at) if s["data"][0]["type"] == "heatmap")
    assert heat["data"][0]["x"][1] == "1 ▸ ·cat"   # hovers carry the token's text
    at.toggle(key="url_skip_first").set_value(True).run()
    assert_clean(at)
    bars = scores()
    assert bars["data"][0]["x"][0].startswith("1 ▸") and len(bars["data"][0]["x"]) == len(heat["data"][0]["x"]) - 1
    assert not any(x.startswith("0 ▸") for x in bars["data"][1]["x"])    # token 0 is not ringed
    html = next(m.value for m in at.html if "<span" in m.value)
    first = html.split("<span", 2)[1]
    assert "background" not in first   # token 0 is not shaded
    assert "#1" in html and "#1</sup>" not in first
