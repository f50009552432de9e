"""Import a bundle into the local database: checked first (checks.py), written in one
transaction that rolls back on the first problem."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from ..errors import MoyuError
from ..store import Store
from .checks import MAX_BUNDLE_BYTES, MAX_BUNDLE_MB, check_file, checked_row_groups, fail
from .team import LayeredStore, local_store

_SAME = ("fingerprint", "mode", "method", "params", "n_tokens", "n_layers", "d_ff", "n_heads", "dtype")


def import_bundle(store: Store | LayeredStore, path: str | Path) -> list[str]:
    """Import a bundle into the local database in one transaction; returns its run ids. Runs
    already present with the same description are kept as they are; a different run under a
    known id, or any problem with the file, raises MoyuError and leaves the database unchanged."""
    store = local_store(store)
    checked = check_file(path)
    keep = set()
    for rec in checked.records:
        if not store.has_run(rec["run_id"]):
            keep.add(rec["run_id"])
        elif any(getattr(store.run(rec["run_id"]), k) != rec[k] for k in _SAME):
            raise fail(checked.path, f"run {rec['run_id']} is already in this database with other content")
    new = [r for r in checked.records if r["run_id"] in keep]
    store.import_runs(new, checked_row_groups(checked, keep), list(checked.results))
    return [r["run_id"] for r in checked.records]


def import_bytes(store: Store | LayeredStore, data: bytes, name: str = "upload.parquet",
                 tmp_dir: str | Path | None = None) -> list[str]:
    """Import an uploaded bundle (bytes): the size limit is checked before anything is written."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise MoyuError(f"{name}: {len(data) / 2**20:.0f} MB is over the {MAX_BUNDLE_MB} MB limit for bundles")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).name)[:100] or "upload.parquet"
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        p = Path(d) / safe
        p.write_bytes(data)
        return import_bundle(store, p)
