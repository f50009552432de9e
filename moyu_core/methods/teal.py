"""teal: TEAL (Liu et al. 2024, "Training-Free Activation Sparsity in Large Language Models"):
magnitude thresholds on the input of every linear of a block.

    q, k, v: x_attn = input_layernorm(h)     o: the attention output     gate, up: x = the MLP input
    down: z = act(gate x) * (up x)            each input entry with |entry| < t_{l,proj} is zeroed
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MoyuError
from .base import Method

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
GREEDY_STEP = 0.05       # block sparsity added by one step of the greedy allocation (TEAL: 0.05)


@dataclass(frozen=True)
class TealParams:
    keep: float = 0.5      # fraction of each linear's input entries kept (greedy: byte-weighted mean over the block)
    greedy: bool = False   # TEAL's block-wise greedy allocation across the block's linears

    def __post_init__(self):
        if not 0.0 < float(self.keep) <= 1.0:
            raise MoyuError(f"keep must be in (0, 1], got {self.keep}")


SAMPLE = 1 << 18          # |input| entries a threshold is estimated from (evenly strided)


def _quantile(a: torch.Tensor, q: float) -> float:
    """The q-quantile of |a| (linear interpolation, as torch.quantile) over at most SAMPLE
    evenly strided entries, by partition rather than a sort: one layer's projections at every
    keep of the calibration grid take a few seconds, not minutes."""
    x = a.detach().flatten()
    x = x[::max(1, x.numel() // SAMPLE)].abs().float().numpy()
    k = min(max(q, 0.0), 1.0) * (x.size - 1)
    lo = int(np.floor(k))
    hi = min(lo + 1, x.size - 1)
    part = np.partition(x, [lo, hi])
    return float(part[lo] + (part[hi] - part[lo]) * (k - lo))


class Teal(Method):
    """TEAL (Liu et al. 2024): the input of each linear of a block (q, k, v, o, gate, up, down)
    keeps its entries with |entry| >= t_{l,proj}; the others are zeroed, so the product skips
    those input channels (weight columns). Choices: t_{l,proj} is the (1 - keep_proj) quantile of
    |input| on standard-library docstrings (token 0 of each chunk excluded), per layer and
    projection, as TEAL calibrates from activation histograms. Uniform (default): every
    projection keeps `keep`. `greedy`: TEAL's block-wise greedy allocation: starting dense, each
    step raises one projection's sparsity by GREEDY_STEP * (block bytes / its bytes) (so the
    block's byte-weighted sparsity rises by GREEDY_STEP), the projection whose step gives the
    smallest L2 error of the block output against the dense block on calibration tokens,
    until the block's byte-weighted sparsity reaches 1 - keep; every block gets the same target.
    The prompt runs dense, like every method here (TEAL also sparsifies prefill). The MLP mask
    the app draws is the threshold on z, the down_proj input."""

    name = "teal"
    Params = TealParams
    needs = "z"
    skips = "all_linear"

    def requires(self):
        return ("thresholds",) if self.params.keep < 1.0 else ()

    def calibrate(self, layer, sample, lm) -> dict[str, float]:
        """{projection: threshold} of this layer."""
        missing = [p for p in PROJECTIONS if p not in sample.inputs or p not in sample.weights]
        if missing:
            raise MoyuError(f"teal: calibration gave no inputs for {missing}")
        if not self.params.greedy:
            return self._thresholds(sample, {p: 1.0 - self.params.keep for p in PROJECTIONS})
        if sample.block_error is None:
            raise MoyuError("teal greedy: calibration gave no block error")
        return self._thresholds(sample, self.greedy_sparsities(sample))

    def _thresholds(self, sample, sparsity: dict[str, float]) -> dict[str, float]:
        """Each projection's threshold at its sparsity (projections reading one input at one
        sparsity share one estimate)."""
        seen: dict[tuple, float] = {}
        out = {}
        for p in PROJECTIONS:
            key = (id(sample.inputs[p]), sparsity[p])
            if key not in seen:
                seen[key] = _quantile(sample.inputs[p], sparsity[p]) if sparsity[p] > 0 else 0.0
            out[p] = seen[key]
        return out

    def greedy_sparsities(self, sample) -> dict[str, float]:
        """TEAL's Algorithm 1 on one block: per-projection sparsity at block sparsity 1 - keep,
        sizes weighted by each projection's number of weights."""
        size = {p: float(sample.weights[p]) for p in PROJECTIONS}
        total = sum(size.values())
        s = {p: 0.0 for p in PROJECTIONS}
        block = 0.0
        while block < 1.0 - self.params.keep - 1e-9:
            best, best_err = None, float("inf")
            for p in PROJECTIONS:
                if s[p] >= 1.0:
                    continue
                trial = dict(s)
                trial[p] = min(1.0, s[p] + GREEDY_STEP * total / size[p])
                err = sample.block_error(self._thresholds(sample, trial))
                if err < best_err:
                    best, best_err = p, err
            if best is None:
                break
            s[best] = min(1.0, s[best] + GREEDY_STEP * total / size[best])
            block = sum(s[p] * size[p] for p in PROJECTIONS) / total
        return s

    def layer_thresholds(self, layer: int, lm) -> dict[str, float]:
        if self.params.keep >= 1.0:
            return {p: 0.0 for p in PROJECTIONS}
        return self.resource(lm, "thresholds")[layer]

    def input_keep(self, layer: int, projection: str, x: torch.Tensor, lm) -> torch.Tensor:
        """bool, x's shape: the entries of the projection's input that are kept."""
        t = self.layer_thresholds(layer, lm)[projection]
        return x.abs() >= t if t > 0 else torch.ones_like(x, dtype=torch.bool)

    def select(self, layer, z, gate, lm, x=None):
        return self.input_keep(layer, "down", z, lm)
