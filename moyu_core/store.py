"""The DuckDB store: the only module that holds SQL.

One file (default `cache/moyu.duckdb`, `MOYU_DB` or `--db` to change). A file stays attached only
while in use (and half a second after), so a second process (the command line while the app runs)
can take its turn: an operation that finds the file locked retries for `MOYU_DB_TIMEOUT` seconds,
then fails with a clear message. Values are always bound as parameters; table and column names
never come from users. Each run is written in one transaction: a crash leaves it whole or absent.

Activations: one row per (run, layer, token) holding the neuron vector (`vec BLOB`, with its
per-row `scale`), the token's residual-stream norm and the attention it received from each head
(a float16 BLOB); `blobs.py` is the codec. Schema 1 kept norms and attention in a table of
their own; a schema-1 file is converted when first opened.

A file from elsewhere is checked before any statement reads from it: a view or a macro could read
local files, so a file holding one, or tables other than moyu's, is refused (`_check_layout`).
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import duckdb
import numpy as np
import pyarrow as pa

from . import blobs
from .errors import MoyuError

SCHEMA_VERSION = 2  # the database file's tables; a file of version 1 is converted on open
MODES = ("sequential", "parallel")  # input manners of a run
RUN_FORMAT = 1  # what a run holds: hashed into run ids, written into bundles; not the file layout
DEFAULT_DB = Path(os.environ.get("MOYU_DB", Path(__file__).resolve().parent.parent / "cache" / "moyu.duckdb"))

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
# The two tables of schema 1 that differ from schema 2 (`_convert_from_1` reads them).
_SCHEMA_1 = [
    "CREATE TABLE activations (run_id VARCHAR, layer SMALLINT, pos INTEGER, scale FLOAT, vec BLOB)",
    "CREATE TABLE token_stats (run_id VARCHAR, layer SMALLINT, pos INTEGER, resid_norm FLOAT, "
    "attn_received FLOAT[])",
]


def content_hash(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys): content addresses for runs and results."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def run_id_for(fingerprint: str, ids: list[int], mode: str, prefix_ids: list[int], method: str,
               params: dict, dtype: str) -> str:
    """A run's content address: model weights, token ids, input manner, the context tokens before
    them, method and parameters, dtype and RUN_FORMAT. Capture computes it before calling the
    model; an import recomputes it to check that a bundle's run id matches its content."""
    return content_hash({"fingerprint": fingerprint, "ids": ids, "mode": mode, "prefix": prefix_ids,
                         "method": method, "params": params, "dtype": dtype, "schema": RUN_FORMAT})


# Database files are attached to one in-memory DuckDB per process: attaching is much cheaper than
# opening a connection. Row groups of 2048 rows instead of DuckDB's 122,880: a run's activation
# rows then fill whole row groups that the insert writes straight to the file, where with the
# default size every commit rewrote (and recompressed) the partly filled row group holding earlier
# runs. The size is not stored in the file, so every attach names it. New files get 128 KiB blocks,
# which leave less of a small run's last blocks empty. Activation vectors are not compressed: on
# int8 blobs compression saves some disk but adds checkpoint time to every capture, and capture
# time is what this layout is tuned for (benchmarks/capture.py measures it and bytes per value).
_HOST: duckdb.DuckDBPyConnection | None = None
_HOST_LOCK = threading.Lock()


def _host_execute(sql: str, params: list | None = None) -> list[tuple]:
    global _HOST
    with _HOST_LOCK:
        if _HOST is None:
            _HOST = duckdb.connect(":memory:")
        return _HOST.execute(sql, params).fetchall()


def _cursor(alias: str) -> duckdb.DuckDBPyConnection:
    with _HOST_LOCK:
        cur = _HOST.cursor()
    cur.execute(f"USE {alias}")
    return cur


def _file_state(path: Path) -> tuple:
    """What tells a file apart from the one seen before: inode, size, mtime and a hash of the
    headers (DuckDB counts checkpoints there), and the same of its write-ahead log."""
    def state(p: Path) -> tuple | None:
        try:
            with p.open("rb") as f:
                st = os.fstat(f.fileno())
                head = hashlib.blake2b(f.read(3 * 4096), digest_size=16).digest()
        except OSError:  # absent (a new file), or unreadable: ATTACH says why
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, head
    return state(path), state(path.with_name(path.name + ".wal"))


def _attach(path: Path, alias: str, timeout: float, known: tuple | None = None) -> None:
    """Attach the file under `alias` and check its layout, unless it is still in the `known`
    state (as this process left it when it last detached it): the check lists every function
    DuckDB has, which takes far longer than the attach."""
    deadline = time.monotonic() + timeout
    quoted = str(path).replace("'", "''")
    while True:
        try:
            before = _file_state(path)
            new = "" if path.exists() else ", BLOCK_SIZE 131072"
            _host_execute(f"ATTACH '{quoted}' AS {alias} (ROW_GROUP_SIZE 2048{new})")
            break
        except duckdb.Error as e:
            if not isinstance(e, duckdb.IOException) or "lock" not in str(e).lower():
                raise MoyuError(f"cannot open database {path}: {str(e).splitlines()[0]}") from e
            if time.monotonic() > deadline:
                raise MoyuError(f"database {path} is held by another process; "
                                f"waited {timeout:.0f} s (MOYU_DB_TIMEOUT)") from e
        time.sleep(0.1)
    if before != known:
        try:
            _check_layout(path, alias)
        except BaseException:
            _host_execute(f"DETACH {alias}")
            raise


# ---- a file from elsewhere: only moyu's tables, no view, no macro --------------------------------

_COLUMNS_SQL = ("SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns() "
                "WHERE database_name = ? ORDER BY schema_name, table_name, column_index")


def _columns(rows: list[tuple]) -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, type), ...] in order}; tables outside schema main are named schema.table."""
    out: dict[str, list[tuple[str, str]]] = {}
    for schema, table, column, dtype in rows:
        out.setdefault(table if schema == "main" else f"{schema}.{table}", []).append((column, dtype))
    return out


@functools.cache
def _layouts() -> tuple[dict, dict]:
    """The columns of schema 2's tables and of schema 1's differing tables, as DuckDB reports them."""
    out = []
    for ddl in (_SCHEMA, _SCHEMA_1):
        con = duckdb.connect(":memory:")
        try:
            for stmt in ddl:
                con.execute(stmt)
            out.append(_columns(con.execute(_COLUMNS_SQL, ["memory"]).fetchall()))
        finally:
            con.close()
    return out[0], out[1]


def _check_layout(path: Path, alias: str) -> None:
    """Refuse an attached file that is not a moyu store, reading its catalog only (no statement
    has read from it yet): a view (it can read local files: read_csv('/etc/passwd')), a macro
    (it can stand in for a built-in function the store calls, and read files), a table moyu does
    not have, or one of moyu's tables with other columns or types. An empty file passes."""
    def refuse(why: str) -> MoyuError:
        return MoyuError(f"{path} is not a moyu database: {why}; refusing to open it")

    now, old = _layouts()
    views = _host_execute("SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = ? "
                          "ORDER BY schema_name, view_name", [alias])
    if views:
        schema, name = views[0]
        name = name if schema == "main" else f"{schema}.{name}"
        what = f"table '{name}'" if name in now or name in old else f"'{name}'"
        raise refuse(f"{what} is a view (a view can read local files)")
    macros = _host_execute("SELECT function_name FROM duckdb_functions() WHERE database_name = ? "
                           "ORDER BY function_name", [alias])
    if macros:
        raise refuse(f"it defines the macro '{macros[0][0]}' (a macro can stand in for a built-in "
                     "function and read local files)")
    for name, cols in _columns(_host_execute(_COLUMNS_SQL, [alias])).items():
        if name not in now and name not in old:
            raise refuse(f"it holds a table '{name}' that moyu does not have")
        if cols != now.get(name) and cols != old.get(name):
            want = now.get(name) or old[name]
            raise refuse(f"table '{name}' has the columns ({', '.join(f'{c} {t}' for c, t in cols)}); "
                         f"moyu's has ({', '.join(f'{c} {t}' for c, t in want)})")


class _Holder:
    """One attachment per database file in this process, detached after `IDLE_SECONDS` without
    use so that another process (DuckDB allows one writer) can take its turn."""

    IDLE_SECONDS = float(os.environ.get("MOYU_DB_IDLE", "0.5"))

    def __init__(self, path: Path):
        self.path = path
        self.known: tuple | None = None  # the file's state when this process last detached it
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
            self.known = _file_state(self.path)

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


_RUN_FIELDS = [f.name for f in fields(RunRecord)]


def _insert_run(con: duckdb.DuckDBPyConnection, rec: dict) -> None:
    """One row of `runs` from a run record's fields (params as sorted JSON)."""
    values = [json.dumps(rec[k], sort_keys=True) if k == "params" else rec[k] for k in _RUN_FIELDS]
    con.execute(f"INSERT INTO runs ({', '.join(_RUN_FIELDS)}) VALUES ({', '.join('?' * len(values))})", values)


@runtime_checkable
class RunReader(Protocol):
    """The reads the app and the experiments make on runs. `Store` implements it over a DuckDB
    file, `share.team.TeamStore` over a folder of bundles, `share.team.LayeredStore` over both;
    writes (captures, results, imports, deletes) always go to a `Store`."""

    def has_run(self, run_id: str) -> bool: ...

    def run(self, run_id: str) -> RunRecord: ...

    def activations(self, run_id: str, layer: int) -> np.ndarray: ...

    def tokens(self, run_id: str) -> list[tuple[int, str]]: ...

    def token_stats(self, run_id: str) -> tuple[np.ndarray, np.ndarray]: ...

    def list_runs(self, model: str | None = None, method: str | None = None, text: str | None = None,
                  limit: int = 1000) -> list[dict]: ...


class Store:
    """A DuckDB file of runs and results (a `RunReader`, and where every write goes). Cheap to
    construct; holds no open connection."""

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
                tbl = tbl.set_column(6, "attn_received", blobs.attn_lists_to_blobs(tbl.column(6)))
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
                _attach(self.path, holder.alias, self.timeout, holder.known)
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
            vec, scale = blobs.quantize(z.reshape(L * T, D), rec.dtype)
        layer_col = np.repeat(np.arange(L, dtype=np.int16), T)
        pos_col = np.tile(np.arange(T, dtype=np.int32), L)
        H = attn_received.shape[1]
        acts = pa.table({"run_id": pa.array([rec.run_id] * (L * T)), "layer": layer_col, "pos": pos_col,
                         "scale": scale, "vec": blobs.to_blobs(vec),
                         "resid_norm": resid_norm.reshape(L * T).astype(np.float32),
                         "attn_received": blobs.attn_to_blobs(attn_received.transpose(0, 2, 1).reshape(L * T, H))})
        toks = pa.table({"run_id": pa.array([rec.run_id] * T), "pos": np.arange(T, dtype=np.int32),
                         "token_id": np.asarray(token_ids, np.int32), "piece": pa.array(pieces, pa.string())})
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [rec.run_id]).fetchone():
                return False
            _insert_run(con, asdict(rec))
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
        return blobs.dequantize(tbl.column("vec"), tbl.column("scale"), rec.dtype, rec.d_ff)

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
        attn = blobs.attn_from_blobs(tbl.column("attn_received"), rec.n_heads).reshape(L, T, -1)
        return attn.transpose(0, 2, 1), norm

    def list_runs(self, model: str | None = None, method: str | None = None, text: str | None = None,
                  limit: int = 1000) -> list[dict]:
        """Runs, newest first, filtered by model, method and a substring of the text."""
        with self._connect() as con:
            cur = con.execute(
                "SELECT run_id, model, mode, prefix, method, params, n_tokens, n_layers, d_ff, dtype, created_at, "
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

    # ---- export / import of bundles (validation of untrusted files lives in share/checks.py) -----

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
        return rec, tbl.set_column(i, "attn_received", blobs.attn_to_lists(
            blobs.attn_from_blobs(tbl.column(i), rec["n_heads"])))

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
                _insert_run(con, rec)
            for tbl in tables:
                i = tbl.schema.get_field_index("attn_received")
                tbl = tbl.set_column(i, "attn_received", blobs.attn_lists_to_blobs(tbl.column(i)))
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
