"""The command line contract and its answers to bad input (real default model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, db, timeout=300, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", MOYU_DB_TIMEOUT="2", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "moyu_core", *args, "--db", str(db)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_capture_json_then_cache_hit_then_runs(tmp_path):
    db = tmp_path / "cli.duckdb"
    first = cli("capture", "Hello from the command line 🎉 héllo", "--json", db=db)
    assert first.returncode == 0, first.stderr
    a = last_json(first.stdout)
    assert a["tokens"] > 5 and a["layers"] == 30 and a["neurons"] == 1536 and a["cached"] is False
    b = last_json(cli("capture", "Hello from the command line 🎉 héllo", "--json", db=db).stdout)
    assert b["run_id"] == a["run_id"] and b["cached"] is True
    listed = last_json(cli("runs", "--json", db=db).stdout)
    assert [r["run_id"] for r in listed["runs"]] == [a["run_id"]]


def test_capture_file_with_progress(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt here\n\nsecond prompt here\nthird one\n")
    r = cli("capture", "--file", str(prompts), "--json", "--mode", "parallel", db=tmp_path / "f.duckdb")
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert len(out["runs"]) == 3 and "3/3" in r.stderr


BAD = {
    "empty": ("", "empty"),
    "blank": ("   \n ", "empty"),
    "huge": ("a" * 100_000, "limit"),
    "control": ("abc\x07def", "control character"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_prompt_is_one_line_error_and_writes_nothing(tmp_path, name):
    text, needle = BAD[name]
    db = tmp_path / "bad.duckdb"
    r = cli("capture", text, db=db)
    assert r.returncode != 0
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and needle in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not db.exists() or last_json(cli("runs", "--json", db=db).stdout)["count"] == 0


def test_over_limit_checked_before_forward(tmp_path):
    r = cli("capture", "one two three four five six", "--max-tokens", "3", db=tmp_path / "l.duckdb")
    assert r.returncode == 2 and "limit is 3" in r.stderr


def test_unknown_model_lists_available(tmp_path):
    r = cli("capture", "hi", "--model", "gpt-17", db=tmp_path / "m.duckdb")
    assert r.returncode == 2
    assert "unknown model 'gpt-17'" in r.stderr and "smollm2-135m" in r.stderr and "gemma3-270m" in r.stderr


def test_database_held_by_another_process(tmp_path):
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import duckdb,time,sys; c=duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        t0 = time.monotonic()
        r = cli("capture", "hello", db=db)
        assert r.returncode == 2 and "held by another process" in r.stderr
        assert "Traceback" not in r.stderr and time.monotonic() - t0 < 120
    finally:
        holder.kill()
        holder.wait()


def test_file_with_one_bad_prompt_writes_nothing(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fine prompt\nanother fine one\nbad \x00 prompt\n")
    db = tmp_path / "f.duckdb"
    r = cli("capture", "--file", str(prompts), db=db)
    assert r.returncode == 2 and "control character U+0000" in r.stderr
    assert last_json(cli("runs", "--json", db=db).stdout)["count"] == 0
