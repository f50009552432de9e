"""What a bundle is: one Parquet file with one row per (run, layer, token),

    run_id, layer, pos, token_id, piece, scale, vec, resid_norm, attn_received

(`vec` the stored neuron vector as raw little-endian bytes of the run's dtype and `scale` its
per-row scale, exactly as the store keeps them; `attn_received` a list of float32, one per head),
plus a JSON manifest in the Parquet key-value metadata under `moyu`: format name and version, the
run records (model, fingerprint, input manner, method and parameters, text, shape, dtype) and the
results rows tied to the runs (metrics). Any Parquet reader opens it:
`SELECT * FROM 'runs.parquet' WHERE layer = 3`.

`export.py` writes this format, `checks.py` checks untrusted files against it, `team.py` reads it.
"""
from __future__ import annotations

from typing import get_type_hints

import pyarrow as pa

from ..store import RunRecord

FORMAT = "moyu-bundle"
FORMAT_VERSION = 1
MANIFEST_KEY = b"moyu"
MAX_RUNS = 1000  # runs per bundle

SCHEMA = pa.schema([
    ("run_id", pa.string()), ("layer", pa.int16()), ("pos", pa.int32()), ("token_id", pa.int32()),
    ("piece", pa.string()), ("scale", pa.float32()), ("vec", pa.binary()), ("resid_norm", pa.float32()),
    ("attn_received", pa.list_(pa.float32())),
])
# A run record in the manifest: the fields of a RunRecord (name -> type) and `created_at`.
RECORD_FIELDS: dict[str, type] = get_type_hints(RunRecord)
