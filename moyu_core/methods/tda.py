"""tda: threshold dynamic activation (TEAL-style magnitude threshold on z)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MoyuError
from .base import Method


@dataclass(frozen=True)
class TdaParams:
    keep: float = 0.5               # target kept fraction; sets the calibrated per-layer threshold
    threshold: float | None = None  # a fixed global threshold on |z| instead

    def __post_init__(self):
        if not 0.0 < float(self.keep) <= 1.0:
            raise MoyuError(f"keep must be in (0, 1], got {self.keep}")
        if self.threshold is not None and not 0.0 <= float(self.threshold) < 1e6:
            raise MoyuError(f"threshold must be in [0, 1e6), got {self.threshold}")


class Tda(Method):
    """TDA (MOYU paper; TEAL, Liu et al. 2024): zero z_i where |z_i| < t_l. Choices: t_l is the
    per-layer (1-keep) quantile of |z| calibrated once per model on standard-library docstrings
    (disjoint from the pydoc_data.topics evaluation text; token 0 excluded). A fixed global
    `threshold` overrides it; keep 1.0 or threshold 0 keeps everything. Only z is thresholded
    (gate and up stay dense), so only down_proj can skip weights."""

    name = "tda"
    Params = TdaParams

    def requires(self):
        return ("thresholds",) if self.params.threshold is None and self.params.keep < 1.0 else ()

    def calibration_score(self, layer, sample, lm):
        return sample.z.abs()

    def layer_threshold(self, layer: int, lm) -> float:
        if self.params.threshold is not None:
            return float(self.params.threshold)
        if self.params.keep >= 1.0:
            return 0.0
        return self.resource(lm, "thresholds")[layer]

    def select(self, layer, z, gate, lm, x=None):
        t = self.layer_threshold(layer, lm)
        if t <= 0:
            return torch.ones_like(z, dtype=torch.bool)
        return z.abs() >= t
