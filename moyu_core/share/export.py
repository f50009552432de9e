"""Write runs (and the results rows that mention them) to one Parquet bundle (see format.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from ..errors import MoyuError
from ..store import RUN_FORMAT, Store
from .format import FORMAT, FORMAT_VERSION, MANIFEST_KEY, MAX_RUNS, RECORD_FIELDS, SCHEMA
from .team import LayeredStore, local_store


def export_runs(store: Store | LayeredStore, run_ids: list[str], out_path: str | Path) -> Path:
    """Write the runs of the local database to one bundle. The file appears whole or not at all
    (written beside, then renamed)."""
    ids = list(dict.fromkeys(run_ids))
    store = local_store(store)
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
        records.append({k: rec[k] for k in RECORD_FIELDS} | {"created_at": rec["created_at"]})
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
