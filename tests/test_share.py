"""Sharing: bundles round-trip exactly; every hostile or broken file is refused with a clear
message, executes nothing and leaves the database unchanged; the team folder is read in place."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moyu_core.errors import MoyuError
from moyu_core.share.checks import MAX_BUNDLE_BYTES
from moyu_core.share.export import export_runs
from moyu_core.share.importer import import_bundle, import_bytes
from moyu_core.share.team import open_store
from moyu_core.store import RunRecord, Store, run_id_for

SQL = "x'); DROP TABLE runs; --"


def synthetic_run(store: Store, T: int = 5, L: int = 2, D: int = 16, H: int = 3, dtype: str = "int8",
                  text: str = "hello", pieces: list[str] | None = None, seed: int = 0) -> str:
    """A run written through the normal store path, with an id that addresses its content."""
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.integers(0, 1000, T)]
    rid = run_id_for("fp", ids, "sequential", [], "dense", {}, dtype)
    rec = RunRecord(run_id=rid, model="tiny", fingerprint="fp", mode="sequential", prefix="", chat=False,
                    method="dense", params={}, text=text, n_tokens=T, n_layers=L, d_ff=D, n_heads=H, dtype=dtype)
    store.put_run(rec, ids, pieces or [f"t{i}" for i in range(T)], rng.normal(size=(L, T, D)).astype(np.float32),
                  rng.random((L, H, T)).astype(np.float32), rng.random((L, T)).astype(np.float32))
    return rid


def snapshot(store: Store) -> tuple:
    with store._connect() as con:
        counts = tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in ("runs", "tokens", "activations", "results"))
        tables = sorted(r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                                  "WHERE table_catalog = current_database()").fetchall())
    return counts, tuple(tables), tuple(sorted(r["run_id"] for r in store.list_runs()))


def rewrite(src, dst, change) -> None:
    """Copy a bundle, passing its table through `change` and keeping its manifest."""
    tbl = pq.read_table(src)
    meta = pq.read_metadata(src).metadata
    out = change(tbl)
    pq.write_table(out.replace_schema_metadata({k: v for k, v in meta.items() if k == b"moyu"}), dst)


@pytest.fixture
def source(tmp_path):
    s = Store(tmp_path / "src.duckdb")
    rid = synthetic_run(s)
    s.put_result("eval", {"run_id": rid, "keep": 0.5}, {"ppl": 12.5})
    path = export_runs(s, [rid], tmp_path / "good.parquet")
    yield s, rid, path
    s.close()


def test_real_model_export_import_identical(lm, tmp_path):
    from moyu_core.runs import capture_run

    a, b = Store(tmp_path / "a.duckdb"), Store(tmp_path / "b.duckdb")
    r1 = capture_run(lm, a, "The cat sat on the mat.")
    r2 = capture_run(lm, a, "one two three", mode="parallel", prefix="Words:", dtype="float16")
    a.put_result("eval", {"run_id": r1.run_id, "method": "griffin"}, {"ppl_ratio": 1.02})
    path = export_runs(a, [r1.run_id, r2.run_id], tmp_path / "two.parquet")
    assert import_bundle(b, path) == [r1.run_id, r2.run_id]
    for rid in (r1.run_id, r2.run_id):
        ra = a.run(rid)
        assert b.run(rid) == ra
        for layer in (0, ra.n_layers // 2, ra.n_layers - 1):
            np.testing.assert_array_equal(a.activations(rid, layer), b.activations(rid, layer))
        assert a.tokens(rid) == b.tokens(rid)
        for x, y in zip(a.token_stats(rid), b.token_stats(rid)):
            np.testing.assert_array_equal(x, y)
    assert [r["result"] for r in b.results("eval")] == [{"ppl_ratio": 1.02}]
    # a standard reader sees plain columns
    df = pq.read_table(path, columns=["run_id", "layer", "pos", "piece"]).to_pandas()
    assert len(df) == sum(a.run(r).n_layers * a.run(r).n_tokens for r in (r1.run_id, r2.run_id))
    # importing again changes nothing
    before = snapshot(b)
    assert import_bundle(b, path) == [r1.run_id, r2.run_id]
    assert snapshot(b) == before
    a.close(), b.close()


def test_cli_export_import(source, tmp_path, capsys):
    from moyu_core.__main__ import main

    s, rid, _ = source
    s.close()
    out = tmp_path / "cli.parquet"
    assert main(["export", rid, "--out", str(out), "--db", str(s.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == [rid]
    other = tmp_path / "other.duckdb"
    assert main(["import", str(out), "--db", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_ids"] == [rid]
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,value\n1,2\n")
    assert main(["import", str(bad), "--db", str(other)]) == 2
    assert "not a Parquet file" in capsys.readouterr().err
    assert main(["export", "f" * 24, "--out", str(tmp_path / "x.parquet"), "--db", str(other)]) == 2


def patch_num_rows(src, dst, n_rows: int, claim: int) -> None:
    """Rewrite the footer so the file claims `claim` rows (thrift compact i64 fields equal to n_rows)."""
    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            b, v = v & 0x7F, v >> 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)
    data = src.read_bytes()
    flen = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - flen:-8]
    old, new = b"\x16" + varint(2 * n_rows), b"\x16" + varint(2 * claim)
    assert footer.count(old) >= 2
    footer = footer.replace(old, new)
    dst.write_bytes(data[:-8 - flen] + footer + len(footer).to_bytes(4, "little") + b"PAR1")


class Boom:
    def __reduce__(self):
        import os
        return (os.mkdir, ("PWNED_DIR",))


def hostile_files(tmp_path, good, source_store, rid) -> dict:
    files = {}
    p = tmp_path / "csv.parquet"
    p.write_text("run_id,layer\nabc,1\n")
    files["not parquet"] = (p, "not a Parquet file")
    p = tmp_path / "pickle.parquet"
    p.write_bytes(pickle.dumps(Boom()))
    files["pickle"] = (p, "not a Parquet file")
    p = tmp_path / "truncated.parquet"
    p.write_bytes(good.read_bytes()[:-100])
    files["truncated"] = (p, "Parquet")
    p = tmp_path / "schema.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), p)
    files["plain parquet"] = (p, "not a moyu bundle")
    p = tmp_path / "wrongschema.parquet"
    rewrite(good, p, lambda t: t.drop_columns(["resid_norm"]))
    files["wrong schema"] = (p, "wrong schema")
    p = tmp_path / "types.parquet"
    rewrite(good, p, lambda t: t.set_column(1, "layer", pa.array(t.column("layer").to_pylist(), pa.int64())))
    files["wrong types"] = (p, "wrong schema")

    # a real bundle of 1 layer x 4321 tokens, then a footer that claims three billion rows
    s = Store(tmp_path / "big.duckdb")
    big = export_runs(s, [synthetic_run(s, T=4321, L=1, D=4, H=1)], tmp_path / "big_ok.parquet")
    s.close()
    p = tmp_path / "billions.parquet"
    patch_num_rows(big, p, 4321, 3_000_000_000)
    assert pq.read_metadata(p).num_rows == 3_000_000_000  # the lie is really in the footer
    files["billions of rows"] = (p, "3,000,000,000 rows")

    def poke(col, value):
        def change(t):
            arr = t.column(col).to_pylist()
            arr[len(arr) - 1] = value
            return t.set_column(t.schema.get_field_index(col), col, pa.array(arr, t.schema.field(col).type))
        return change
    for name, col, value in [("NaN scale", "scale", float("nan")), ("inf norm", "resid_norm", float("inf")),
                             ("NaN attention", "attn_received", [float("nan")] * 3)]:
        p = tmp_path / f"{col}.parquet"
        rewrite(good, p, poke(col, value))
        files[name] = (p, "NaN or infinite")
    s = Store(tmp_path / "f16.duckdb")
    f16 = export_runs(s, [synthetic_run(s, dtype="float16", seed=3)], tmp_path / "f16_ok.parquet")
    s.close()
    p = tmp_path / "f16nan.parquet"
    rewrite(f16, p, poke("vec", np.full(16, np.inf, np.float16).tobytes()))
    files["inf activations"] = (p, "NaN or infinite")

    def manifest_edit(edit, name, expect):
        meta = json.loads(pq.read_metadata(good).metadata[b"moyu"])
        edit(meta)
        t = pq.read_table(good)
        q = tmp_path / f"{name.replace(' ', '_')}.parquet"
        pq.write_table(t.replace_schema_metadata({b"moyu": json.dumps(meta).encode()}), q)
        files[name] = (q, expect)
    manifest_edit(lambda m: m["runs"][0].update(run_id=SQL), "SQL run id", "24 hexadecimal")
    manifest_edit(lambda m: m["runs"][0].update(model=SQL), "SQL model name", "unexpected characters")
    manifest_edit(lambda m: m["runs"][0].update(fingerprint="other"), "id not matching content",
                  "does not match its content")
    manifest_edit(lambda m: m["runs"][0].update(n_tokens=m["runs"][0]["n_tokens"] + 1), "row count lie", "rows")
    manifest_edit(lambda m: m["runs"][0].update(n_layers=10**9), "huge shape", "outside")
    manifest_edit(lambda m: m.update(format_version=99), "future version", "this moyu reads")
    manifest_edit(lambda m: m["runs"][0]["params"].update(x=1), "forged params", "does not match its content")
    p = tmp_path / "dup.parquet"
    rewrite(good, p, lambda t: pa.concat_tables([t.slice(0, t.num_rows - 1), t.slice(0, 1)]))
    files["duplicate row"] = (p, "appears twice")
    p = tmp_path / "bigpiece.parquet"
    rewrite(good, p, poke("piece", "x" * 5000))
    files["oversized token piece"] = (p, "too long")
    p = tmp_path / "sparse.parquet"
    with p.open("wb") as f:
        f.write(b"PAR1")
        f.truncate(MAX_BUNDLE_BYTES + 1)
    files["oversized file"] = (p, "MB limit")
    return files


def test_hostile_files_refused_db_unchanged(source, tmp_path, monkeypatch):
    s, rid, good = source
    monkeypatch.chdir(tmp_path)
    target = Store(tmp_path / "target.duckdb")
    synthetic_run(target, seed=7)  # the victim has a run of its own
    before = snapshot(target)
    files = hostile_files(tmp_path, good, s, rid)
    assert len(files) >= 15
    for name, (path, expect) in files.items():
        with pytest.raises(MoyuError) as e:
            import_bundle(target, path)
            pytest.fail(f"{name} was imported")
        msg = str(e.value)
        assert "\n" not in msg and path.name in msg, (name, msg)
        if expect:
            assert expect in msg, (name, msg)
        assert snapshot(target) == before, name
    assert not (tmp_path / "PWNED_DIR").exists()
    # an oversized upload is refused before it touches the disk
    with pytest.raises(MoyuError, match="MB limit"):
        import_bytes(target, b"PAR1" + bytes(MAX_BUNDLE_BYTES), "huge.parquet")
    assert snapshot(target) == before
    # the good file still imports, next to the victim's run
    assert import_bundle(target, good) == [rid]
    target.close()


def test_bad_row_group_after_good_ones_rolls_back(source, tmp_path):
    s, _, _ = source
    rid2 = synthetic_run(s, T=6, seed=5)
    good = export_runs(s, [s.list_runs()[-1]["run_id"], rid2], tmp_path / "two.parquet")
    assert pq.read_metadata(good).num_row_groups >= 3
    bad = tmp_path / "late_nan.parquet"
    tbl = pq.read_table(good)
    norm = tbl.column("resid_norm").to_numpy().copy()
    norm[-1] = np.nan
    out = tbl.set_column(tbl.schema.get_field_index("resid_norm"), "resid_norm", pa.array(norm, pa.float32()))
    pq.write_table(out.replace_schema_metadata({b"moyu": pq.read_metadata(good).metadata[b"moyu"]}), bad,
                   row_group_size=5)
    target = Store(tmp_path / "t.duckdb")
    before = snapshot(target)
    with pytest.raises(MoyuError, match="NaN"):
        import_bundle(target, bad)
    assert snapshot(target) == before
    target.close()


def test_sql_in_strings_is_stored_as_text(tmp_path):
    a, b = Store(tmp_path / "a.duckdb"), Store(tmp_path / "b.duckdb")
    rid = synthetic_run(a, text=SQL, pieces=[SQL, "'", '"', ";", "--"])
    a.put_result("note", {"run_id": rid, "q": SQL}, {"text": SQL})
    import_bundle(b, export_runs(a, [rid], tmp_path / "sql.parquet"))
    assert b.run(rid).text == SQL and b.tokens(rid)[0][1] == SQL
    assert b.results("note")[0]["result"] == {"text": SQL}
    assert snapshot(b)[0][0] == 1  # the runs table is still there
    a.close(), b.close()


def test_conflicting_run_id_refused(source, tmp_path):
    s, rid, good = source
    other = Store(tmp_path / "o.duckdb")
    meta = json.loads(pq.read_metadata(good).metadata[b"moyu"])
    rec = RunRecord(**{k: v for k, v in meta["runs"][0].items() if k != "created_at"})
    rec.fingerprint = "another-model"
    rng = np.random.default_rng(1)
    other.put_run(rec, list(range(5)), list("abcde"), rng.normal(size=(2, 5, 16)).astype(np.float32),
                  rng.random((2, 3, 5)).astype(np.float32), rng.random((2, 5)).astype(np.float32))
    before = snapshot(other)
    with pytest.raises(MoyuError, match="other content"):
        import_bundle(other, good)
    assert snapshot(other) == before
    other.close()


def test_team_store_reads_in_place(source, tmp_path):
    s, rid, good = source
    team = tmp_path / "team"
    team.mkdir()
    (team / "runs.parquet").write_bytes(good.read_bytes())
    (team / "junk.parquet").write_bytes(pickle.dumps({"a": 1}))
    files_before = sorted((p.name, p.stat().st_mtime_ns) for p in team.iterdir())
    local = Store(tmp_path / "local.duckdb")
    own = synthetic_run(local, seed=9)
    layered = open_store(local.path, team)
    listed = {r["run_id"]: r["source"] for r in layered.list_runs()}
    assert listed == {own: "local", rid: "team:runs.parquet"}
    assert "junk.parquet" in layered.team.skipped
    assert layered.has_run(rid) and layered.is_team_run(rid) and not local.has_run(rid)
    assert layered.run(rid) == s.run(rid)
    np.testing.assert_array_equal(layered.activations(rid, 1), s.activations(rid, 1))
    assert layered.tokens(rid) == s.tokens(rid)
    for x, y in zip(layered.token_stats(rid), s.token_stats(rid)):
        np.testing.assert_array_equal(x, y)
    assert layered.activations(own, 0).shape == (5, 16)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in team.iterdir()) == files_before
    assert snapshot(local)[0][0] == 1  # nothing copied
    local.close()


def test_import_of_a_row_group_mixing_head_counts(tmp_path):
    """One row group may hold runs of models with different head counts: attention received is
    converted row by row, each run reads back what was exported."""
    a, b = Store(tmp_path / "a.duckdb"), Store(tmp_path / "b.duckdb")
    r3, r5 = synthetic_run(a, H=3, seed=1), synthetic_run(a, H=5, seed=2, text="other")
    path = export_runs(a, [r3, r5], tmp_path / "two.parquet")
    one = tmp_path / "one.parquet"
    rewrite(path, one, lambda t: t)
    assert pq.read_metadata(one).num_row_groups == 1
    assert import_bundle(b, one) == [r3, r5]
    for rid in (r3, r5):
        for x, y in zip(a.token_stats(rid), b.token_stats(rid)):
            np.testing.assert_array_equal(x, y)
