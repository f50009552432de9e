"""Fused batch-1 kernels for executed sparse decoding (`sparse_decode.cpp`), the weight layouts
they read, and whole-sequence statistics kernels (`row_stats.cpp`: top-k masks, atlas aggregates).
Both choose top-k sets with the same radix select (`radix_select.h`), so executed decodes keep
what the simulated masks keep, ties included.

Each C++ source is compiled on first use with `torch.utils.cpp_extension.load` (g++ and ninja,
ninja from requirements.txt) into `cache/kernels/` and reused by every later process; a changed
source rebuilds. Flags are portable (-O3, no -march): the inner loops are built for AVX-512,
AVX2+FMA and plain x86-64 and chosen at run time. The kernels run on torch's own thread pool
(`torch.set_num_threads`).

Each MLP is kept in the layout its access needs (why: `sparse_decode.cpp`), built from the
weights once per model on first use and kept with it (`LoadedModel.derived`), in 2 MiB-aligned
memory advised for transparent huge pages: `stream_layout` (dense, z-based), `gate_layout`
(gate-based), `records` (routers), `router_blocks` (dejavu's router), `teal_layout` and
`transposed` (input-channel skipping), `rows` (other dense products). On this kind of CPU (2-core
AMD EPYC, AVX-512) these kernels read a decode step's weights about twice as fast as torch's
matrix-vector product, so every executed decode, dense included, runs on them.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch

from ..errors import MoyuError

ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")   # the kernels' `kind` codes, in order
_HERE = Path(__file__).parent
_lock = threading.Lock()
log = logging.getLogger(__name__)
_loaded: dict[str, object] = {}


def _build_dir() -> Path:
    from ..models import CACHE_DIR
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info.major}{sys.version_info.minor}"
    return Path(CACHE_DIR) / "kernels" / tag


STALE_LOCK_S = 600   # a build takes about a minute here; a lock this old was left by a killed build


def clear_stale_lock(build: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove torch's build lock in `build` if it is older than max_age_s: a process killed while
    it compiled leaves it behind, and every later build would wait on it forever. True if removed."""
    lock = build / "lock"
    try:
        if time.time() - lock.stat().st_mtime <= max_age_s:
            return False
        lock.unlink()
    except FileNotFoundError:
        return False
    log.warning("removed a stale kernel build lock (%s), left by a build that was stopped", lock)
    return True


def _load(source: str):
    """The extension compiled from `source` in this folder (built on the first call of the
    process if needed, then loaded)."""
    with _lock:
        if source not in _loaded:
            from torch.utils import cpp_extension
            bin_dir = str(Path(sys.executable).parent)   # the venv's ninja, where PATH lacks it
            if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
            build = _build_dir() / Path(source).stem
            build.mkdir(parents=True, exist_ok=True)
            clear_stale_lock(build)
            try:
                _loaded[source] = cpp_extension.load(
                    name=f"moyu_{Path(source).stem}", sources=[str(_HERE / source)], build_directory=str(build),
                    extra_cflags=["-O3", "-fopenmp", "-fno-math-errno"], extra_ldflags=["-fopenmp"],
                    verbose=False)
            except (RuntimeError, OSError, ImportError) as e:
                raise MoyuError(f"could not build the kernels of {source}: {e}") from None
        return _loaded[source]


def ops():
    """The decode kernels (`sparse_decode.cpp`)."""
    return _load("sparse_decode.cpp")


def row_ops():
    """The whole-sequence statistics kernels (`row_stats.cpp`): top-k masks, atlas aggregates."""
    return _load("row_stats.cpp")


def topk_mask_np(a, k: int, absolute: bool = False):
    """numpy bool mask of each row's k largest entries of the 2-D array a (of |a| when
    `absolute`): `row_stats.cpp`'s radix select, ties at the k-th value taking the lowest indices.
    Raises MoyuError where the kernels cannot be built."""
    import numpy as np
    a32 = np.ascontiguousarray(a, dtype=np.float32)
    if not a32.flags.writeable:   # torch wraps only writable arrays without a warning
        a32 = a32.copy()
    return row_ops().topk_mask_rows(torch.from_numpy(a32), int(k), bool(absolute)).numpy()


def activation_kind(act: torch.nn.Module) -> int | None:
    """The kernels' code for an activation module, found by comparing its values with each
    candidate's on [-8, 8]; None when it is none of them (that model then decodes simulated)."""
    probe = torch.linspace(-8, 8, 161)
    with torch.no_grad():
        got = act(probe)
    ref = {"silu": torch.nn.functional.silu(probe),
           "gelu_tanh": torch.nn.functional.gelu(probe, approximate="tanh"),
           "gelu": torch.nn.functional.gelu(probe), "relu": torch.relu(probe)}
    for kind, name in enumerate(ACTIVATIONS):
        if torch.allclose(got, ref[name], atol=1e-5, rtol=1e-5):
            return kind
    return None


def hugepage(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy of t in 2 MiB-aligned memory advised for transparent huge pages."""
    return ops().hugepage_copy(t)


def hugepage_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] (rows) copied into huge-page memory."""
    return ops().hugepage_rows(t, idx)


def stream_layout(lm, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense and z-based MLPs: gu (d_ff, 2, d) = [gate_i; up_i] and dt (d_ff, d) = W_down^T."""
    def build():
        w = lm.mlp_weights(i)
        return hugepage(torch.stack([w.gate, w.up], 1)), hugepage(w.down.T)
    return lm.derived((i, "kernels.stream"), build)


def gate_layout(lm, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate-based MLPs: g (d_ff, d) = W_gate and ud (d_ff, 2, d) = [up_i; W_down[:, i]]."""
    def build():
        w = lm.mlp_weights(i)
        return hugepage(w.gate), hugepage(torch.stack([w.up, w.down.T], 1))
    return lm.derived((i, "kernels.gate"), build)


def records(lm, i: int) -> torch.Tensor:
    """Routers: (d_ff, 3, d) = [gate_i; up_i; W_down[:, i]]."""
    def build():
        w = lm.mlp_weights(i)
        return hugepage(torch.stack([w.gate, w.up, w.down.T], 1))
    return lm.derived((i, "kernels.records"), build)


def router_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """DejaVu's router w2 (w1 x), w1 (r, d) and w2 (d_ff, r): one block [w1_j; w2[:, j]] per rank j,
    (r, d + d_ff), so that the router is read as one stream."""
    return hugepage(torch.cat([w1.float(), w2.float().T], 1))


def input_major(w: torch.Tensor) -> torch.Tensor:
    """W (out, in) for input-channel skipping: W^T (in, out) in huge-page memory, so that an input
    channel's weights are one contiguous row (all segments of a stacked matrix in one row)."""
    return hugepage(w.T)


def teal_layout(lm, i: int) -> torch.Tensor:
    """TEAL's gate and up: [W_gate; W_up]^T (d, 2 d_ff) (`input_major`)."""
    def build():
        w = lm.mlp_weights(i)
        return input_major(torch.cat([w.gate, w.up]))
    return lm.derived((i, "kernels.teal"), build)


def transposed(lm, key, build) -> torch.Tensor:
    """`build()` (out, in) kept with the model as `input_major`."""
    return lm.derived((key, "kernels.input_major"), lambda: input_major(build()))


def rows(lm, key, build) -> torch.Tensor:
    """`build()` (out, in) kept with the model as it is, in huge-page memory (dense products)."""
    return lm.derived((key, "kernels.rows"), lambda: hugepage(build()))
