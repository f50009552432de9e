"""tda: threshold dynamic activation (TEAL-style magnitude threshold on z)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MoyuError
from .base import Method


@dataclass(frozen=True)
class TdaParams:
    keep: float = 0.5          # target kept fraction (threshold = (1-keep) quantile of |z|)
    threshold: float | None = None  # fixed global threshold instead of a quantile

    def __post_init__(self):
        if not 0.0 < float(self.keep) <= 1.0:
            raise MoyuError(f"keep must be in (0, 1], got {self.keep}")
        if self.threshold is not None and self.threshold < 0:
            raise MoyuError("threshold must be >= 0")


def layer_threshold(score: torch.Tensor, keep: float) -> float:
    """(1-keep) quantile of score (T, d_ff), token 0 excluded when T > 1 (attention sink)."""
    if keep >= 1.0:
        return 0.0
    s = score[1:] if score.shape[0] > 1 else score
    return float(torch.quantile(s.flatten().float()[:2_000_000], 1.0 - keep))


class Tda(Method):
    """TDA (MOYU paper; TEAL, Liu et al. 2024): zero z_i where |z_i| < t_l. Choice: t_l is the
    per-layer (1-keep) quantile of |z| on the given tokens (token 0 excluded); calibration on
    disjoint text is not implemented yet. A fixed global `threshold` overrides it; keep 1.0 or
    threshold 0 keeps everything."""

    name = "tda"
    Params = TdaParams

    def select(self, layer, z, gate, lm):
        a = z.abs()
        t = self.params.threshold if self.params.threshold is not None else layer_threshold(a, self.params.keep)
        if t <= 0:
            return torch.ones_like(z, dtype=torch.bool)
        return a >= t
