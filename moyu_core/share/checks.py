"""Checks of untrusted bundle files: every bundle comes from someone else and is hostile until
checked.

In order: size limit, Parquet magic bytes at both ends, footer size, then the footer alone (row
count, uncompressed size, schema, manifest) *before* any data page is read (`check_file`); then
each row group as it streams by (ids, ranges, vector lengths, finite numbers, every (run, layer,
token) exactly once, run ids that match their content: `Coverage`). Files are read with pyarrow,
never with DuckDB or pickle; values reach the store only as validated Arrow tables.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import blobs
from ..blobs import DTYPES
from ..errors import MoyuError
from ..store import MODES, RUN_FORMAT, run_id_for
from .format import FORMAT, FORMAT_VERSION, MANIFEST_KEY, MAX_RUNS, RECORD_FIELDS, SCHEMA

MAX_BUNDLE_MB = 100                  # same as server.maxUploadSize in .streamlit/config.toml
MAX_BUNDLE_BYTES = MAX_BUNDLE_MB * 1024 * 1024
MAX_FOOTER_BYTES = 32 * 1024 * 1024  # the manifest holds the prompts (2048 tokens of text each)
MAX_UNCOMPRESSED = 2 * 1024 ** 3     # decompression-bomb guard, from the footer
MAX_ROW_GROUP_BYTES = 256 * 1024 ** 2
MAX_ROWS = 8_000_000
MAX_TEXT = 1_000_000
MAX_PIECE = 1000
RUN_ID = re.compile(r"^[0-9a-f]{24}$")
NAME = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,200}$")
_LIMITS = {"n_tokens": 32768, "n_layers": 512, "d_ff": 65536, "n_heads": 1024}


@dataclass(frozen=True)
class Checked:
    """A bundle whose footer passed every check (no data page read yet)."""
    path: Path
    records: tuple[dict, ...]
    results: tuple[dict, ...]
    num_rows: int
    row_groups: int


def fail(path: Path, why: str) -> MoyuError:
    """The one-line error for a refused file: its name, then why."""
    return MoyuError(f"{path.name}: {why}")


def _check_record(path: Path, r: object) -> dict:
    if not isinstance(r, dict):
        raise fail(path, "manifest run entry is not an object")
    out = {}
    for k, typ in RECORD_FIELDS.items():
        v = r.get(k)
        if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise fail(path, f"run field '{k}' must be an integer")
        if typ is not int and not isinstance(v, typ):
            raise fail(path, f"run field '{k}' must be {typ.__name__}")
        out[k] = v
    if not RUN_ID.match(out["run_id"]):
        raise fail(path, "a run id is not 24 hexadecimal characters")
    for k, hi in _LIMITS.items():
        if not 1 <= out[k] <= hi:
            raise fail(path, f"run {out['run_id']}: {k}={out[k]} outside 1..{hi}")
    if out["dtype"] not in DTYPES:
        raise fail(path, f"run {out['run_id']}: unknown dtype")
    if out["mode"] not in MODES:
        raise fail(path, f"run {out['run_id']}: unknown input mode")
    for k in ("model", "fingerprint", "method"):
        if not NAME.match(out[k]):
            raise fail(path, f"run {out['run_id']}: field '{k}' has unexpected characters")
    if len(out["text"]) > MAX_TEXT or len(out["prefix"]) > MAX_TEXT:
        raise fail(path, f"run {out['run_id']}: text too long")
    if len(json.dumps(out["params"])) > 65536:
        raise fail(path, f"run {out['run_id']}: method parameters too large")
    created = r.get("created_at")
    out["created_at"] = created[:40] if isinstance(created, str) else ""
    return out


def _check_result(path: Path, r: object) -> dict:
    if not (isinstance(r, dict) and isinstance(r.get("kind"), str) and isinstance(r.get("params"), dict)
            and isinstance(r.get("result"), dict) and len(r["kind"]) <= 64
            and all(r.get(k) is None or isinstance(r.get(k), str) for k in ("model", "method"))):
        raise fail(path, "a results entry of the manifest is malformed")
    return {k: r.get(k) for k in ("kind", "model", "method", "params", "result")}


def check_file(path: str | Path) -> Checked:
    """Every check that needs only the file's size, magic bytes and footer."""
    path = Path(path)
    if not path.is_file():
        raise MoyuError(f"no such file: {path}")
    size = path.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise fail(path, f"{size / 2**20:.0f} MB is over the {MAX_BUNDLE_MB} MB limit for bundles")
    with path.open("rb") as f:
        head = f.read(4)
        if size < 12 or head != b"PAR1":
            raise fail(path, "not a Parquet file (no PAR1 magic bytes); a moyu bundle is a .parquet "
                             "file made by `python -m moyu_core export`")
        f.seek(size - 8)
        tail = f.read(8)
    footer_len = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or footer_len > min(MAX_FOOTER_BYTES, size - 12):
        raise fail(path, "not a complete Parquet file (bad footer)")
    try:
        meta = pq.read_metadata(path)
    except Exception as e:  # noqa: BLE001 - any parser complaint is a broken file
        raise fail(path, f"unreadable Parquet footer ({type(e).__name__})") from None
    if meta.num_rows > MAX_ROWS or meta.num_rows < 0:
        raise fail(path, f"claims {meta.num_rows:,} rows; a bundle holds at most {MAX_ROWS:,}")
    uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if uncompressed > MAX_UNCOMPRESSED or any(meta.row_group(i).total_byte_size > MAX_ROW_GROUP_BYTES
                                              for i in range(meta.num_row_groups)):
        raise fail(path, "expands to too much data")
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if any(rg.column(j).total_uncompressed_size > MAX_ROW_GROUP_BYTES for j in range(rg.num_columns)):
            raise fail(path, "expands to too much data")
    kv = meta.metadata or {}
    if set(kv) - {MANIFEST_KEY, b"ARROW:schema"}:
        raise fail(path, "unexpected metadata keys")
    if MANIFEST_KEY not in kv:
        raise fail(path, "a Parquet file, but not a moyu bundle (no manifest)")
    try:
        schema = meta.schema.to_arrow_schema()
    except Exception:  # noqa: BLE001
        raise fail(path, "unreadable schema") from None
    if not schema.remove_metadata().equals(SCHEMA):
        raise fail(path, "wrong schema: expected columns " + ", ".join(f"{f.name}:{f.type}" for f in SCHEMA))
    try:
        manifest = json.loads(kv[MANIFEST_KEY].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise fail(path, "the manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise fail(path, "not a moyu bundle (manifest format)")
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("schema_version") != RUN_FORMAT:
        raise fail(path, f"bundle format {manifest.get('format_version')}/schema {manifest.get('schema_version')}; "
                         f"this moyu reads {FORMAT_VERSION}/{RUN_FORMAT}")
    runs, results = manifest.get("runs"), manifest.get("results", [])
    if not isinstance(runs, list) or not 1 <= len(runs) <= MAX_RUNS or not isinstance(results, list) \
            or len(results) > 100_000:
        raise fail(path, "the manifest's run list is missing or too long")
    records = tuple(_check_record(path, r) for r in runs)
    if len({r["run_id"] for r in records}) != len(records):
        raise fail(path, "a run id appears twice")
    expected = sum(r["n_layers"] * r["n_tokens"] for r in records)
    if meta.num_rows != expected:
        raise fail(path, f"holds {meta.num_rows:,} rows but its runs need {expected:,}")
    declared = sum(r["n_layers"] * r["n_tokens"] * r["d_ff"] * np.dtype(DTYPES[r["dtype"]]).itemsize
                   for r in records)
    if declared > MAX_UNCOMPRESSED:
        raise fail(path, "its runs are too large")
    return Checked(path, records, tuple(_check_result(path, r) for r in results), meta.num_rows,
                   meta.num_row_groups)


def run_id_matches(rec: dict, token_ids: list[int]) -> bool | None:
    """Does the run id address this content? None where it cannot be recomputed without the
    model's tokenizer (a prefix, or parallel input that starts from BOS)."""
    if rec["prefix"] or rec["mode"] != "sequential":
        return None
    return rec["run_id"] == run_id_for(rec["fingerprint"], token_ids, rec["mode"], [], rec["method"],
                                       rec["params"], rec["dtype"])


class Coverage:
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
            raise fail(p, "missing values")
        run_col = tbl.column("run_id").to_numpy(zero_copy_only=False)
        layer = tbl.column("layer").to_numpy().astype(np.int64)
        pos = tbl.column("pos").to_numpy().astype(np.int64)
        tok = tbl.column("token_id").to_numpy().astype(np.int64)
        scale = tbl.column("scale").to_numpy()
        norm = tbl.column("resid_norm").to_numpy()
        vec = tbl.column("vec").combine_chunks()
        vlen = blobs.blob_lengths(vec)
        attn = tbl.column("attn_received").combine_chunks()
        alen = np.diff(attn.offsets.to_numpy())
        avals = attn.flatten().to_numpy()
        if not (np.isfinite(scale).all() and np.isfinite(norm).all() and np.isfinite(avals).all()):
            raise fail(p, "contains NaN or infinite values")
        if (scale < 0).any():
            raise fail(p, "negative scale")
        if (tok < 0).any():
            raise fail(p, "negative token id")
        pieces = tbl.column("piece").combine_chunks()
        if len(pieces) and pc.max(pc.utf8_length(pieces)).as_py() > MAX_PIECE:
            raise fail(p, "a token piece is too long")
        for rid in np.unique(run_col):
            rec = self.recs.get(rid)
            if rec is None:
                raise fail(p, "rows of a run that the manifest does not list")
            m = run_col == rid
            L, T, D = rec["n_layers"], rec["n_tokens"], rec["d_ff"]
            lm, pm = layer[m], pos[m]
            if lm.min() < 0 or lm.max() >= L or pm.min() < 0 or pm.max() >= T:
                raise fail(p, f"run {rid}: layer or position out of range")
            if (vlen[m] != D * np.dtype(DTYPES[rec["dtype"]]).itemsize).any():
                raise fail(p, f"run {rid}: activation vectors of the wrong length")
            if (alen[m] != rec["n_heads"]).any():
                raise fail(p, f"run {rid}: attention summaries of the wrong length")
            if rec["dtype"] in ("float16", "float32"):
                values = blobs.from_blobs(vec.take(pa.array(np.flatnonzero(m))), DTYPES[rec["dtype"]], D)
                if not np.isfinite(values).all():
                    raise fail(p, f"run {rid}: activations contain NaN or infinite values")
            flat = lm * T + pm
            seen = self.seen[rid]
            if seen[flat].any() or len(np.unique(flat)) != len(flat):
                raise fail(p, f"run {rid}: a (layer, token) row appears twice")
            seen[flat] = True
            known = self.token_ids[rid]
            prev = known[pm]
            if ((prev >= 0) & (prev != tok[m])).any():
                raise fail(p, f"run {rid}: token ids disagree between layers")
            known[pm] = tok[m]
        return tbl

    def finish(self) -> None:
        for rid, seen in self.seen.items():
            if not seen.all():
                raise fail(self.path, f"run {rid} is incomplete")
        for rid, rec in self.recs.items():
            if run_id_matches(rec, self.token_ids[rid].tolist()) is False:
                raise fail(self.path, f"run {rid}: the run id does not match its content")


def checked_row_groups(checked: Checked, keep: set[str]) -> Iterator[pa.Table]:
    """The rows of the runs in `keep`, one row group at a time, each checked before it is
    yielded; the last step checks that every run of the file was whole."""
    cov = Coverage(checked.path, list(checked.records))
    pf = pq.ParquetFile(checked.path)
    for i in range(checked.row_groups):
        try:
            tbl = pf.read_row_group(i)
        except Exception as e:  # noqa: BLE001
            raise fail(checked.path, f"unreadable data ({type(e).__name__})") from None
        if not tbl.schema.remove_metadata().equals(SCHEMA):
            raise fail(checked.path, "wrong schema in a row group")
        tbl = cov.check(tbl)
        if keep != set(cov.recs):
            tbl = tbl.filter(pc.is_in(tbl.column("run_id"), pa.array(sorted(keep), pa.string())))
        if tbl.num_rows:
            yield tbl
    cov.finish()
