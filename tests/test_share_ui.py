"""The share widgets of the Runs page (app/share_ui.py) through Streamlit's AppTest."""
from __future__ import annotations

import pickle

import pytest

from moyu_core import share as bundle
from moyu_core.store import Store
from test_share import synthetic_run

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

SCRIPT = """
from moyu_core import share as bundle
import share_ui
store = bundle.open_store({db!r}, {team!r})
share_ui.render_share(store, {ids!r})
"""


def test_download_and_team_folder(tmp_path):
    src = Store(tmp_path / "src.duckdb")
    team_rid = synthetic_run(src, seed=2)
    team = tmp_path / "team"
    bundle.export_runs(src, [team_rid], team / "alice.parquet")
    (team / "evil.parquet").write_bytes(pickle.dumps([1]))
    src.close()
    local = Store(tmp_path / "local.duckdb")
    own = synthetic_run(local, seed=3)
    local.close()
    at = AppTest.from_string(SCRIPT.format(db=str(local.path), team=str(team), ids=[own, team_rid]),
                             default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    buttons = at.get("download_button")
    assert len(buttons) == 1 and "Download 1 run(s)" in buttons[0].proto.label
    captions = " ".join(c.value for c in at.caption)
    assert "come from the team folder" in captions and "1 run(s) listed" in captions
    assert any("evil.parquet: not a Parquet file" in t.value for t in at.text)
    # the bundle the button would serve imports into a fresh database
    import share_ui

    data = share_ui._bundle_bytes(bundle.open_store(local.path), [own])
    fresh = Store(tmp_path / "fresh.duckdb")
    assert bundle.import_bytes(fresh, data, "dl.parquet") == [own]
    fresh.close()
