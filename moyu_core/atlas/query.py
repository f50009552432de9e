"""DuckDB over an atlas' shards: the atlas' only SQL (store.py holds the DuckDB store's).

An atlas is a folder, or an s3:// / http(s):// location, holding `manifest.json` and the Parquet
shards it names (`shards.py`). Only files the manifest names are read, and only by plain file
name inside the atlas' location; values are always bound as parameters (file lists included), and
the SQL text is fixed. httpfs is installed and loaded only for a remote location (it must be
installable there). Every shard's fingerprint is checked against the manifest, and a local
shard's size too, before a statement reads it.

A partial atlas (a build killed or still running) is refused unless the caller allows it, and then
answers from the done chunks, merged at query time exactly as the final merge would.
"""
from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from ..errors import MoyuError
from .shards import MANIFEST, check_manifest, shard_records

REMOTE = ("s3://", "http://", "https://")
SORTS = ("frequency", "inertia", "mean", "max", "disagreement", "hits", "promoted")
# ORDER BY of each sort: fixed text, chosen by a validated name
_ORDER = {"frequency": "frequency DESC", "inertia": "inertia DESC NULLS LAST", "mean": "mean_abs DESC",
          "max": "max_abs DESC", "disagreement": "disagreement DESC", "hits": "hits DESC",
          "promoted": "promoted_rank ASC"}


def is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE)


def _connection(remote: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    if remote:
        try:
            con.execute("INSTALL httpfs")
            con.execute("LOAD httpfs")
        except duckdb.Error as e:
            con.close()
            raise MoyuError(f"reading an atlas over s3/http needs DuckDB's httpfs extension, which could "
                            f"not be loaded: {str(e).splitlines()[0]}") from None
    return con


@contextmanager
def _connect(remote: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    con = _connection(remote)
    try:
        yield con
    finally:
        con.close()


def _rows(con, sql: str, params: dict, what: str) -> list[tuple]:
    try:
        return con.execute(sql, params).fetchall()
    except duckdb.Error as e:
        raise MoyuError(f"atlas {what} could not be read (a shard is corrupt or unreadable): "
                        f"{str(e).splitlines()[0]}") from None


class Atlas:
    """An opened atlas: its manifest and the shard files to read."""

    def __init__(self, location: str, manifest: dict):
        self.location = str(location).rstrip("/")
        self.manifest = manifest
        self.remote = is_remote(self.location)
        self._con: duckdb.DuckDBPyConnection | None = None   # opened on first use (~30 ms)
        self._lock = threading.Lock()
        self._checked: dict[str, tuple] = {}   # shard -> (size, mtime) when its fingerprint was read

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __del__(self):
        self.close()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of this atlas' connection (one per query: safe from any thread), after the
        shards are checked."""
        with self._lock:
            if self._con is None:
                self._con = _connection(self.remote)
            cur = self._con.cursor()
        try:
            self._check_shards(cur)
            yield cur
        finally:
            cur.close()

    # ---- what it is ----------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def n_layers(self) -> int:
        return int(self.manifest["n_layers"])

    @property
    def d_ff(self) -> int:
        return int(self.manifest["d_ff"])

    def progress(self) -> dict:
        plan = self.manifest["plan"]
        done = self.manifest["chunks"]
        tokens = sum(int(c["tokens"]) for c in done.values())
        return {"complete": self.complete, "chunks_done": len(done), "chunks": int(plan["chunks"]),
                "tokens_done": tokens, "tokens": int(plan["tokens"])}

    def summary(self) -> dict:
        m = self.manifest
        return {"atlas": self.location, "model": m["model"], "fingerprint": m["fingerprint"],
                "layers": self.n_layers, "neurons": self.d_ff, "methods": m["methods"],
                "skipped_methods": m["skipped_methods"], "settings": {k: v for k, v in m["settings"].items()
                                                                      if k != "hist_edges"},
                "documents": m["plan"]["documents"], **self.progress()}

    def _path(self, name: str) -> str:
        return f"{self.location}/{name}"

    def files(self, table: str) -> list[str]:
        m = self.manifest
        if table == "vocab":
            return [self._path(m["vocab"]["file"])] if m.get("vocab") else []
        if m.get("final"):
            return [self._path(m["final"][table]["file"])]
        done = sorted(m["chunks"].items(), key=lambda kv: int(kv[0]))
        return [self._path(rec["files"][table]["file"]) for _, rec in done if rec.get("files")]

    def _check_shards(self, con) -> None:
        """Every shard named by the manifest is there, of the recorded size (local) and of this
        atlas' model (its Parquet metadata; read again only when a local file changes)."""
        records = shard_records(self.manifest)
        if not records:
            raise MoyuError(f"atlas {self.location} has no finished chunk yet")
        files, stamps = [], {}
        for rec in records:
            f = self._path(rec["file"])
            if not self.remote:
                path = Path(f)
                if not path.is_file():
                    raise MoyuError(f"atlas shard {path} is missing")
                st = path.stat()
                if st.st_size != rec["bytes"]:
                    raise MoyuError(f"atlas shard {path} is corrupt (its size differs from the manifest)")
                stamps[f] = (st.st_size, st.st_mtime_ns)
                if self._checked.get(f) == stamps[f]:
                    continue
            elif f in self._checked:
                continue
            files.append(f)
        if not files:
            return
        got = dict(_rows(con, "SELECT file_name, decode(value) FROM parquet_kv_metadata($files) "
                              "WHERE decode(key) = 'moyu_fingerprint'", {"files": files}, "shard metadata"))
        fp = self.manifest["fingerprint"]
        for f in files:
            if got.get(f) != fp:
                raise MoyuError(f"atlas shard {f} is from another model (fingerprint {str(got.get(f))[:12]}, "
                                f"the atlas is {fp[:12]})")
            self._checked[f] = stamps.get(f, ())

    def _check_neuron(self, layer: int, neuron: int) -> None:
        if not 0 <= int(layer) < self.n_layers:
            raise MoyuError(f"layer {layer} is out of range: this atlas has layers 0..{self.n_layers - 1}")
        if not 0 <= int(neuron) < self.d_ff:
            raise MoyuError(f"neuron {neuron} is out of range: this atlas has neurons 0..{self.d_ff - 1}")

    # ---- one neuron ----------------------------------------------------------------------------

    def neuron(self, layer: int, neuron: int) -> dict:
        """One neuron's dashboard: top contexts (value descending), frequency, mean/max |z|,
        histogram, inertia, how often each method keeps it, vocabulary effect."""
        self._check_neuron(layer, neuron)
        m = self.manifest
        K, ctx = int(m["settings"]["top_k"]), int(m["settings"]["context"])
        p = {"layer": int(layer), "neuron": int(neuron)}
        with self._cursor() as con:
            stats = _rows(con, "SELECT n, top10, stay, prev, sum_abs, max_abs, hist FROM read_parquet($f) "
                               "WHERE layer = $layer AND neuron = $neuron", {**p, "f": self.files("stats")}, "stats")
            kept = _rows(con, "SELECT method, sum(kept), sum(n) FROM read_parquet($f) WHERE layer = $layer AND "
                              "neuron = $neuron GROUP BY method", {**p, "f": self.files("kept")}, "method counts")
            top = _rows(con, "SELECT value, doc, pos FROM read_parquet($f) WHERE layer = $layer AND neuron = $neuron "
                             "ORDER BY value DESC, doc, pos LIMIT $k", {**p, "f": self.files("top"), "k": K},
                        "top contexts")
            docs = sorted({d for _, d, _ in top})
            pieces = {(d, q): piece for d, q, piece in _rows(
                con, "SELECT doc, pos, piece FROM read_parquet($f) WHERE doc IN (SELECT unnest($docs))",
                {"f": self.files("tokens"), "docs": docs}, "contexts")} if docs else {}
            vocab = _rows(con, "SELECT kind, token_id, token, value FROM read_parquet($f) WHERE layer = $layer "
                               "AND neuron = $neuron ORDER BY kind, rank", {**p, "f": self.files("vocab")},
                          "vocabulary effect") if self.files("vocab") else []

        def text(d: int, positions) -> str:
            return "".join(pieces.get((d, q), "") for q in positions)

        n = sum(r[0] for r in stats)
        top10, stay, prev = (sum(r[i] for r in stats) for i in (1, 2, 3))
        hist = [sum(c) for c in zip(*(r[6] for r in stats))] if stats else []
        share = (lambda a: a / n if n else math.nan)
        return {
            "layer": int(layer), "neuron": int(neuron), "tokens": n,
            "top": [{"value": float(v), "doc": int(d), "pos": int(q), "token": text(d, [q]),
                     "context": text(d, range(q - ctx, q + ctx + 1)), "before": text(d, range(q - ctx, q)),
                     "after": text(d, range(q + 1, q + ctx + 1))} for v, d, q in top],
            "frequency": share(top10), "mean_abs": share(sum(r[4] for r in stats)),
            "max_abs": float(max((r[5] for r in stats), default=math.nan)),
            "inertia": stay / prev if prev else math.nan, "inertia_pairs": prev,
            "histogram": {"edges": m["settings"]["hist_edges"], "counts": hist},
            "methods": {name: k / kn if kn else math.nan
                        for name, k, kn in sorted(kept, key=lambda r: m["methods"].index(r[0]))},
            "methods_tokens": max((int(r[2]) for r in kept), default=0),
            **{kind: [{"token": t, "token_id": int(i), "value": float(v)} for k, i, t, v in vocab if k == kind]
               for kind in ("promoted", "suppressed")},
            "complete": self.complete,
        }

    # ---- many neurons --------------------------------------------------------------------------

    def search(self, token: str | None = None, promotes: str | None = None, min_frequency: float | None = None,
               max_frequency: float | None = None, method: str | None = None, layer: int | None = None,
               sort: str | None = None, limit: int = 20) -> list[dict]:
        """Neurons by the token of their top contexts (`token`: how many of their top K are that
        token, trimmed and case-folded), by a token they promote most (`promotes`), by frequency
        range, and by how far `method`'s keep rate departs from the oracle's (`disagreement`)."""
        sort = sort or ("hits" if token else "promoted" if promotes else "disagreement" if method else "frequency")
        if sort not in SORTS:
            raise MoyuError(f"unknown sort {sort!r}; choose {', '.join(SORTS)}")
        needs = {"hits": ("--token", token), "promoted": ("--promotes", promotes), "disagreement": ("--method", method)}
        if sort in needs and not needs[sort][1]:
            raise MoyuError(f"sort {sort} needs {needs[sort][0]}")
        if method is not None and method not in self.manifest["methods"]:
            raise MoyuError(f"method {method!r} is not in this atlas; it has {', '.join(self.manifest['methods'])}")
        if layer is not None and not 0 <= int(layer) < self.n_layers:
            raise MoyuError(f"layer {layer} is out of range: this atlas has layers 0..{self.n_layers - 1}")
        if not 1 <= int(limit) <= 10000:
            raise MoyuError("--limit must be between 1 and 10000")
        if promotes and not self.files("vocab"):
            raise MoyuError("this atlas has no vocabulary effect yet")
        p = {"stats": self.files("stats"), "layer": layer, "minf": min_frequency, "maxf": max_frequency,
             "limit": int(limit)}
        parts = ["""s AS (SELECT layer, neuron, sum(n) AS tokens, sum(top10) / sum(n) AS frequency,
                           sum(sum_abs) / sum(n) AS mean_abs, max(max_abs) AS max_abs,
                           CASE WHEN sum(prev) > 0 THEN sum(stay) / sum(prev) END AS inertia
                    FROM read_parquet($stats) WHERE $layer IS NULL OR layer = $layer GROUP BY layer, neuron)"""]
        cols, joins = "", ""
        if method:
            parts.append("""m AS (SELECT layer, neuron, sum(kept) FILTER (WHERE method = $method) AS km,
                                  sum(kept) FILTER (WHERE method = 'oracle') AS ko,
                                  sum(n) FILTER (WHERE method = $method) AS kn
                           FROM read_parquet($kept) WHERE $layer IS NULL OR layer = $layer GROUP BY layer, neuron)""")
            cols += (", m.km / m.kn AS keep_rate, m.ko / m.kn AS oracle_rate, "
                     "abs(m.km - m.ko) / m.kn AS disagreement, m.kn AS methods_tokens")
            joins += " JOIN m USING (layer, neuron)"
            p |= {"kept": self.files("kept"), "method": method}
        if token:
            parts.append("""t AS (SELECT layer, neuron, count(*) AS hits FROM (
                               SELECT layer, neuron, token_id, row_number() OVER (PARTITION BY layer, neuron
                                   ORDER BY value DESC, doc, pos) AS r
                               FROM read_parquet($top) WHERE $layer IS NULL OR layer = $layer)
                           WHERE r <= $k AND token_id IN (SELECT DISTINCT token_id FROM read_parquet($tokens)
                                                          WHERE lower(trim(piece)) = lower(trim($token)))
                           GROUP BY layer, neuron)""")
            cols += ", t.hits"
            joins += " JOIN t USING (layer, neuron)"
            p |= {"top": self.files("top"), "tokens": self.files("tokens"), "token": token,
                  "k": int(self.manifest["settings"]["top_k"])}
        if promotes:
            parts.append("""v AS (SELECT layer, neuron, min(rank) AS promoted_rank, max(value) AS promoted_value
                           FROM read_parquet($vocab)
                           WHERE kind = 'promoted' AND lower(trim(token)) = lower(trim($promotes))
                             AND ($layer IS NULL OR layer = $layer) GROUP BY layer, neuron)""")
            cols += ", v.promoted_rank, v.promoted_value"
            joins += " JOIN v USING (layer, neuron)"
            p |= {"vocab": self.files("vocab"), "promotes": promotes}
        sql = (f"WITH {', '.join(parts)} SELECT s.*{cols} FROM s{joins} "
               "WHERE ($minf IS NULL OR frequency >= $minf) AND ($maxf IS NULL OR frequency <= $maxf) "
               f"ORDER BY {_ORDER[sort]}, layer, neuron LIMIT $limit")
        with self._cursor() as con:
            rows = _rows(con, sql, p, "search")
            names = [d[0] for d in con.description]
        return [{k: (v if not isinstance(v, float) or v == v else None) for k, v in zip(names, r)} for r in rows]


def read_manifest(location: str) -> dict:
    """The manifest at a folder or s3/http location (checked: format, version, file names)."""
    location = str(location).rstrip("/")
    if is_remote(location):
        with _connect(True) as con:
            rows = _rows(con, "SELECT content FROM read_text($f)", {"f": f"{location}/{MANIFEST}"}, "manifest")
        text = rows[0][0] if rows else ""
    else:
        path = Path(location).expanduser() / MANIFEST
        if not path.is_file():
            raise MoyuError(f"no atlas at {location} (no {MANIFEST}); build one with "
                            f"`python -m moyu_core atlas build --corpus pydoc --out {location}`")
        text = path.read_text()
    try:
        manifest = json.loads(text)
    except ValueError:
        raise MoyuError(f"{location}/{MANIFEST} is damaged (not JSON)") from None
    check_manifest(manifest, f"{location}/{MANIFEST}")
    return manifest


def open_atlas(location: str | Path, allow_partial: bool = False) -> Atlas:
    """The atlas at `location`; an incomplete one raises (saying how far it got) unless
    `allow_partial`."""
    location = str(location)
    atlas = Atlas(location if is_remote(location) else str(Path(location).expanduser()), read_manifest(location))
    if not atlas.complete and not allow_partial:
        pr = atlas.progress()
        raise MoyuError(f"atlas {location} is incomplete: {pr['chunks_done']} of {pr['chunks']} chunks "
                        f"({pr['tokens_done']:,} of {pr['tokens']:,} tokens) built; resume it with the same "
                        "`atlas build` command, or pass --partial to look at what is done")
    return atlas
