"""The Experiments page through Streamlit's AppTest: stored results, a run, friendly messages."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "streamlit_app.py")

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


@pytest.fixture
def exp_db(tmp_path, lm):
    from moyu_core.experiments import inertia
    from moyu_core.store import Store

    path = tmp_path / "exp.duckdb"
    store = Store(path)
    inertia.run(lm, store, inertia.InertiaParams(n_texts=2, n_tokens=6, layers=(0, 1)))
    old = os.environ.get("MOYU_DB")
    os.environ["MOYU_DB"] = str(path)
    yield store
    store.close()
    if old is None:
        os.environ.pop("MOYU_DB", None)
    else:
        os.environ["MOYU_DB"] = old


def test_experiments_page_shows_stored_verdicts_and_runs(exp_db):
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("app_pages/experiments.py").run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "sequential input strengthens inertia" in text
    assert "equivalence margin" in text and "n = 2 vs 2 texts" in text   # the margin and n are printed
    captions = " ".join(c.value for c in at.caption)
    assert "«⏎»" in captions                                            # smollm2's parallel context
    infos = " ".join(i.value for i in at.info)
    assert "relu-swiglu" in infos  # no comparison stored: a hint, not an error
    # run the ablation form with the smallest settings
    at.number_input(key="ablation_texts").set_value(2)
    at.button(key="ablation_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "sink excluded\\] ablating the earliest heavy hitter" in text and "n = 2 paired texts" in text
    assert not at.error, [e.value for e in at.error]
