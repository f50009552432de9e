"""The DuckDB store: quantization bound, dtypes, cache hits, schema version, atomic runs, stable
run ids, one read interface, and database files from elsewhere refused before they are read."""
from __future__ import annotations

import hashlib
import inspect

import duckdb
import numpy as np
import pytest

from moyu_core import hooks, runs
from moyu_core.blobs import quantize
from moyu_core.errors import MoyuError
from moyu_core.share.team import LayeredStore, TeamStore
from moyu_core.store import RunReader, RunRecord, Store, run_id_for


def _record(run_id="r1", L=2, T=5, D=64, dtype="int8"):
    return RunRecord(run_id=run_id, model="tiny", fingerprint="f", mode="sequential", prefix="", chat=False,
                     method="dense", params={}, text="x", n_tokens=T, n_layers=L, d_ff=D, n_heads=4, dtype=dtype)


def _put(db, rec, seed=0):
    rng = np.random.default_rng(seed)
    L, T, D = rec.n_layers, rec.n_tokens, rec.d_ff
    z = (rng.standard_normal((L, T, D)) * rng.uniform(0.01, 50, (L, T, 1))).astype(np.float32)
    db.put_run(rec, list(range(T)), [f"t{i}" for i in range(T)], z,
               rng.random((L, 4, T)).astype(np.float32), rng.random((L, T)).astype(np.float32))
    return z


def test_int8_error_within_half_percent_of_row_max():
    z = np.random.default_rng(1).standard_normal((100, 1536)).astype(np.float32) * 7
    q, scale = quantize(z, "int8")
    err = np.abs(q.astype(np.float32) * scale[:, None] - z).max(axis=1)
    assert (err <= 0.005 * np.abs(z).max(axis=1)).all()


@pytest.mark.parametrize("dtype,tol", [("int8", 0.005), ("float16", 0.001), ("float32", 0.0)])
def test_roundtrip_each_dtype(db, dtype, tol):
    rec = _record(dtype=dtype)
    z = _put(db, rec)
    for layer in range(2):
        got = db.activations("r1", layer)
        assert got.dtype == np.float32 and got.shape == (5, 64)
        assert (np.abs(got - z[layer]) <= tol * np.abs(z[layer]).max(axis=1, keepdims=True) + 1e-7).all()


def test_zero_rows_survive_int8(db):
    rec = _record()
    L, T, D = 2, 5, 64
    db.put_run(rec, list(range(T)), ["a"] * T, np.zeros((L, T, D), np.float32),
               np.zeros((L, 4, T), np.float32), np.zeros((L, T), np.float32))
    assert (db.activations("r1", 0) == 0).all()


def test_same_run_twice_is_not_duplicated(db):
    rec = _record()
    _put(db, rec)
    assert db.put_run(rec, [0] * 5, ["a"] * 5, np.zeros((2, 5, 64), np.float32),
                      np.zeros((2, 4, 5), np.float32), np.zeros((2, 5), np.float32)) is False
    assert db.activations("r1", 1).shape == (5, 64)


def test_failed_write_leaves_nothing(db):
    rec = _record()
    with pytest.raises(Exception):  # attention of the wrong shape fails inside the transaction
        db.put_run(rec, list(range(5)), ["a"] * 5, np.zeros((2, 5, 64), np.float32),
                   np.zeros((2, 4, 3), np.float32), np.zeros((2, 5), np.float32))
    assert not db.has_run("r1")
    assert db.list_runs() == []


def test_schema_version_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "old.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(MoyuError, match="schema version 999"):
        Store(path)


def test_schema_1_file_is_converted_on_open(tmp_path):
    """A file of schema 1 (attention received as float32 lists in a table of its own) opens as
    schema 2: runs keep their ids and activations, attention comes back within float16's precision."""
    path = tmp_path / "v1.duckdb"
    db = Store(path)
    rec = _record()
    z = _put(db, rec)
    norm = db.token_stats("r1")[1]
    attn = np.random.default_rng(7).random((2, 5, 4)).astype(np.float32) * 300  # (L, T, H), not float16
    db.close()
    con = duckdb.connect(str(path))  # rewrite it as schema 1 had it
    con.execute("CREATE TABLE old AS SELECT run_id, layer, pos, scale, vec FROM activations")
    con.execute("DROP TABLE activations")
    con.execute("ALTER TABLE old RENAME TO activations")
    con.execute("CREATE TABLE token_stats (run_id VARCHAR, layer SMALLINT, pos INTEGER, resid_norm FLOAT, "
                "attn_received FLOAT[])")
    for layer in range(2):
        for pos in range(5):
            con.execute("INSERT INTO token_stats VALUES ('r1', ?, ?, ?, ?)",
                        [layer, pos, float(norm[layer, pos]), attn[layer, pos].tolist()])
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()

    db = Store(path)
    got_attn, got_norm = db.token_stats("r1")
    np.testing.assert_allclose(got_attn, attn.transpose(0, 2, 1), rtol=1e-3)
    np.testing.assert_array_equal(got_norm, norm)
    for layer in range(2):
        assert np.abs(db.activations("r1", layer) - z[layer]).max() <= 0.005 * np.abs(z[layer]).max()
    db.close()
    con = duckdb.connect(str(path))
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "token_stats" not in tables and "activations" in tables
    con.close()


def test_layer_out_of_range_and_unknown_run(db):
    _put(db, _record())
    with pytest.raises(MoyuError, match="out of range"):
        db.activations("r1", 2)
    with pytest.raises(MoyuError, match="no run"):
        db.activations("nope", 0)


def test_delete_run(db):
    _put(db, _record())
    assert db.delete_run("r1") and not db.has_run("r1")
    assert not db.delete_run("r1")


def test_results_are_content_addressed(db):
    db.put_result("eval", {"method": "tda", "keep": 0.5}, {"ppl": 3.0}, model="m", method="tda")
    assert db.get_result("eval", {"keep": 0.5, "method": "tda"}) == {"ppl": 3.0}
    assert db.get_result("eval", {"method": "tda", "keep": 0.25}) is None
    assert len(db.results("eval")) == 1


def test_capture_cache_hit_calls_no_model(lm, db, monkeypatch):
    r1 = runs.capture_run(lm, db, "Caching is content addressed.")
    assert not r1.cached

    def no_forward(*a, **k):
        raise AssertionError("model called on a cache hit")

    monkeypatch.setattr(hooks, "capture", no_forward)
    r2 = runs.capture_run(lm, db, "Caching is content addressed.")
    assert r2.cached and r2.run_id == r1.run_id
    # another manner or dtype is another run
    monkeypatch.undo()
    r3 = runs.capture_run(lm, db, "Caching is content addressed.", mode="parallel")
    assert r3.run_id != r1.run_id and not r3.cached


def test_token_stats_real_model(lm, db):
    r = runs.capture_run(lm, db, "The first token is often an attention sink.")
    attn, norm = db.token_stats(r.run_id)
    assert attn.shape == (30, 9, r.tokens) and norm.shape == (30, r.tokens)
    # each query's attention sums to one: totals per layer and head equal the token count
    np.testing.assert_allclose(attn.sum(axis=2), r.tokens, rtol=1e-3)
    assert [p for _, p in db.tokens(r.run_id)][:2] == ["The", " first"]


def test_capture_time_int8_equals_store_rule(tiny_lm):
    ids = [5, 9, 13, 2, 40]
    flt = hooks.capture(tiny_lm, ids)
    q8 = hooks.capture(tiny_lm, ids, int8=True)
    assert flt.z_int8 is None and q8.z is None
    L, T, D = flt.z.shape
    q, scale = quantize(flt.z.reshape(L * T, D), "int8")
    np.testing.assert_allclose(q8.z_scale.reshape(-1), scale, rtol=1e-6)
    assert np.abs(q8.z_int8.reshape(L * T, D).astype(int) - q.astype(int)).max() <= 1  # ties may round apart


def test_run_ids_never_change():
    """Existing databases and bundles address their runs with these ids."""
    assert run_id_for("fp", [1, 2, 3], "sequential", [], "dense", {}, "int8") == "90cd6aa55d5b16da49ee32dd"
    assert run_id_for("fp", [7], "parallel", [0, 1], "griffin", {"keep": 0.5}, "float16") == \
        "31fa78af7a28e68ff7ab67b8"


def test_every_store_reads_through_one_interface(tmp_path):
    names = sorted(n for n, v in vars(RunReader).items() if callable(v) and not n.startswith("_"))
    assert names == ["activations", "has_run", "list_runs", "run", "token_stats", "tokens"]
    for cls in (Store, TeamStore, LayeredStore):
        for n in names:
            assert inspect.signature(getattr(cls, n)) == inspect.signature(getattr(RunReader, n)), (cls, n)
    local = Store(tmp_path / "local.duckdb")
    (tmp_path / "team").mkdir()
    team = TeamStore(tmp_path / "team")
    assert all(isinstance(s, RunReader) for s in (local, team, LayeredStore(local, team)))
    local.close()


def _moyu_file(path, *statements):
    """A moyu database, then `statements` run on it by another DuckDB connection. This process
    opened the file first, so a refusal also shows that a file changed since this process last
    detached it is checked again."""
    Store(path).close()
    con = duckdb.connect(str(path))
    for stmt in statements:
        con.execute(stmt)
    con.close()


HOSTILE = {
    "runs is a view over a local file": (
        ["DROP TABLE runs", "CREATE VIEW runs AS SELECT * FROM read_csv('{secret}')"],
        "table 'runs' is a view (a view can read local files)"),
    "any view": (["CREATE VIEW harmless AS SELECT 42 AS answer"], "'harmless' is a view"),
    "macro shadowing a built-in": (["CREATE MACRO lower(x) AS (SELECT count(*) FROM read_csv('{secret}'))"],
                                   "defines the macro 'lower'"),
    "runs with other columns": (["DROP TABLE runs", "CREATE TABLE runs (run_id VARCHAR, payload VARCHAR)"],
                                "table 'runs' has the columns (run_id VARCHAR, payload VARCHAR)"),
    "tokens with another type": (["DROP TABLE tokens", "CREATE TABLE tokens (run_id VARCHAR, pos INTEGER, "
                                  "token_id BIGINT, piece VARCHAR)"], "table 'tokens' has the columns"),
    "another application's database": (["CREATE SCHEMA shop", "CREATE TABLE shop.orders (id INTEGER)"],
                                       "a table 'shop.orders' that moyu does not have"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_database_from_elsewhere_refused_unread_and_unchanged(tmp_path, name):
    statements, expect = HOSTILE[name]
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nroot,hunter2\n")
    path = tmp_path / "other.duckdb"
    _moyu_file(path, *(s.format(secret=secret) for s in statements))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(MoyuError) as e:
        Store(path)
    msg = str(e.value)
    assert msg.startswith(f"{path} is not a moyu database: ") and msg.endswith("; refusing to open it"), msg
    assert expect in msg and "\n" not in msg and "hunter2" not in msg, msg
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.duckdb", "secret.csv"]  # no WAL either


def test_good_and_new_files_open(tmp_path):
    path = tmp_path / "good.duckdb"
    db = Store(path)  # a new file is created
    _put(db, _record())
    db.close()
    db = Store(path)  # and opens again, attached afresh
    assert db.has_run("r1") and db.activations("r1", 1).shape == (5, 64)
    db.close()
