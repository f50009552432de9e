"""The DuckDB store: the only module that holds SQL.

One file (default `cache/moyu.duckdb`, `MOYU_DB` or `--db` to change). A file stays attached only
while in use (and half a second after), so a second process (the command line while the app runs)
can take its turn: an operation that finds the file locked retries for `MOYU_DB_TIMEOUT` seconds,
then fails with a clear message. Values are always bound as parameters; table and column names
never come from users. Each run is written in one transaction: a crash leaves it whole or absent.

Activations: one row per (run, layer, token); the neuron vector is stored as raw little-endian
bytes (`vec BLOB`) of the run's dtype: int8 with a per-row float scale (default; the maximum
reconstruction error is scale/2 = max|z|/254, under 0.4% of the row's max |z|), float16 or
float32 (scale 1).

The same row holds the token's residual-stream norm and the attention it received from each
head, as raw float16 bytes (relative error under 0.05%; the largest possible value, one per
query, fits for up to 65,504 tokens). Schema 1 kept these in a table of their own as lists of
float32: a 512-token int8 run took 1.056 stored bytes per activation value, 1.044 now
(benchmarks/capture.py). A schema-1 file is converted when first opened.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb
import numpy as np
import pyarrow as pa

from .errors import MoyuError

SCHEMA_VERSION = 2  # the database file's tables; a file of version 1 is converted on open
RUN_FORMAT = 1  # what a run holds: hashed into run ids, written into bundles; not the file layout
DEFAULT_DB = Path(os.environ.get("MOYU_DB", Path(__file__).resolve().parent.parent / "cache" / "moyu.duckdb"))
DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}

_ACTIVATIONS = """CREATE TABLE IF NOT EXISTS {table} (
    run_id VARCHAR, layer SMALLINT, pos INTEGER, scale FLOAT, vec BLOB USING COMPRESSION uncompressed,
    resid_norm FLOAT, attn_received BLOB)"""
_ACT_COLUMNS = "run_id, layer, pos, scale, vec, resid_norm, attn_received"
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY, model VARCHAR, fingerprint VARCHAR, mode VARCHAR,
        prefix VARCHAR, chat BOOLEAN, method VARCHAR, params VARCHAR, text VARCHAR,
        n_tokens INTEGER, n_layers INTEGER, d_ff INTEGER, n_heads INTEGER, dtype VARCHAR,
        created_at TIMESTAMP DEFAULT current_timestamp)""",
    "CREATE TABLE IF NOT EXISTS tokens (run_id VARCHAR, pos INTEGER, token_id INTEGER, piece VARCHAR)",
    _ACTIVATIONS.format(table="activations"),
    """CREATE TABLE IF NOT EXISTS results (
        key VARCHAR PRIMARY KEY, kind VARCHAR, model VARCHAR, method VARCHAR, params VARCHAR,
        result VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp)""",
]


def content_hash(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys): content addresses for runs and results."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def quantize(z: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors of `dtype`, per-row scale) for float32 rows z (N, d_ff)."""
    if dtype == "int8":
        scale = np.abs(z).max(axis=1) / 127.0
        safe = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.rint(z / safe[:, None]), -127, 127).astype(np.int8)
        return q, scale.astype(np.float32)
    if dtype not in DTYPES:
        raise MoyuError(f"unknown dtype '{dtype}'; choose int8, float16 or float32")
    return z.astype(DTYPES[dtype]), np.ones(len(z), np.float32)


def _blobs(rows: np.ndarray) -> pa.BinaryArray:
    """One BLOB per row of a 2-D array: its raw little-endian bytes, no copy."""
    rows = np.ascontiguousarray(rows)
    width = rows.dtype.itemsize * rows.shape[1]
    offsets = pa.py_buffer(np.arange(len(rows) + 1, dtype=np.int32) * width)
    return pa.BinaryArray.from_buffers(pa.binary(), len(rows), [None, offsets, pa.py_buffer(rows)])


def _unblob(col: pa.ChunkedArray | pa.Array, dtype, width: int) -> np.ndarray:
    """The inverse of `_blobs`: (rows, width) of `dtype` from a column of equal-length BLOBs."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + len(arr) + 1]
    raw = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].view(dtype)
    return raw.reshape(len(arr), width)


_F16_MAX = float(np.finfo(np.float16).max)


def _attn_blobs(attn: np.ndarray) -> pa.BinaryArray:
    """Attention received (rows, heads) as the float16 BLOBs of the activations table."""
    return _blobs(np.clip(attn, -_F16_MAX, _F16_MAX).astype(np.float16))


def _attn_blobs_from_lists(col) -> pa.BinaryArray:
    """The same from a column of float lists (schema 1 files, bundles; lengths may differ
    between runs)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    values = np.clip(arr.flatten().to_numpy(), -_F16_MAX, _F16_MAX).astype(np.float16)
    offsets = arr.offsets.to_numpy()
    return pa.BinaryArray.from_buffers(pa.binary(), len(arr), [
        None, pa.py_buffer(((offsets - offsets[0]) * 2).astype(np.int32)), pa.py_buffer(values)])


def _attn_lists(col, heads: int) -> pa.ListArray:
    """Attention BLOBs back to the list<float32> of a run's rows (export, bundles)."""
    attn = _unblob(col, np.float16, heads).astype(np.float32)
    offsets = pa.array(np.arange(len(attn) + 1, dtype=np.int32) * attn.shape[1])
    return pa.ListArray.from_arrays(offsets, pa.array(attn.ravel()))


# Database files are attached to one in-memory DuckDB per process: attaching takes under a
# millisecond where a new connection took ten. Row groups of 2048 rows instead of DuckDB's
# 122,880: a 512-token run (30 x 512 activation rows) then fills whole row groups that the insert
# writes straight to the file; with the default size every commit rewrote (and recompressed) the
# partly filled row group holding earlier runs, a checkpoint that grew to seconds. The size is not
# stored in the file, so every attach names it. New files get 128 KiB blocks (the default 256 KiB
# left more of a small run's last blocks empty: 1.078 stored bytes per int8 value against 1.056).
# Activation vectors are not compressed: on int8 blobs DuckDB's default (FSST) and ZSTD saved a
# quarter to a third of the file but added 0.1 s (ZSTD) to seconds (FSST checkpoints) to each
# 512-token capture, whose forward pass takes 0.5 s.
_HOST: duckdb.DuckDBPyConnection | None = None
_HOST_LOCK = threading.Lock()


def _host_execute(sql: str) -> None:
    global _HOST
    with _HOST_LOCK:
        if _HOST is None:
            _HOST = duckdb.connect(":memory:")
        _HOST.execute(sql)


def _cursor(alias: str) -> duckdb.DuckDBPyConnection:
    with _HOST_LOCK:
        cur = _HOST.cursor()
    cur.execute(f"USE {alias}")
    return cur


def _attach(path: Path, alias: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    quoted = str(path).replace("'", "''")
    while True:
        try:
            new = "" if path.exists() else ", BLOCK_SIZE 131072"
            _host_execute(f"ATTACH '{quoted}' AS {alias} (ROW_GROUP_SIZE 2048{new})")
            return
        except duckdb.Error as e:
            if not isinstance(e, duckdb.IOException) or "lock" not in str(e).lower():
                raise MoyuError(f"cannot open database {path}: {str(e).splitlines()[0]}") from e
            if time.monotonic() > deadline:
                raise MoyuError(f"database {path} is held by another process; "
                                f"waited {timeout:.0f} s (MOYU_DB_TIMEOUT)") from e
        time.sleep(0.1)


class _Holder:
    """One attachment per database file in this process, detached after `IDLE_SECONDS` without
    use so that another process (DuckDB allows one writer) can take its turn."""

    IDLE_SECONDS = float(os.environ.get("MOYU_DB_IDLE", "0.5"))

    def __init__(self, path: Path):
        self.lock = threading.Lock()
        self.alias = "db_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
        self.attached = False
        self.active = 0
        self.last_used = 0.0
        self.timer: threading.Timer | None = None

    def release(self) -> None:
        with self.lock:
            self.active -= 1
            self.last_used = time.monotonic()
            if self.timer is None:
                self.timer = threading.Timer(self.IDLE_SECONDS, self._close_if_idle)
                self.timer.daemon = True
                self.timer.start()

    def _detach(self) -> None:  # with self.lock held
        if self.attached:
            self.attached = False
            _host_execute(f"DETACH {self.alias}")

    def _close_if_idle(self) -> None:
        with self.lock:
            self.timer = None
            idle = time.monotonic() - self.last_used
            if self.attached and self.active == 0 and idle >= self.IDLE_SECONDS * 0.9:
                self._detach()
            elif self.attached:
                self.timer = threading.Timer(max(0.05, self.IDLE_SECONDS - idle), self._close_if_idle)
                self.timer.daemon = True
                self.timer.start()

    def close_now(self) -> None:
        with self.lock:
            if self.active == 0:
                self._detach()


_HOLDERS: dict[Path, _Holder] = {}
_HOLDERS_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    for h in list(_HOLDERS.values()):
        with h.lock:
            if h.timer is not None:
                h.timer.cancel()
                h.timer = None
            h._detach()


def _holder(path: Path) -> _Holder:
    with _HOLDERS_LOCK:
        key = path.resolve()
        if key not in _HOLDERS:
            _HOLDERS[key] = _Holder(key)
        return _HOLDERS[key]


@dataclass
class RunRecord:
    run_id: str
    model: str
    fingerprint: str
    mode: str
    prefix: str
    chat: bool
    method: str
    params: dict
    text: str
    n_tokens: int
    n_layers: int
    d_ff: int
    n_heads: int
    dtype: str


class Store:
    """A DuckDB file of runs and results. Cheap to construct; holds no open connection."""

    _write_lock = threading.Lock()

    def __init__(self, path: str | Path | None = None, timeout: float | None = None):
        self.path = Path(path or DEFAULT_DB)
        self.timeout = float(os.environ.get("MOYU_DB_TIMEOUT", "15") if timeout is None else timeout)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            for stmt in _SCHEMA:
                con.execute(stmt)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif row[0] not in (str(SCHEMA_VERSION), "1"):
                raise MoyuError(f"{self.path} has schema version {row[0]}; this moyu reads version "
                                f"{SCHEMA_VERSION}. Use another --db or export/import the runs.")
        if row is not None and row[0] == "1":
            self._convert_from_1()

    def _convert_from_1(self) -> None:
        """Schema 1 -> 2, in one transaction: each run's token_stats rows (resid_norm, attention
        as float32 lists) join its activation rows, attention as float16 BLOBs. Run ids and
        everything else stay the same."""
        with self._transaction() as con:
            con.execute(_ACTIVATIONS.format(table="activations_2"))
            for (rid,) in con.execute("SELECT DISTINCT run_id FROM activations").fetchall():
                tbl = con.sql("SELECT a.run_id, a.layer, a.pos, a.scale, a.vec, s.resid_norm, s.attn_received "
                              "FROM activations a JOIN token_stats s USING (run_id, layer, pos) "
                              "WHERE a.run_id = ? ORDER BY a.layer, a.pos", params=[rid]).to_arrow_table()
                tbl = tbl.set_column(6, "attn_received", _attn_blobs_from_lists(tbl.column(6)))
                con.register("_old", tbl)
                con.execute("INSERT INTO activations_2 SELECT * FROM _old")
                con.unregister("_old")
            con.execute("DROP TABLE activations")
            con.execute("DROP TABLE token_stats")
            con.execute("ALTER TABLE activations_2 RENAME TO activations")
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])

    def close(self) -> None:
        """Release the file now (it is released anyway after a short idle time)."""
        _holder(self.path).close_now()

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        holder = _holder(self.path)
        with holder.lock:
            if not holder.attached:
                _attach(self.path, holder.alias, self.timeout)
                holder.attached = True
            holder.active += 1
        try:
            cur = _cursor(holder.alias)
            try:
                yield cur
            finally:
                cur.close()
        finally:
            holder.release()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._write_lock, self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # ---- runs -------------------------------------------------------------------------------

    def has_run(self, run_id: str) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is not None

    def run(self, run_id: str) -> RunRecord:
        with self._connect() as con:
            cur = con.execute("SELECT * EXCLUDE (created_at) FROM runs WHERE run_id = ?", [run_id])
            row = cur.fetchone()
            if row is None:
                raise MoyuError(f"no run '{run_id}' in {self.path}")
            rec = dict(zip([d[0] for d in cur.description], row))
        rec["params"] = json.loads(rec["params"] or "{}")
        return RunRecord(**rec)

    def put_run(self, rec: RunRecord, token_ids: list[int], pieces: list[str], z: np.ndarray | None,
                attn_received: np.ndarray, resid_norm: np.ndarray,
                quantized: tuple[np.ndarray, np.ndarray] | None = None) -> bool:
        """Store a run whole, in one transaction. z (L, T, d_ff) float, or `quantized` = (int8
        (L, T, d_ff), scale (L, T)) already in the run's dtype; attn_received (L, H, T),
        resid_norm (L, T). Returns False if the run was already there."""
        if quantized is not None:
            L, T, D = quantized[0].shape
            vec, scale = quantized[0].reshape(L * T, D), quantized[1].reshape(L * T).astype(np.float32)
        else:
            L, T, D = z.shape
            vec, scale = quantize(z.reshape(L * T, D), rec.dtype)
        layer_col = np.repeat(np.arange(L, dtype=np.int16), T)
        pos_col = np.tile(np.arange(T, dtype=np.int32), L)
        H = attn_received.shape[1]
        acts = pa.table({"run_id": pa.array([rec.run_id] * (L * T)), "layer": layer_col, "pos": pos_col,
                         "scale": scale, "vec": _blobs(vec),
                         "resid_norm": resid_norm.reshape(L * T).astype(np.float32),
                         "attn_received": _attn_blobs(attn_received.transpose(0, 2, 1).reshape(L * T, H))})
        toks = pa.table({"run_id": pa.array([rec.run_id] * T), "pos": np.arange(T, dtype=np.int32),
                         "token_id": np.asarray(token_ids, np.int32), "piece": pa.array(pieces, pa.string())})
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [rec.run_id]).fetchone():
                return False
            con.execute("INSERT INTO runs (run_id, model, fingerprint, mode, prefix, chat, method, params, "
                        "text, n_tokens, n_layers, d_ff, n_heads, dtype) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [rec.run_id, rec.model, rec.fingerprint, rec.mode, rec.prefix, rec.chat, rec.method,
                         json.dumps(rec.params, sort_keys=True), rec.text, rec.n_tokens, rec.n_layers,
                         rec.d_ff, rec.n_heads, rec.dtype])
            con.register("_acts", acts)
            con.execute(f"INSERT INTO activations SELECT {_ACT_COLUMNS} FROM _acts")
            con.register("_toks", toks)
            con.execute("INSERT INTO tokens SELECT run_id, pos, token_id, piece FROM _toks")
        return True

    def activations(self, run_id: str, layer: int) -> np.ndarray:
        """float32 (tokens, d_ff) of one layer of a run, dequantized."""
        rec = self.run(run_id)
        if not 0 <= layer < rec.n_layers:
            raise MoyuError(f"layer {layer} out of range 0..{rec.n_layers - 1}")
        with self._connect() as con:
            tbl = con.sql("SELECT scale, vec FROM activations WHERE run_id = ? AND layer = ? ORDER BY pos",
                          params=[run_id, layer]).to_arrow_table()
        out = _unblob(tbl.column("vec"), DTYPES[rec.dtype], rec.d_ff).astype(np.float32)
        if rec.dtype == "int8":
            out *= tbl.column("scale").to_numpy()[:, None]
        return out

    def tokens(self, run_id: str) -> list[tuple[int, str]]:
        with self._connect() as con:
            rows = con.execute("SELECT token_id, piece FROM tokens WHERE run_id = ? ORDER BY pos",
                               [run_id]).fetchall()
        return [(int(a), b) for a, b in rows]

    def token_stats(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(attn_received (L, H, T), resid_norm (L, T)) of a run."""
        rec = self.run(run_id)
        with self._connect() as con:
            tbl = con.sql("SELECT resid_norm, attn_received FROM activations WHERE run_id = ? "
                          "ORDER BY layer, pos", params=[run_id]).to_arrow_table()
        L, T = rec.n_layers, rec.n_tokens
        norm = tbl.column("resid_norm").to_numpy().reshape(L, T)
        attn = _unblob(tbl.column("attn_received"), np.float16, rec.n_heads).reshape(L, T, -1)
        return attn.transpose(0, 2, 1).astype(np.float32), norm

    def list_runs(self, model: str | None = None, method: str | None = None, text: str | None = None,
                  limit: int = 1000) -> list[dict]:
        """Runs, newest first, filtered by model, method and a substring of the text."""
        with self._connect() as con:
            cur = con.execute(
                "SELECT run_id, model, mode, method, params, n_tokens, n_layers, d_ff, dtype, created_at, "
                "left(text, 200) AS text FROM runs WHERE (? IS NULL OR model = ?) AND (? IS NULL OR method = ?) "
                "AND (? IS NULL OR contains(lower(text), lower(?))) ORDER BY created_at DESC LIMIT ?",
                [model, model, method, method, text, text, limit])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def delete_run(self, run_id: str) -> bool:
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is None:
                return False
            con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM tokens WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM activations WHERE run_id = ?", [run_id])
        return True

    # ---- results (metrics, experiments, router reports): content-addressed JSON ----------------

    def put_result(self, kind: str, key: dict, result: dict, model: str | None = None,
                   method: str | None = None) -> str:
        k = content_hash({"kind": kind, **key})
        with self._transaction() as con:
            con.execute("DELETE FROM results WHERE key = ?", [k])
            con.execute("INSERT INTO results (key, kind, model, method, params, result) VALUES (?, ?, ?, ?, ?, ?)",
                        [k, kind, model, method, json.dumps(key, sort_keys=True, default=str),
                         json.dumps(result, default=float)])
        return k

    def get_result(self, kind: str, key: dict) -> dict | None:
        k = content_hash({"kind": kind, **key})
        with self._connect() as con:
            row = con.execute("SELECT result FROM results WHERE key = ?", [k]).fetchone()
        return None if row is None else json.loads(row[0])

    def results(self, kind: str | None = None, model: str | None = None) -> list[dict]:
        with self._connect() as con:
            rows = con.execute("SELECT kind, model, method, params, result, created_at FROM results "
                               "WHERE (? IS NULL OR kind = ?) AND (? IS NULL OR model = ?) ORDER BY created_at",
                               [kind, kind, model, model]).fetchall()
        return [{"kind": r[0], "model": r[1], "method": r[2], "params": json.loads(r[3]),
                 "result": json.loads(r[4]), "created_at": r[5]} for r in rows]

    # ---- export / import of bundles (validation of untrusted files lives in bundle.py) ----------

    def run_rows(self, run_id: str) -> tuple[dict, pa.Table]:
        """(run record as a dict with created_at, one row per (layer, pos) ordered by layer, pos:
        run_id, layer, pos, token_id, piece, scale, vec, resid_norm, attn_received) for export."""
        with self._connect() as con:
            cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
            rows = cur.fetchall()
            if not rows:
                raise MoyuError(f"no run '{run_id}' in {self.path}")
            rec = dict(zip([d[0] for d in cur.description], rows[0]))
            tbl = con.sql(
                "SELECT a.run_id, a.layer, a.pos, t.token_id, t.piece, a.scale, a.vec, a.resid_norm, "
                "a.attn_received FROM activations a "
                "JOIN tokens t ON t.run_id = a.run_id AND t.pos = a.pos "
                "WHERE a.run_id = ? ORDER BY a.layer, a.pos", params=[run_id]).to_arrow_table()
        rec["params"] = json.loads(rec["params"] or "{}")
        rec["created_at"] = str(rec["created_at"])
        i = tbl.schema.get_field_index("attn_received")
        return rec, tbl.set_column(i, "attn_received", _attn_lists(tbl.column(i), rec["n_heads"]))

    def results_for_runs(self, run_ids: list[str]) -> list[dict]:
        """Results rows whose key mentions one of the runs (metrics tied to them), for export."""
        out = []
        with self._connect() as con:
            for rid in run_ids:
                rows = con.execute("SELECT kind, model, method, params, result FROM results "
                                   "WHERE contains(params, ?) ORDER BY created_at", [rid]).fetchall()
                out += [{"kind": r[0], "model": r[1], "method": r[2], "params": json.loads(r[3]),
                         "result": json.loads(r[4])} for r in rows]
        return out

    def import_runs(self, records: list[dict], tables: Iterator[pa.Table], results: list[dict]) -> None:
        """Write whole runs (records + their rows, as validated Arrow tables with the columns of
        `run_rows`) and results in ONE transaction: any error (also one raised by the `tables`
        iterator) rolls everything back. A run id already present is refused."""
        with self._transaction() as con:
            for rec in records:
                if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [rec["run_id"]]).fetchone():
                    raise MoyuError(f"run {rec['run_id']} is already in {self.path}")
                con.execute("INSERT INTO runs (run_id, model, fingerprint, mode, prefix, chat, method, params, "
                            "text, n_tokens, n_layers, d_ff, n_heads, dtype) VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [rec["run_id"], rec["model"], rec["fingerprint"], rec["mode"], rec["prefix"],
                             rec["chat"], rec["method"], json.dumps(rec["params"], sort_keys=True), rec["text"],
                             rec["n_tokens"], rec["n_layers"], rec["d_ff"], rec["n_heads"], rec["dtype"]])
            for tbl in tables:
                i = tbl.schema.get_field_index("attn_received")
                tbl = tbl.set_column(i, "attn_received", _attn_blobs_from_lists(tbl.column(i)))
                con.register("_imp", tbl)
                con.execute(f"INSERT INTO activations SELECT {_ACT_COLUMNS} FROM _imp")
                con.execute("INSERT INTO tokens SELECT run_id, pos, token_id, piece FROM _imp WHERE layer = 0")
                con.unregister("_imp")
            for r in results:
                k = content_hash({"kind": r["kind"], **r["params"]})
                if con.execute("SELECT 1 FROM results WHERE key = ?", [k]).fetchone() is None:
                    con.execute("INSERT INTO results (key, kind, model, method, params, result) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                [k, r["kind"], r["model"], r["method"],
                                 json.dumps(r["params"], sort_keys=True, default=str), json.dumps(r["result"])])
