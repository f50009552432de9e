"""A team folder: runs in a folder of exported bundles (local or network path), read in place.

`TeamStore` reads the folder, `LayeredStore` puts it behind the local database; both are
`store.RunReader`s like `Store`. Nothing is ever written to the folder or copied from it.
"""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import blobs
from ..errors import MoyuError
from ..store import RunRecord, Store
from .checks import Checked, Coverage, check_file, fail
from .format import RECORD_FIELDS, SCHEMA


def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class TeamStore:
    """The runs of a folder of bundles, read with pyarrow. Files that fail the footer checks are
    skipped and listed in `.skipped` (name -> reason); rows are checked when read."""

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
        return RunRecord(**{k: v for k, v in self._get(run_id)[1].items() if k in RECORD_FIELDS})

    def list_runs(self, model: str | None = None, method: str | None = None, text: str | None = None,
                  limit: int = 1000) -> list[dict]:
        self.refresh()
        out = []
        for rid, (f, r) in self._index.items():
            if (model and r["model"] != model) or (method and r["method"] != method) or \
                    (text and text.lower() not in r["text"].lower()):
                continue
            out.append({"run_id": rid, "model": r["model"], "mode": r["mode"], "prefix": r["prefix"],
                        "method": r["method"],
                        "params": json.dumps(r["params"], sort_keys=True), "n_tokens": r["n_tokens"],
                        "n_layers": r["n_layers"], "d_ff": r["d_ff"], "dtype": r["dtype"],
                        "created_at": _when(r["created_at"]),
                        "text": r["text"][:200], "source": f"team:{f.name}"})
        out.sort(key=lambda d: d["created_at"] or datetime.min, reverse=True)
        return out[:limit]

    def _rows(self, run_id: str, layer: int | None = None) -> pa.Table:
        """A run's rows (one layer, or all), checked, ordered by layer and position."""
        f, rec = self._get(run_id)
        filt = [("run_id", "=", run_id)] + ([("layer", "=", layer)] if layer is not None else [])
        try:
            tbl = pq.read_table(f, schema=SCHEMA, filters=filt)
        except Exception as e:  # noqa: BLE001
            raise fail(f, f"unreadable data ({type(e).__name__})") from None
        Coverage(f, [rec]).check(tbl)
        want = rec["n_tokens"] * (1 if layer is not None else rec["n_layers"])
        if tbl.num_rows != want:
            raise fail(f, f"run {run_id} is incomplete")
        return tbl.take(pc.sort_indices(tbl, [("layer", "ascending"), ("pos", "ascending")]))

    def activations(self, run_id: str, layer: int) -> np.ndarray:
        rec = self.run(run_id)
        if not 0 <= layer < rec.n_layers:
            raise MoyuError(f"layer {layer} out of range 0..{rec.n_layers - 1}")
        tbl = self._rows(run_id, layer)
        return blobs.dequantize(tbl.column("vec"), tbl.column("scale"), rec.dtype, rec.d_ff)

    def tokens(self, run_id: str) -> list[tuple[int, str]]:
        tbl = self._rows(run_id, 0)
        return list(zip(tbl.column("token_id").to_pylist(), tbl.column("piece").to_pylist()))

    def token_stats(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        rec = self.run(run_id)
        tbl = self._rows(run_id)
        L, T = rec.n_layers, rec.n_tokens
        norm = tbl.column("resid_norm").to_numpy().reshape(L, T)
        attn = blobs.attn_from_lists(tbl.column("attn_received"), rec.n_heads).reshape(L, T, -1)
        return attn.transpose(0, 2, 1).copy(), norm


class LayeredStore:
    """A local `Store` with a read-only `TeamStore` behind it. The `RunReader` methods try the
    local store first, then the team folder; everything else (captures, results, imports,
    deletes, `path`, `close`) is the local store's."""

    def __init__(self, local: Store, team: TeamStore):
        self.local, self.team = local, team

    def __getattr__(self, name):
        return getattr(self.local, name)

    def _src(self, run_id: str) -> Store | TeamStore:
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


def local_store(store: Store | LayeredStore) -> Store:
    """The database writes go to: the store itself, or a layered store's local one."""
    return store.local if isinstance(store, LayeredStore) else store


def team_dir() -> Path | None:
    """The team folder from `MOYU_TEAM_DIR`, if set."""
    d = os.environ.get("MOYU_TEAM_DIR", "").strip()
    return Path(d) if d else None


def open_store(path: str | Path | None = None, team: str | Path | None = None) -> Store | LayeredStore:
    """The local store, layered over the team folder when one is given or `MOYU_TEAM_DIR` is set."""
    local = Store(path)
    folder = team if team is not None else team_dir()
    return LayeredStore(local, TeamStore(folder)) if folder else local
