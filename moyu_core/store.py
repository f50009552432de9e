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

SCHEMA_VERSION = 1
DEFAULT_DB = Path(os.environ.get("MOYU_DB", Path(__file__).resolve().parent.parent / "cache" / "moyu.duckdb"))
DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY, model VARCHAR, fingerprint VARCHAR, mode VARCHAR,
        prefix VARCHAR, chat BOOLEAN, method VARCHAR, params VARCHAR, text VARCHAR,
        n_tokens INTEGER, n_layers INTEGER, d_ff INTEGER, n_heads INTEGER, dtype VARCHAR,
        created_at TIMESTAMP DEFAULT current_timestamp)""",
    "CREATE TABLE IF NOT EXISTS tokens (run_id VARCHAR, pos INTEGER, token_id INTEGER, piece VARCHAR)",
    """CREATE TABLE IF NOT EXISTS activations (
        run_id VARCHAR, layer SMALLINT, pos INTEGER, scale FLOAT,
        vec BLOB USING COMPRESSION uncompressed)""",
    """CREATE TABLE IF NOT EXISTS token_stats (
        run_id VARCHAR, layer SMALLINT, pos INTEGER, resid_norm FLOAT, attn_received FLOAT[])""",
    """CREATE TABLE IF NOT EXISTS results (
        key VARCHAR PRIMARY KEY, kind VARCHAR, model VARCHAR, method VARCHAR, params VARCHAR,
        result VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp)""",
]
_RUN_TABLES = ("tokens", "activations", "token_stats")


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
            elif row[0] != str(SCHEMA_VERSION):
                raise MoyuError(f"{self.path} has schema version {row[0]}; this moyu reads version "
                                f"{SCHEMA_VERSION}. Use another --db or export/import the runs.")

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
        row_bytes = vec.dtype.itemsize * D
        offsets = pa.py_buffer(np.arange(L * T + 1, dtype=np.int32) * row_bytes)
        blob = pa.BinaryArray.from_buffers(pa.binary(), L * T,
                                           [None, offsets, pa.py_buffer(np.ascontiguousarray(vec))])
        acts = pa.table({"run_id": pa.array([rec.run_id] * (L * T)), "layer": layer_col, "pos": pos_col,
                         "scale": scale, "vec": blob})
        H = attn_received.shape[1]
        attn = attn_received.transpose(0, 2, 1).reshape(L * T, H).astype(np.float32)
        stats = pa.table({"run_id": pa.array([rec.run_id] * (L * T)), "layer": layer_col, "pos": pos_col,
                          "resid_norm": resid_norm.reshape(L * T).astype(np.float32),
                          "attn_received": pa.FixedSizeListArray.from_arrays(pa.array(attn.ravel()), H)})
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
            con.execute("INSERT INTO activations SELECT run_id, layer, pos, scale, vec FROM _acts")
            con.register("_stats", stats)
            con.execute("INSERT INTO token_stats SELECT run_id, layer, pos, resid_norm, attn_received FROM _stats")
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
        vec = tbl.column("vec").combine_chunks()
        offsets = np.frombuffer(vec.buffers()[1], np.int32)[vec.offset:vec.offset + len(vec) + 1]
        raw = np.frombuffer(vec.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
        out = raw.view(DTYPES[rec.dtype]).reshape(len(vec), rec.d_ff).astype(np.float32)
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
            tbl = con.sql("SELECT resid_norm, attn_received FROM token_stats WHERE run_id = ? "
                          "ORDER BY layer, pos", params=[run_id]).to_arrow_table()
        L, T = rec.n_layers, rec.n_tokens
        norm = tbl.column("resid_norm").to_numpy().reshape(L, T)
        attn = tbl.column("attn_received").combine_chunks().flatten().to_numpy().reshape(L, T, -1)
        return attn.transpose(0, 2, 1).copy(), norm

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
            con.execute("DELETE FROM token_stats WHERE run_id = ?", [run_id])
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
                "SELECT a.run_id, a.layer, a.pos, t.token_id, t.piece, a.scale, a.vec, s.resid_norm, "
                "s.attn_received FROM activations a "
                "JOIN token_stats s ON s.run_id = a.run_id AND s.layer = a.layer AND s.pos = a.pos "
                "JOIN tokens t ON t.run_id = a.run_id AND t.pos = a.pos "
                "WHERE a.run_id = ? ORDER BY a.layer, a.pos", params=[run_id]).to_arrow_table()
        rec["params"] = json.loads(rec["params"] or "{}")
        rec["created_at"] = str(rec["created_at"])
        return rec, tbl

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
                con.register("_imp", tbl)
                con.execute("INSERT INTO activations SELECT run_id, layer, pos, scale, vec FROM _imp")
                con.execute("INSERT INTO token_stats SELECT run_id, layer, pos, resid_norm, attn_received FROM _imp")
                con.execute("INSERT INTO tokens SELECT run_id, pos, token_id, piece FROM _imp WHERE layer = 0")
                con.unregister("_imp")
            for r in results:
                k = content_hash({"kind": r["kind"], **r["params"]})
                if con.execute("SELECT 1 FROM results WHERE key = ?", [k]).fetchone() is None:
                    con.execute("INSERT INTO results (key, kind, model, method, params, result) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                [k, r["kind"], r["model"], r["method"],
                                 json.dumps(r["params"], sort_keys=True, default=str), json.dumps(r["result"])])
