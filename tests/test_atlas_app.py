"""The Neurons page through Streamlit's AppTest, on the real default model: a neuron's dashboard
from a real atlas (reached by ?layer=&neuron=, as Explore's cell link does), corpus text escaped,
the hint when there is no atlas, an incomplete atlas held back, and the diff of two runs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from moyu_core.atlas import build

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "streamlit_app.py")
AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

CORPUS = """The <script>alert("x")</script> tag & friends.

Rivers carry water down to the sea.
"""


@pytest.fixture(scope="module")
def atlas_dir(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("neurons")
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS)
    build.build(lm, str(corpus), folder / "atlas", top_k=3, chunk_tokens=8, methods=["oracle", "tda"])
    return folder / "atlas"


@pytest.fixture(scope="module")
def two_runs(lm, tmp_path_factory):
    from moyu_core.runs import capture_run
    from moyu_core.store import Store

    path = tmp_path_factory.mktemp("neurons_db") / "app.duckdb"
    store = Store(path)
    a = capture_run(lm, store, "The cat sat on the mat.").run_id
    b = capture_run(lm, store, "Seven red apples fell into the river.").run_id
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOYU_DB", str(path))
        yield a, b
    store.close()


def open_neurons(folder: Path | None = None, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.run()
    at.switch_page("app_pages/neurons.py").run()
    if folder is not None:
        at.text_input(key="atlas_folder").set_value(str(folder)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _script_neuron(folder: Path) -> int:
    """A neuron of layer 3 whose best context shows the corpus' <script> tag."""
    from moyu_core.atlas.query import open_atlas

    atlas = open_atlas(folder)
    return next(n for n in range(1536) if "<script>" in atlas.neuron(3, n)["top"][0]["context"])


def test_dashboard_from_a_cell_link_escapes_the_corpus(atlas_dir, two_runs):
    neuron = _script_neuron(atlas_dir)
    at = open_neurons(atlas_dir, layer=3, neuron=neuron)
    assert at.number_input(key="url_layer").value == 3 and at.number_input(key="url_neuron").value == neuron
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Activation frequency"].endswith("%") and "Inertia" in metrics
    html = "".join(m.value for m in at.markdown if "<mark" in m.value)
    assert "&lt;script&gt;" in html and "&amp;" in html
    assert set(re.findall(r"</?([a-zA-Z]+)", html)) <= {"div", "span", "mark"}   # no tag from the corpus
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert any("Histogram" in t for t in titles) and any("method keeps" in t for t in titles)
    from moyu_core.atlas.query import open_atlas
    n = open_atlas(atlas_dir).neuron(3, neuron)["methods_tokens"]
    assert any(f"Counted on {n:,} tokens: one piece of 512 tokens in every 8" in c.value for c in at.caption)
    assert len(at.dataframe) >= 2   # promoted and suppressed tokens
    at.number_input(key="url_neuron").set_value(5).run()
    assert not at.exception and at.query_params["neuron"] == "5"


def test_a_link_out_of_range_is_reset_with_a_notice(atlas_dir, two_runs):
    at = open_neurons(atlas_dir, layer=99, neuron=-4)
    assert not at.error
    assert any("layer=99" in w.value for w in at.warning)
    assert at.number_input(key="url_layer").value == 15


def test_no_atlas_shows_the_command_to_build_one(two_runs, tmp_path):
    at = open_neurons(tmp_path / "nothing")
    assert any("atlas build" in c.value for c in at.code)
    assert not at.error


def test_an_incomplete_atlas_is_held_back_until_asked(atlas_dir, two_runs, tmp_path):
    part = tmp_path / "part"
    shutil.copytree(atlas_dir, part)
    m = json.loads((part / "manifest.json").read_text())
    m["complete"] = False
    m["plan"]["chunks"] += 3
    (part / "manifest.json").write_text(json.dumps(m))
    at = open_neurons(part)
    assert any("incomplete" in w.value for w in at.warning)
    assert not at.metric
    at.toggle(key="atlas_partial").set_value(True).run()
    assert not at.exception and at.metric


def test_diff_two_runs_lists_neurons(atlas_dir, two_runs):
    at = open_neurons(atlas_dir)
    a, b = two_runs
    at.selectbox(key="diff_a").set_value(a).run()
    at.selectbox(key="diff_b").set_value(b).run()
    assert not at.exception
    frames = [d.value for d in at.dataframe if "difference" in d.value.columns]
    assert frames and len(frames[0]) == 20
    assert list(frames[0]["difference"]) == sorted(frames[0]["difference"], reverse=True)
    layer, neuron = int(frames[0].iloc[0]["layer"]), int(frames[0].iloc[0]["neuron"])
    at.selectbox(key="diff_open").set_value(f"{layer}:{neuron}").run()
    assert (at.number_input(key="url_layer").value, at.number_input(key="url_neuron").value) == (layer, neuron)
