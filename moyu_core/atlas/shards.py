"""An atlas on disk: Parquet shards and one manifest (JSON), both written atomically.

    DIR/manifest.json               model fingerprint, settings, the chunk plan, chunks complete
    DIR/vocab.parquet               vocabulary effect (weights only, written first)
    DIR/chunk-000003.stats.parquet  one chunk's partial aggregates: stats, kept, top, tokens
    DIR/stats.parquet ...           after the last chunk: every chunk merged (`compact`)
    DIR/.lock                       held (flock) by the one build writing the folder

A chunk counts as done only once the manifest names it, and the manifest is rewritten (temporary
file, fsync, rename) only after the chunk's four shards are on disk (same way), so a build killed
at any moment resumes with every chunk either done whole or redone whole: none lost, none twice.
Every shard carries the model fingerprint in its Parquet metadata, and the manifest its size and
SHA-256. Merging is exact: counts and sums add (float64, in chunk order), maxima take the max,
top-K candidates are ranked by (value desc, doc, pos) and cut at K. The merged tables have the
chunk tables' schema, so a query reads either kind the same way.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import MoyuError

FORMAT, VERSION = "moyu-atlas", 2   # 2: the kept table has n (the methods' sampled tokens)
MANIFEST = "manifest.json"
CHUNK_TABLES = ("stats", "kept", "top", "tokens")
FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.parquet$")   # what a manifest may name
# the histogram's bins of z, fixed so that any chunks' counts add up: edges -10^3 ... -10^-3 and
# +10^-3 ... +10^3, four per decade; bin b holds HIST_EDGES[b-1] <= z < HIST_EDGES[b] (bin 0 below
# the first edge, the last bin at or above the last), so bin 25 is -1e-3 <= z < 1e-3
_MAGS = 10.0 ** (np.arange(-12, 13) / 4)
HIST_EDGES = np.concatenate([-_MAGS[::-1], _MAGS])
N_BINS = len(HIST_EDGES) + 1
# rows per row group: small where a query picks one (layer, neuron), so DuckDB skips the rest
ROW_GROUP = {"stats": 2048, "kept": 16384, "top": 16384, "tokens": 65536, "vocab": 16384}


def chunk_file(index: int, table: str) -> str:
    return f"chunk-{index:06d}.{table}.parquet"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(folder: Path, name: str, table: pa.Table, fingerprint: str, kind: str,
                chunk: int | None = None) -> dict:
    """Write `table` to folder/name atomically, with the fingerprint in its metadata; returns the
    manifest's record of it {file, bytes, sha256}."""
    meta = {**(table.schema.metadata or {}), b"moyu_format": FORMAT.encode(), b"moyu_fingerprint": fingerprint.encode(),
            b"moyu_table": kind.encode(), b"moyu_chunk": str(chunk).encode()}
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    pq.write_table(table.replace_schema_metadata(meta), tmp, row_group_size=ROW_GROUP[kind], compression="zstd")
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    record = {"file": name, "bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}
    os.replace(tmp, folder / name)
    return record


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an atlas folder, None when there is none; a manifest that is not an
    atlas' (or is damaged) is an error."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MoyuError(f"{path} is damaged ({type(e).__name__}); delete {folder} to start over") from None
    check_manifest(manifest, str(path))
    return manifest


def check_manifest(manifest, where: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MoyuError(f"{where} is not a moyu atlas manifest")
    if manifest.get("version") != VERSION:
        raise MoyuError(f"{where} is atlas version {manifest.get('version')}; this moyu reads version {VERSION}: "
                        "build the atlas again into a new folder")
    for rec in shard_records(manifest):
        if not FILE_NAME.match(str(rec.get("file", ""))):
            raise MoyuError(f"{where} names a shard {rec.get('file')!r} that is not a plain Parquet file name")


def shard_records(manifest: dict) -> list[dict]:
    """Every shard the manifest names (the merged tables, else the done chunks'), and vocab."""
    out = [manifest["vocab"]] if manifest.get("vocab") else []
    if manifest.get("final"):
        return out + list(manifest["final"].values())
    for rec in manifest.get("chunks", {}).values():
        out += list((rec.get("files") or {}).values())
    return out


def write_manifest(folder: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = Path(folder) / f".{MANIFEST}.{os.getpid()}.tmp"
    with tmp.open("w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(folder) / MANIFEST)
    _fsync_dir(Path(folder))


def check_shard(folder: Path, record: dict, fingerprint: str) -> None:
    """A shard the manifest names is there, whole (size and SHA-256) and of this model."""
    path = Path(folder) / record["file"]
    if not path.is_file():
        raise MoyuError(f"atlas shard {path} is missing; delete {folder} to start over")
    if path.stat().st_size != record["bytes"] or _sha256(path) != record["sha256"]:
        raise MoyuError(f"atlas shard {path} is corrupt (its size or checksum differs from the manifest); "
                        f"delete {folder} to start over")
    got = _fingerprint(path)
    if got != fingerprint:
        raise MoyuError(f"atlas shard {path} is from another model (fingerprint {str(got)[:12]}, the atlas "
                        f"is {fingerprint[:12]}); delete {folder} to start over")


def _fingerprint(path: Path) -> str | None:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise MoyuError(f"atlas shard {path} is corrupt ({type(e).__name__})") from None
    value = meta.get(b"moyu_fingerprint")
    return value.decode() if value is not None else None


def _read(folder: Path, record: dict, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(Path(folder) / record["file"], columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise MoyuError(f"atlas shard {record['file']} is corrupt ({type(e).__name__}); "
                        f"delete {folder} to start over") from None


def compact(folder: Path, manifest: dict) -> dict[str, dict]:
    """Merge every done chunk's shards into one shard per table (same schemas); returns their
    manifest records. Chunks are read in index order, so the float sums are reproducible."""
    L, D = manifest["n_layers"], manifest["d_ff"]
    methods = manifest["methods"]
    K = manifest["settings"]["top_k"]
    fp = manifest["fingerprint"]
    rows = L * D
    layer = np.repeat(np.arange(L, dtype=np.int16), D)
    neuron = np.tile(np.arange(D, dtype=np.int32), L)
    sums = {c: np.zeros(rows, np.int64) for c in ("n", "top10", "stay", "prev")}
    sum_abs = np.zeros(rows, np.float64)
    max_abs = np.zeros(rows, np.float32)
    hist = np.zeros((rows, N_BINS), np.int64)
    kept = np.zeros(rows * len(methods), np.int64)
    kept_n = np.zeros(rows * len(methods), np.int64)
    top = {c: np.zeros((rows, 0), t) for c, t in (("value", np.float32), ("doc", np.int32),
                                                    ("pos", np.int32), ("token_id", np.int32))}
    tokens = []
    method_col = pa.array(methods * rows, pa.string())
    for index in sorted(manifest["chunks"], key=int):
        files = manifest["chunks"][index]["files"]
        st = _read(folder, files["stats"], ["layer", "neuron", "n", "top10", "stay", "prev", "sum_abs",
                                            "max_abs", "hist"])
        if not (np.array_equal(st["layer"].to_numpy(), layer) and np.array_equal(st["neuron"].to_numpy(), neuron)):
            raise MoyuError(f"atlas shard {files['stats']['file']} does not hold this atlas' neurons")
        for c in sums:
            sums[c] += st[c].to_numpy()
        sum_abs += st["sum_abs"].to_numpy()
        np.maximum(max_abs, st["max_abs"].to_numpy(), out=max_abs)
        hist += st["hist"].combine_chunks().flatten().to_numpy().reshape(rows, N_BINS)
        kp = _read(folder, files["kept"], ["method", "kept", "n"])
        if len(kp) != len(method_col) or not pc.all(pc.equal(kp["method"].cast(pa.string()), method_col)).as_py():
            raise MoyuError(f"atlas shard {files['kept']['file']} does not hold this atlas' methods")
        kept += kp["kept"].to_numpy()
        kept_n += kp["n"].to_numpy()
        tp = _read(folder, files["top"], list(top))
        for c in top:
            top[c] = np.concatenate([top[c], tp[c].to_numpy().reshape(rows, -1)], axis=1)
        order = np.lexsort((top["pos"], top["doc"], -top["value"]), axis=1)[:, :K]
        top = {c: np.take_along_axis(a, order, axis=1) for c, a in top.items()}
        tokens.append(_read(folder, files["tokens"], ["doc", "pos", "token_id", "piece"]))
    k = top["value"].shape[1]
    tables = {
        "stats": pa.table({"layer": layer, "neuron": neuron, **sums, "sum_abs": sum_abs, "max_abs": max_abs,
                           "hist": pa.ListArray.from_arrays(np.arange(0, rows * N_BINS + 1, N_BINS, dtype=np.int32),
                                                            hist.reshape(-1))}),
        "kept": pa.table({"layer": np.repeat(layer, len(methods)), "neuron": np.repeat(neuron, len(methods)),
                          "method": method_col.dictionary_encode(), "kept": kept, "n": kept_n}),
        "top": pa.table({"layer": np.repeat(layer, k), "neuron": np.repeat(neuron, k),
                         **{c: a.reshape(-1) for c, a in top.items()}}),
        "tokens": pa.concat_tables(tokens),
    }
    return {name: write_shard(folder, f"{name}.parquet", t, fp, name) for name, t in tables.items()}


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Hold the folder's build lock (released when the process dies, so a killed build never
    blocks its resume) and clear temporary files a killed build left."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MoyuError(f"another build is writing {folder}") from None
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def remove_chunk_files(folder: Path, manifest: dict) -> None:
    """After the merge is recorded: the chunk shards are no longer named by the manifest."""
    for rec in manifest.get("chunks", {}).values():
        for f in (rec.pop("files", None) or {}).values():
            try:
                (Path(folder) / f["file"]).unlink()
            except FileNotFoundError:
                pass
