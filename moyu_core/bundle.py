"""Share runs as one Parquet file (a *bundle*), import bundles safely, attach a team folder.

A bundle is a single Parquet file with one row per (run, layer, token):

    run_id, layer, pos, token_id, piece, scale, vec, resid_norm, attn_received

(`vec` is the stored neuron vector as raw little-endian bytes of the run's dtype, `scale` its
per-row float scale, exactly as the store keeps them), plus a JSON manifest in the Parquet
key-value metadata under `moyu`: format name and version, the run records (model, fingerprint,
input manner, method and parameters, text, shape, dtype) and the results rows tied to the runs
(metrics). Any Parquet reader opens it: `SELECT * FROM 'runs.parquet' WHERE layer = 3`.

Bundles come from other people, so every file is treated as hostile until checked:
size limit, Parquet magic bytes at both ends, footer size, then the footer alone (row count,
uncompressed size, schema, manifest) *before* any data page is read; then each row group is
checked (ids, ranges, vector lengths, finite numbers, every (run, layer, token) exactly once)
while it is written, all in one transaction that rolls back on the first problem. Files are
read with pyarrow (never with DuckDB, never with pickle); values reach DuckDB only as bound
parameters or validated Arrow tables.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import MoyuError
from .store import DTYPES, RUN_FORMAT, RunRecord, Store, content_hash

FORMAT = "moyu-bundle"
FORMAT_VERSION = 1
MANIFEST_KEY = b"moyu"
MAX_BUNDLE_MB = 100                  # same as server.maxUploadSize in .streamlit/config.toml
MAX_BUNDLE_BYTES = MAX_BUNDLE_MB * 1024 * 1024
MAX_FOOTER_BYTES = 32 * 1024 * 1024  # the manifest holds the prompts (2048 tokens of text each)
MAX_UNCOMPRESSED = 2 * 1024 ** 3     # decompression-bomb guard, from the footer
MAX_ROW_GROUP_BYTES = 256 * 1024 ** 2
MAX_ROWS = 8_000_000
MAX_RUNS = 1000
MAX_TEXT = 1_000_000
MAX_PIECE = 1000
RUN_ID = re.compile(r"^[0-9a-f]{24}$")
NAME = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,200}$")
MODES = ("sequential", "parallel")

SCHEMA = pa.schema([
    ("run_id", pa.string()), ("layer", pa.int16()), ("pos", pa.int32()), ("token_id", pa.int32()),
    ("piece", pa.string()), ("scale", pa.float32()), ("vec", pa.binary()), ("resid_norm", pa.float32()),
    ("attn_received", pa.list_(pa.float32())),
])
_RECORD_FIELDS = {"run_id": str, "model": str, "fingerprint": str, "mode": str, "prefix": str, "chat": bool,
                  "method": str, "params": dict, "text": str, "n_tokens": int, "n_layers": int, "d_ff": int,
                  "n_heads": int, "dtype": str}
_LIMITS = {"n_tokens": 32768, "n_layers": 512, "d_ff": 65536, "n_heads": 1024}


# ---- export ----------------------------------------------------------------------------------------

def export_runs(store: Store, run_ids: list[str], out_path: str | Path) -> Path:
    """Write the runs (and the results rows that mention them) to one Parquet bundle. The file
    appears whole or not at all (written beside, then renamed)."""
    ids = list(dict.fromkeys(run_ids))
    store = getattr(store, "local", store)  # a LayeredStore exports its local runs
    if not ids:
        raise MoyuError("no runs to export: give at least one run id")
    if len(ids) > MAX_RUNS:
        raise MoyuError(f"at most {MAX_RUNS} runs per bundle")
    for rid in ids:
        if not store.has_run(rid):
            raise MoyuError(f"no run '{rid}' in {store.path}")
    out = Path(out_path)
    if out.suffix != ".parquet":
        raise MoyuError(f"the bundle name must end in .parquet (got {out.name})")
    out.parent.mkdir(parents=True, exist_ok=True)
    records, tables = [], []
    for rid in ids:
        rec, tbl = store.run_rows(rid)
        records.append({k: rec[k] for k in _RECORD_FIELDS} | {"created_at": rec["created_at"]})
        tables.append(tbl.cast(SCHEMA))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "schema_version": RUN_FORMAT,
                "runs": records, "results": store.results_for_runs(ids)}
    blob = json.dumps(manifest, sort_keys=True, default=str)
    if "NaN" in blob or "Infinity" in blob:  # results may hold undefined metrics: store them as null
        manifest["results"] = json.loads(json.dumps(manifest["results"], default=str),
                                         parse_constant=lambda c: None)
        blob = json.dumps(manifest, sort_keys=True, default=str)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, SCHEMA.with_metadata({MANIFEST_KEY: blob.encode()}),
                              compression="zstd") as w:
            for rec, tbl in zip(records, tables):
                w.write_table(tbl, row_group_size=max(1, rec["n_tokens"]))  # one row group per layer
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ---- validation of untrusted files -------------------------------------------------------------------

@dataclass(frozen=True)
class Checked:
    """A bundle whose footer passed every check (no data page read yet)."""
    path: Path
    records: tuple[dict, ...]
    results: tuple[dict, ...]
    num_rows: int
    row_groups: int


def _fail(path: Path, why: str) -> MoyuError:
    return MoyuError(f"{path.name}: {why}")


def _check_record(path: Path, r: object) -> dict:
    if not isinstance(r, dict):
        raise _fail(path, "manifest run entry is not an object")
    out = {}
    for k, typ in _RECORD_FIELDS.items():
        v = r.get(k)
        if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise _fail(path, f"run field '{k}' must be an integer")
        if typ is not int and not isinstance(v, typ):
            raise _fail(path, f"run field '{k}' must be {typ.__name__}")
        out[k] = v
    if not RUN_ID.match(out["run_id"]):
        raise _fail(path, "a run id is not 24 hexadecimal characters")
    for k, hi in _LIMITS.items():
        if not 1 <= out[k] <= hi:
            raise _fail(path, f"run {out['run_id']}: {k}={out[k]} outside 1..{hi}")
    if out["dtype"] not in DTYPES:
        raise _fail(path, f"run {out['run_id']}: unknown dtype")
    if out["mode"] not in MODES:
        raise _fail(path, f"run {out['run_id']}: unknown input mode")
    for k in ("model", "fingerprint", "method"):
        if not NAME.match(out[k]):
            raise _fail(path, f"run {out['run_id']}: field '{k}' has unexpected characters")
    if len(out["text"]) > MAX_TEXT or len(out["prefix"]) > MAX_TEXT:
        raise _fail(path, f"run {out['run_id']}: text too long")
    if len(json.dumps(out["params"])) > 65536:
        raise _fail(path, f"run {out['run_id']}: method parameters too large")
    created = r.get("created_at")
    out["created_at"] = created[:40] if isinstance(created, str) else ""
    return out


def _check_result(path: Path, r: object) -> dict:
    if not (isinstance(r, dict) and isinstance(r.get("kind"), str) and isinstance(r.get("params"), dict)
            and isinstance(r.get("result"), dict) and len(r["kind"]) <= 64
            and all(r.get(k) is None or isinstance(r.get(k), str) for k in ("model", "method"))):
        raise _fail(path, "a results entry of the manifest is malformed")
    return {k: r.get(k) for k in ("kind", "model", "method", "params", "result")}


def check_file(path: str | Path) -> Checked:
    """Every check that needs only the file's size, magic bytes and footer."""
    path = Path(path)
    if not path.is_file():
        raise MoyuError(f"no such file: {path}")
    size = path.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise _fail(path, f"{size / 2**20:.0f} MB is over the {MAX_BUNDLE_MB} MB limit for bundles")
    with path.open("rb") as f:
        head = f.read(4)
        if size < 12 or head != b"PAR1":
            raise _fail(path, "not a Parquet file (no PAR1 magic bytes); a moyu bundle is a .parquet "
                              "file made by `python -m moyu_core export`")
        f.seek(size - 8)
        tail = f.read(8)
    footer_len = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or footer_len > min(MAX_FOOTER_BYTES, size - 12):
        raise _fail(path, "not a complete Parquet file (bad footer)")
    try:
        meta = pq.read_metadata(path)
    except Exception as e:  # noqa: BLE001 - any parser complaint is a broken file
        raise _fail(path, f"unreadable Parquet footer ({type(e).__name__})") from None
    if meta.num_rows > MAX_ROWS or meta.num_rows < 0:
        raise _fail(path, f"claims {meta.num_rows:,} rows; a bundle holds at most {MAX_ROWS:,}")
    uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if uncompressed > MAX_UNCOMPRESSED or any(meta.row_group(i).total_byte_size > MAX_ROW_GROUP_BYTES
                                              for i in range(meta.num_row_groups)):
        raise _fail(path, "expands to too much data")
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if any(rg.column(j).total_uncompressed_size > MAX_ROW_GROUP_BYTES for j in range(rg.num_columns)):
            raise _fail(path, "expands to too much data")
    kv = meta.metadata or {}
    if set(kv) - {MANIFEST_KEY, b"ARROW:schema"}:
        raise _fail(path, "unexpected metadata keys")
    if MANIFEST_KEY not in kv:
        raise _fail(path, "a Parquet file, but not a moyu bundle (no manifest)")
    try:
        schema = meta.schema.to_arrow_schema()
    except Exception:  # noqa: BLE001
        raise _fail(path, "unreadable schema") from None
    if not schema.remove_metadata().equals(SCHEMA):
        raise _fail(path, "wrong schema: expected columns " + ", ".join(f"{f.name}:{f.type}" for f in SCHEMA))
    try:
        manifest = json.loads(kv[MANIFEST_KEY].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _fail(path, "the manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(path, "not a moyu bundle (manifest format)")
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("schema_version") != RUN_FORMAT:
        raise _fail(path, f"bundle format {manifest.get('format_version')}/schema {manifest.get('schema_version')}; "
                          f"this moyu reads {FORMAT_VERSION}/{RUN_FORMAT}")
    runs, results = manifest.get("runs"), manifest.get("results", [])
    if not isinstance(runs, list) or not 1 <= len(runs) <= MAX_RUNS or not isinstance(results, list) \
            or len(results) > 100_000:
        raise _fail(path, "the manifest's run list is missing or too long")
    records = tuple(_check_record(path, r) for r in runs)
    if len({r["run_id"] for r in records}) != len(records):
        raise _fail(path, "a run id appears twice")
    expected = sum(r["n_layers"] * r["n_tokens"] for r in records)
    if meta.num_rows != expected:
        raise _fail(path, f"holds {meta.num_rows:,} rows but its runs need {expected:,}")
    declared = sum(r["n_layers"] * r["n_tokens"] * r["d_ff"] * np.dtype(DTYPES[r["dtype"]]).itemsize
                   for r in records)
    if declared > MAX_UNCOMPRESSED:
        raise _fail(path, "its runs are too large")
    return Checked(path, records, tuple(_check_result(path, r) for r in results), meta.num_rows,
                   meta.num_row_groups)


def run_id_matches(rec: dict, token_ids: list[int]) -> bool | None:
    """Does the run id address this content? None where it cannot be recomputed without the
    model's tokenizer (a prefix, or parallel input that starts from BOS)."""
    if rec["prefix"] or rec["mode"] != "sequential":
        return None
    return rec["run_id"] == content_hash({"fingerprint": rec["fingerprint"], "ids": token_ids, "mode": rec["mode"],
                                          "prefix": [], "method": rec["method"], "params": rec["params"],
                                          "dtype": rec["dtype"], "schema": RUN_FORMAT})


class _Coverage:
    """Checks rows as they stream by: every (run, layer, pos) once, tokens consistent."""

    def __init__(self, path: Path, records: list[dict]):
        self.path = path
        self.recs = {r["run_id"]: r for r in records}
        self.seen = {rid: np.zeros(r["n_layers"] * r["n_tokens"], bool) for rid, r in self.recs.items()}
        self.token_ids = {rid: np.full(r["n_tokens"], -1, np.int64) for rid, r in self.recs.items()}

    def check(self, tbl: pa.Table) -> pa.Table:
        p = self.path
        if tbl.num_rows == 0:
            return tbl
        if any(tbl.column(c).null_count for c in tbl.column_names):
            raise _fail(p, "missing values")
        run_col = tbl.column("run_id").to_numpy(zero_copy_only=False)
        layer = tbl.column("layer").to_numpy().astype(np.int64)
        pos = tbl.column("pos").to_numpy().astype(np.int64)
        tok = tbl.column("token_id").to_numpy().astype(np.int64)
        scale = tbl.column("scale").to_numpy()
        norm = tbl.column("resid_norm").to_numpy()
        vec = tbl.column("vec").combine_chunks()
        vlen = np.diff(np.frombuffer(vec.buffers()[1], np.int32)[vec.offset:vec.offset + len(vec) + 1])
        attn = tbl.column("attn_received").combine_chunks()
        alen = np.diff(attn.offsets.to_numpy())
        avals = attn.flatten().to_numpy()
        if not (np.isfinite(scale).all() and np.isfinite(norm).all() and np.isfinite(avals).all()):
            raise _fail(p, "contains NaN or infinite values")
        if (scale < 0).any():
            raise _fail(p, "negative scale")
        if (tok < 0).any():
            raise _fail(p, "negative token id")
        pieces = tbl.column("piece").combine_chunks()
        if len(pieces) and pc.max(pc.utf8_length(pieces)).as_py() > MAX_PIECE:
            raise _fail(p, "a token piece is too long")
        for rid in np.unique(run_col):
            rec = self.recs.get(rid)
            if rec is None:
                raise _fail(p, "rows of a run that the manifest does not list")
            m = run_col == rid
            L, T, D = rec["n_layers"], rec["n_tokens"], rec["d_ff"]
            lm, pm = layer[m], pos[m]
            if lm.min() < 0 or lm.max() >= L or pm.min() < 0 or pm.max() >= T:
                raise _fail(p, f"run {rid}: layer or position out of range")
            if (vlen[m] != D * np.dtype(DTYPES[rec["dtype"]]).itemsize).any():
                raise _fail(p, f"run {rid}: activation vectors of the wrong length")
            if (alen[m] != rec["n_heads"]).any():
                raise _fail(p, f"run {rid}: attention summaries of the wrong length")
            if rec["dtype"] == "float16" or rec["dtype"] == "float32":
                sel = np.flatnonzero(m)
                sub = vec.take(pa.array(sel))
                off = np.frombuffer(sub.buffers()[1], np.int32)[sub.offset:sub.offset + len(sub) + 1]
                raw = np.frombuffer(sub.buffers()[2], np.uint8)[off[0]:off[-1]].view(DTYPES[rec["dtype"]])
                if not np.isfinite(raw).all():
                    raise _fail(p, f"run {rid}: activations contain NaN or infinite values")
            flat = lm * T + pm
            seen = self.seen[rid]
            if seen[flat].any() or len(np.unique(flat)) != len(flat):
                raise _fail(p, f"run {rid}: a (layer, token) row appears twice")
            seen[flat] = True
            known = self.token_ids[rid]
            prev = known[pm]
            if ((prev >= 0) & (prev != tok[m])).any():
                raise _fail(p, f"run {rid}: token ids disagree between layers")
            known[pm] = tok[m]
        return tbl

    def finish(self) -> None:
        for rid, seen in self.seen.items():
            if not seen.all():
                raise _fail(self.path, f"run {rid} is incomplete")
        for rid, rec in self.recs.items():
            if run_id_matches(rec, self.token_ids[rid].tolist()) is False:
                raise _fail(self.path, f"run {rid}: the run id does not match its content")


def _row_groups(checked: Checked, cov: _Coverage, keep: set[str]) -> Iterator[pa.Table]:
    pf = pq.ParquetFile(checked.path)
    for i in range(checked.row_groups):
        try:
            tbl = pf.read_row_group(i)
        except Exception as e:  # noqa: BLE001
            raise _fail(checked.path, f"unreadable data ({type(e).__name__})") from None
        if not tbl.schema.remove_metadata().equals(SCHEMA):
            raise _fail(checked.path, "wrong schema in a row group")
        tbl = cov.check(tbl)
        if keep != set(cov.recs):
            tbl = tbl.filter(pc.is_in(tbl.column("run_id"), pa.array(sorted(keep), pa.string())))
        if tbl.num_rows:
            yield tbl
    cov.finish()


def _same_run(store: Store, rec: dict) -> bool:
    local = store.run(rec["run_id"])
    return all(getattr(local, k) == rec[k] for k in ("fingerprint", "mode", "method", "params", "n_tokens",
                                                      "n_layers", "d_ff", "n_heads", "dtype"))


def import_bundle(store: Store, path: str | Path) -> list[str]:
    """Import a bundle into `store` in one transaction; returns its run ids. Runs already
    present with the same description are kept as they are; a different run under a known id,
    or any problem with the file, raises MoyuError and leaves the database unchanged."""
    store = getattr(store, "local", store)  # imports always go to the local database
    checked = check_file(path)
    keep = set()
    for rec in checked.records:
        if store.has_run(rec["run_id"]):
            if not _same_run(store, rec):
                raise _fail(checked.path, f"run {rec['run_id']} is already in this database with other content")
        else:
            keep.add(rec["run_id"])
    cov = _Coverage(checked.path, list(checked.records))
    new = [r for r in checked.records if r["run_id"] in keep]
    store.import_runs(new, _row_groups(checked, cov, keep), list(checked.results))
    return [r["run_id"] for r in checked.records]


def import_bytes(store: Store, data: bytes, name: str = "upload.parquet", tmp_dir: str | Path | None = None) -> list[str]:
    """Import an uploaded bundle (bytes): the size limit is checked before anything is written."""
    import tempfile

    if len(data) > MAX_BUNDLE_BYTES:
        raise MoyuError(f"{name}: {len(data) / 2**20:.0f} MB is over the {MAX_BUNDLE_MB} MB limit for bundles")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).name)[:100] or "upload.parquet"
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        p = Path(d) / safe
        p.write_bytes(data)
        return import_bundle(store, p)


# ---- team store: a folder of bundles, read-only, never copied ------------------------------------------

def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class TeamStore:
    """Runs in a folder of exported bundles (local or network path), read in place with pyarrow.

    The same read API as `Store` (has_run, run, activations, tokens, token_stats, list_runs);
    nothing is ever written to the folder or copied from it. Files that fail the footer checks
    are skipped and listed in `.skipped` (name, reason); data are checked when read."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MoyuError(f"team folder {self.folder} does not exist")
        self._lock = threading.Lock()
        self._index: dict[str, tuple[Path, dict]] = {}
        self._seen: dict[Path, tuple[float, int]] = {}
        self._files: dict[Path, Checked] = {}
        self.skipped: dict[str, str] = {}
        self.path = self.folder

    def refresh(self) -> None:
        """Re-read the footers of new or changed files (cheap: no data pages)."""
        with self._lock:
            files = sorted(self.folder.glob("*.parquet"))[:2000]
            current = {}
            for f in files:
                try:
                    st_ = f.stat()
                except OSError:
                    continue
                current[f] = (st_.st_mtime, st_.st_size)
                if self._seen.get(f) == current[f]:
                    continue
                try:
                    self._files[f] = check_file(f)
                    self.skipped.pop(f.name, None)
                except MoyuError as e:
                    self._files.pop(f, None)
                    self.skipped[f.name] = str(e)
            for f in list(self._files):
                if f not in current:
                    del self._files[f]
            self._seen = current
            self._index = {}
            for f, c in self._files.items():
                for rec in c.records:
                    self._index.setdefault(rec["run_id"], (f, rec))

    def _get(self, run_id: str) -> tuple[Path, dict]:
        if run_id not in self._index:
            self.refresh()
        if run_id not in self._index:
            raise MoyuError(f"no run '{run_id}' in the team folder {self.folder}")
        return self._index[run_id]

    def has_run(self, run_id: str) -> bool:
        try:
            self._get(run_id)
            return True
        except MoyuError:
            return False

    def run(self, run_id: str) -> RunRecord:
        return RunRecord(**{k: v for k, v in self._get(run_id)[1].items() if k in _RECORD_FIELDS})

    def list_runs(self, model: str | None = None, method: str | None = None, text: str | None = None,
                  limit: int = 1000) -> list[dict]:
        self.refresh()
        out = []
        for rid, (f, r) in self._index.items():
            if (model and r["model"] != model) or (method and r["method"] != method) or \
                    (text and text.lower() not in r["text"].lower()):
                continue
            out.append({"run_id": rid, "model": r["model"], "mode": r["mode"], "method": r["method"],
                        "params": json.dumps(r["params"], sort_keys=True), "n_tokens": r["n_tokens"],
                        "n_layers": r["n_layers"], "d_ff": r["d_ff"], "dtype": r["dtype"],
                        "created_at": _when(r["created_at"]),
                        "text": r["text"][:200], "source": f"team:{f.name}"})
        out.sort(key=lambda d: d["created_at"] or datetime.min, reverse=True)
        return out[:limit]

    def _rows(self, run_id: str, layer: int | None = None) -> pa.Table:
        f, rec = self._get(run_id)
        filt = [("run_id", "=", run_id)] + ([("layer", "=", layer)] if layer is not None else [])
        try:
            tbl = pq.read_table(f, schema=SCHEMA, filters=filt)
        except Exception as e:  # noqa: BLE001
            raise _fail(f, f"unreadable data ({type(e).__name__})") from None
        cov = _Coverage(f, [rec])
        cov.check(tbl)
        want = rec["n_tokens"] * (1 if layer is not None else rec["n_layers"])
        if tbl.num_rows != want:
            raise _fail(f, f"run {run_id} is incomplete")
        idx = pc.sort_indices(tbl, [("layer", "ascending"), ("pos", "ascending")])
        return tbl.take(idx)

    def activations(self, run_id: str, layer: int) -> np.ndarray:
        rec = self.run(run_id)
        if not 0 <= layer < rec.n_layers:
            raise MoyuError(f"layer {layer} out of range 0..{rec.n_layers - 1}")
        tbl = self._rows(run_id, layer)
        vec = tbl.column("vec").combine_chunks()
        off = np.frombuffer(vec.buffers()[1], np.int32)[vec.offset:vec.offset + len(vec) + 1]
        raw = np.frombuffer(vec.buffers()[2], np.uint8)[off[0]:off[-1]]
        out = raw.view(DTYPES[rec.dtype]).reshape(len(vec), rec.d_ff).astype(np.float32)
        if rec.dtype == "int8":
            out *= tbl.column("scale").to_numpy()[:, None]
        return out

    def tokens(self, run_id: str) -> list[tuple[int, str]]:
        tbl = self._rows(run_id, 0)
        return list(zip(tbl.column("token_id").to_pylist(), tbl.column("piece").to_pylist()))

    def token_stats(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        rec = self.run(run_id)
        tbl = self._rows(run_id)
        L, T = rec.n_layers, rec.n_tokens
        norm = tbl.column("resid_norm").to_numpy().reshape(L, T)
        attn = tbl.column("attn_received").combine_chunks().flatten().to_numpy().reshape(L, T, -1)
        return attn.transpose(0, 2, 1).copy(), norm


class LayeredStore:
    """A local `Store` with a read-only `TeamStore` behind it: reads try local first, then the
    team folder; every write (captures, results, imports, deletes) goes to the local store."""

    def __init__(self, local: Store, team: TeamStore):
        self.local, self.team = local, team

    def __getattr__(self, name):  # writes and everything else: the local store
        return getattr(self.local, name)

    def _src(self, run_id: str):
        return self.local if self.local.has_run(run_id) else self.team

    def has_run(self, run_id: str) -> bool:
        return self.local.has_run(run_id) or self.team.has_run(run_id)

    def is_team_run(self, run_id: str) -> bool:
        return not self.local.has_run(run_id) and self.team.has_run(run_id)

    def run(self, run_id: str) -> RunRecord:
        return self._src(run_id).run(run_id)

    def activations(self, run_id: str, layer: int) -> np.ndarray:
        return self._src(run_id).activations(run_id, layer)

    def tokens(self, run_id: str) -> list[tuple[int, str]]:
        return self._src(run_id).tokens(run_id)

    def token_stats(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self._src(run_id).token_stats(run_id)

    def list_runs(self, model: str | None = None, method: str | None = None, text: str | None = None,
                  limit: int = 1000) -> list[dict]:
        local = [dict(r, source="local") for r in self.local.list_runs(model, method, text, limit)]
        ids = {r["run_id"] for r in local}
        team = [r for r in self.team.list_runs(model, method, text, limit) if r["run_id"] not in ids]
        return (local + team)[:limit]


def team_dir() -> Path | None:
    """The team folder from `MOYU_TEAM_DIR`, if set."""
    d = os.environ.get("MOYU_TEAM_DIR", "").strip()
    return Path(d) if d else None


def open_store(path: str | Path | None = None, team: str | Path | None = None) -> Store | LayeredStore:
    """The local store, layered over the team folder when one is given or `MOYU_TEAM_DIR` is set."""
    local = Store(path)
    folder = team if team is not None else team_dir()
    return LayeredStore(local, TeamStore(folder)) if folder else local
