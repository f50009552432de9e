"""cett: CETT threshold on |z_i| * ||W_down[:, i]|| (ProSparse / "ReLU^2 wins", Zhang et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MoyuError
from .base import Method

SEARCH_TOKENS, SEARCH_STEPS = 384, 24


@dataclass(frozen=True)
class CettParams:
    cett: float = 0.2          # target share of the MLP output norm carried by the dropped tail
    keep: float | None = None  # instead: the threshold that keeps this fraction (for keep sweeps)

    def __post_init__(self):
        if not 0.0 <= float(self.cett) < 1.0:
            raise MoyuError(f"cett must be in [0, 1), got {self.cett}")
        if self.keep is not None and not 0.0 < float(self.keep) <= 1.0:
            raise MoyuError(f"keep must be in (0, 1], got {self.keep}")


def tail_share(z: torch.Tensor, w_down: torch.Tensor, c: torch.Tensor, t: float) -> float:
    """Mean over tokens of ||sum_{c_i < t} z_i W_down[:, i]|| / ||sum_i z_i W_down[:, i]||."""
    full = z @ w_down.T
    tail = (z * (c < t)) @ w_down.T
    return float((tail.norm(dim=-1) / full.norm(dim=-1).clamp_min(1e-12)).mean())


class Cett(Method):
    """CETT (Zhang et al. 2024, "ReLU^2 wins"): mask neuron i when its contribution
    c_i = |z_i| * ||W_down[:, i]|| is below t_l. Choices: t_l per layer is found once per model
    by binary search on standard-library docstrings (disjoint from the evaluation text; token 0
    excluded; the first 384 tokens per layer, 24 halvings) so that the mean tail share
    (`tail_share`) equals `cett`. With `keep` set, t_l is instead the calibrated (1-keep)
    quantile of c, so cett joins keep sweeps. cett 0 or keep 1 keeps everything. Only down_proj
    can skip weights (z needs gate and up)."""

    name = "cett"
    Params = CettParams

    @property
    def calibrates_by_quantile(self) -> bool:
        """With a keep, t_l is the base rule's quantile (calibration shares one sort per layer)."""
        return self.params.keep is not None

    def _keeps_all(self) -> bool:
        p = self.params
        return p.keep >= 1.0 if p.keep is not None else p.cett <= 0

    def requires(self):
        return ("derived",) if self._keeps_all() else ("thresholds", "derived")

    def derive(self, lm):
        """||W_down[:, i]|| of every neuron, per layer."""
        return [lm.mlp_weights(i).down.norm(dim=0) for i in range(lm.n_layers)]

    def calibration_score(self, layer, sample, lm):
        return sample.z.abs() * lm.mlp_weights(layer).down.norm(dim=0)

    def calibrate(self, layer, sample, lm):
        if self.params.keep is not None:
            return super().calibrate(layer, sample, lm)
        w_down = lm.mlp_weights(layer).down
        z = sample.z[:SEARCH_TOKENS]
        c = z.abs() * w_down.norm(dim=0)
        lo, hi = 0.0, float(c.max())
        for _ in range(SEARCH_STEPS):
            mid = (lo + hi) / 2
            if tail_share(z, w_down, c, mid) < self.params.cett:
                lo = mid
            else:
                hi = mid
        return lo

    def select(self, layer, z, gate, lm, x=None):
        if self._keeps_all():
            return torch.ones_like(z, dtype=torch.bool)
        t = self.resource(lm, "thresholds")[layer]
        return z.abs().float() * self.resource(lm, "derived")[layer] >= t

