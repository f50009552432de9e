"""How neuron vectors and attention summaries are encoded: numpy rows <-> Arrow columns.

One codec for the store (DuckDB BLOB columns) and for bundles (Parquet, read with pyarrow):

- a neuron vector is one BLOB of raw little-endian bytes of the run's dtype: int8 with a per-row
  float scale (`quantize`; the largest reconstruction error is scale/2 = max|z|/254), float16
  or float32 (scale 1);
- attention received (one value per head) is a float16 BLOB in the store and a list<float32>
  in bundles (a bundle's row group may mix runs of different head counts).

Pure numpy and pyarrow: no SQL, no torch.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .errors import MoyuError

DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}
_F16_MAX = float(np.finfo(np.float16).max)


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


def _array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _offsets(arr: pa.Array) -> np.ndarray:
    """The len+1 byte offsets of a binary array (int64 for large_binary)."""
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    return np.frombuffer(arr.buffers()[1], width)[arr.offset:arr.offset + len(arr) + 1]


def to_blobs(rows: np.ndarray) -> pa.BinaryArray:
    """One BLOB per row of a 2-D array: its raw little-endian bytes, no copy."""
    rows = np.ascontiguousarray(rows)
    width = rows.dtype.itemsize * rows.shape[1]
    offsets = pa.py_buffer(np.arange(len(rows) + 1, dtype=np.int32) * width)
    return pa.BinaryArray.from_buffers(pa.binary(), len(rows), [None, offsets, pa.py_buffer(rows)])


def blob_lengths(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Byte length of each BLOB of a column."""
    arr = _array(col)
    return np.diff(_offsets(arr)) if len(arr) else np.zeros(0, np.int64)


def from_blobs(col: pa.ChunkedArray | pa.Array, dtype, width: int) -> np.ndarray:
    """The inverse of `to_blobs`: (rows, width) of `dtype` from a column of BLOBs that each hold
    `width` values (a view of the column's buffer where it is one chunk)."""
    arr = _array(col)
    if len(arr) == 0:
        return np.zeros((0, width), dtype)
    offsets = _offsets(arr)
    raw = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].view(dtype)
    return raw.reshape(len(arr), width)


def dequantize(vec: pa.ChunkedArray | pa.Array, scale: pa.ChunkedArray | pa.Array, dtype: str,
               width: int) -> np.ndarray:
    """float32 (rows, width) from stored vectors of `dtype` and their per-row scale."""
    out = from_blobs(vec, DTYPES[dtype], width).astype(np.float32)
    if dtype == "int8":
        out *= _array(scale).to_numpy()[:, None]
    return out


def attn_to_blobs(attn: np.ndarray) -> pa.BinaryArray:
    """Attention received (rows, heads) as float16 BLOBs, clipped to float16's range."""
    return to_blobs(np.clip(attn, -_F16_MAX, _F16_MAX).astype(np.float16))


def attn_from_blobs(col: pa.ChunkedArray | pa.Array, heads: int) -> np.ndarray:
    """float32 (rows, heads) from float16 attention BLOBs."""
    return from_blobs(col, np.float16, heads).astype(np.float32)


def attn_lists_to_blobs(col: pa.ChunkedArray | pa.Array) -> pa.BinaryArray:
    """Float16 attention BLOBs from a column of float lists whose lengths may differ between
    rows (runs of different models)."""
    arr = _array(col)
    values = np.clip(arr.flatten().to_numpy(), -_F16_MAX, _F16_MAX).astype(np.float16)
    offsets = arr.offsets.to_numpy()
    return pa.BinaryArray.from_buffers(pa.binary(), len(arr), [
        None, pa.py_buffer(((offsets - offsets[0]) * 2).astype(np.int32)), pa.py_buffer(values)])


def attn_to_lists(attn: np.ndarray) -> pa.ListArray:
    """list<float32> column from attention received (rows, heads)."""
    attn = np.ascontiguousarray(attn, np.float32)
    offsets = pa.array(np.arange(len(attn) + 1, dtype=np.int32) * attn.shape[1])
    return pa.ListArray.from_arrays(offsets, pa.array(attn.ravel()))


def attn_from_lists(col: pa.ChunkedArray | pa.Array, heads: int) -> np.ndarray:
    """float32 (rows, heads) from a list<float32> column whose lists all hold `heads` values."""
    return _array(col).flatten().to_numpy().reshape(-1, heads)
