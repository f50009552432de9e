"""Many users, one server: four browser sessions capture different prompts in different input
manners at the same time while a command-line capture writes to the same database; no session
sees another's run, every run is stored whole. Then bundles through the Runs page: a hostile file
is refused with a friendly message, a teammate's bundle imports and opens through its link."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("moyu_e2e_conftest", HERE / "conftest.py")
_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conf)
ROOT, start_app = _conf.ROOT, _conf.start_app
from test_explorer import no_traceback, shot, wait_idle  # noqa: E402

PROMPTS = [
    ("A quiet river runs past the old stone mill.", "sequential"),
    ("apple orbit lantern velvet copper", "parallel"),
    ("Seven sailors counted the stars above the harbor.", "sequential"),
    ("thunder maple glacier mirror", "parallel"),
]
CLI_PROMPT = "The command line writes while the app serves four users."


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory, artifacts):
    db = tmp_path_factory.mktemp("sessions") / "sessions.duckdb"
    proc, base = start_app(db, artifacts / "server-sessions.log")
    yield base, db
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_id_of(page) -> str:
    m = re.search(r"[?&]run=([0-9a-f]{24})", page.url)
    assert m, page.url
    return m.group(1)


def test_four_sessions_and_a_cli_capture(fresh_server, new_page, artifacts):
    from moyu_core.store import Store

    base, db = fresh_server
    pages = [new_page(1280, 1000) for _ in PROMPTS]
    for page in pages:
        page.goto(base + "/")
        page.get_by_label("Prompt").wait_for()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cli = subprocess.Popen([sys.executable, "-m", "moyu_core", "capture", CLI_PROMPT, "--db", str(db), "--json"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # fill every session, then press Capture in all four without waiting: the server runs them together
    for page, (text, mode) in zip(pages, PROMPTS):
        page.get_by_label("Prompt").fill(text)
        page.locator('[data-testid="stRadio"]').filter(has_text="Input manner").get_by_text(mode, exact=True).click()
    for page in pages:
        wait_idle(page, 200)
    for page in pages:
        page.get_by_role("button", name="Capture").click()
    for page in pages:
        page.get_by_text("Adjacent top-10% overlap").wait_for(timeout=240_000)
        wait_idle(page)
    out, err = cli.communicate(timeout=240)
    assert cli.returncode == 0, err[-2000:]
    cli_run = json.loads(out.strip().splitlines()[-1])["run_id"]

    ids = [run_id_of(p) for p in pages]
    assert len(set(ids)) == 4
    for i, page in enumerate(pages):  # each session shows its own run and prompt, nobody else's
        body = page.inner_text("body")
        assert ids[i] in body and PROMPTS[i][0] in body
        assert all(ids[j] not in body and PROMPTS[j][0] not in body for j in range(4) if j != i)
        no_traceback(page)
    shot(pages[1], artifacts, "08-session-parallel")

    # one session moves its layer; the others keep theirs
    layer = pages[0].get_by_role("slider", name="Layer").first
    layer.focus()
    layer.press("ArrowRight")
    pages[0].wait_for_url(re.compile(r"layer=16"))
    for page in pages[1:]:
        page.reload()
        page.get_by_text("Adjacent top-10% overlap").wait_for()
        wait_idle(page)
        assert page.get_by_role("slider", name="Layer").first.get_attribute("aria-valuetext") == "15"
        assert run_id_of(page) in ids[1:]

    # each session opens its own run with a different method, all at once: no cross-talk
    methods = ("tda", "cett", "griffin", "static")
    for page, rid, m in zip(pages, ids, methods):
        page.goto(f"{base}/methods?run={rid}&method={m}&keep=0.5")
    for page, rid, m in zip(pages, ids, methods):
        page.get_by_text("Recall of the oracle").first.wait_for(timeout=240_000)
        wait_idle(page)
        heads = page.locator('[data-testid="stExpander"] summary')   # one section per chosen method
        heads.filter(has_text=f"{m} · ").first.wait_for(timeout=240_000)   # drawn below the grid, later
        assert heads.filter(has_text=f"{m} · ").count() == 1 and run_id_of(page) == rid
        assert all(heads.filter(has_text=f"{o} · ").count() == 0 for o in methods if o != m)
        no_traceback(page)
    shot(pages[2], artifacts, "09-session-methods")

    store = Store(db)  # every run stored, whole, with the text its session typed
    assert {r["run_id"] for r in store.list_runs()} == set(ids) | {cli_run}
    for rid, (text, mode) in zip(ids, PROMPTS):
        rec = store.run(rid)
        assert (rec.text, rec.mode) == (text, mode)
        assert len(store.tokens(rid)) == rec.n_tokens
        assert store.activations(rid, rec.n_layers - 1).shape == (rec.n_tokens, rec.d_ff)
    assert store.run(cli_run).text == CLI_PROMPT
    store.close()


def test_bundles_through_the_runs_page(fresh_server, new_page, artifacts, tmp_path, lm):
    from moyu_core import share as bundle
    from moyu_core.runs import capture_run
    from moyu_core.store import Store

    base, db = fresh_server
    teammate = Store(tmp_path / "teammate.duckdb")
    rid = capture_run(lm, teammate, "A teammate found this pattern in layer nine.").run_id
    good = bundle.export_runs(teammate, [rid], tmp_path / "from-teammate.parquet")
    teammate.close()
    evil = tmp_path / "evil.parquet"
    evil.write_bytes(pickle.dumps({"not": "parquet"}))

    page = new_page()
    page.goto(base + "/runs")
    page.get_by_role("heading", name="Runs").wait_for()
    wait_idle(page)
    uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    uploader.set_input_files(str(evil))
    page.get_by_text("Not imported.").wait_for()
    assert "not a Parquet file" in page.inner_text("body")
    no_traceback(page)
    shot(page, artifacts, "09-import-refused")
    uploader.set_input_files(str(good))
    page.get_by_text("Imported 1 run(s)").wait_for()
    wait_idle(page)
    link = page.locator("code").filter(has_text=f"run={rid}").first.inner_text().strip()
    shot(page, artifacts, "10-import-done")

    other = new_page()
    other.goto(link)
    other.get_by_text("Adjacent top-10% overlap").wait_for()
    wait_idle(other)
    assert rid in other.inner_text("body") and "teammate found this pattern" in other.inner_text("body")
    no_traceback(other)
