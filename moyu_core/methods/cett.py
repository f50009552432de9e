"""cett: CETT threshold on |z_i| * ||W_down[:, i]|| (ProSparse / "ReLU^2 wins", Zhang et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MoyuError
from .base import Method
from .calibration import down_norms, thresholds


@dataclass(frozen=True)
class CettParams:
    cett: float = 0.2          # target share of the MLP output norm carried by the dropped tail
    keep: float | None = None  # instead: the threshold that keeps this fraction (for keep sweeps)

    def __post_init__(self):
        if not 0.0 <= float(self.cett) < 1.0:
            raise MoyuError(f"cett must be in [0, 1), got {self.cett}")
        if self.keep is not None and not 0.0 < float(self.keep) <= 1.0:
            raise MoyuError(f"keep must be in (0, 1], got {self.keep}")


class Cett(Method):
    """CETT (Zhang et al. 2024, "ReLU^2 wins"): mask neuron i when its contribution
    c_i = |z_i| * ||W_down[:, i]|| is below t_l. Choices: t_l per layer is found once per model
    by binary search on standard-library docstrings (disjoint from the evaluation text; token 0
    excluded; 384 tokens per layer) so that the mean over tokens of
    ||sum_{c_i < t_l} z_i W_down[:, i]|| / ||MLP output|| equals `cett`. With `keep` set, t_l is
    instead the calibrated (1-keep) quantile of c, so cett joins keep sweeps. cett 0 or keep 1
    keeps everything. Only down_proj can skip weights (z needs gate and up)."""

    name = "cett"
    Params = CettParams

    def layer_threshold(self, layer: int, lm) -> float:
        p = self.params
        if p.keep is not None:
            return 0.0 if p.keep >= 1.0 else thresholds(lm, "cett-keep", p.keep)[layer]
        return 0.0 if p.cett <= 0 else thresholds(lm, "cett", p.cett)[layer]

    def prepare(self, lm) -> None:
        self.layer_threshold(0, lm)
        for i in range(lm.n_layers):
            down_norms(lm, i)

    def select(self, layer, z, gate, lm, x=None):
        t = self.layer_threshold(layer, lm)
        if t <= 0:
            return torch.ones_like(z, dtype=torch.bool)
        return z.abs().float() * down_norms(lm, layer) >= t
