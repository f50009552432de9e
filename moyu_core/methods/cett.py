"""cett: CETT threshold on |z_i| * ||W_down[:, i]|| (ProSparse / "ReLU^2 wins", Zhang et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MoyuError
from .base import Method


@dataclass(frozen=True)
class CettParams:
    cett: float = 0.2  # target share of the MLP output norm carried by the dropped tail

    def __post_init__(self):
        if not 0.0 <= float(self.cett) < 1.0:
            raise MoyuError(f"cett must be in [0, 1), got {self.cett}")


class Cett(Method):
    """CETT (Zhang et al. 2024): per token, drop the neurons with the smallest contribution
    |z_i|*||W_down[:, i]|| such that the dropped tail's norm (upper bound: sum of contributions)
    is at most `cett` of the total. Choice: per-token cumulative sum instead of a per-layer
    binary-searched t_l; cett 0 keeps everything."""

    name = "cett"
    Params = CettParams

    def select(self, layer, z, gate, lm):
        if self.params.cett <= 0:
            return torch.ones_like(z, dtype=torch.bool)
        w = lm.layers[layer].mlp.down_proj.weight.detach().float().norm(dim=0)  # (d_ff,)
        c = z.abs().float() * w                                                # (T, d_ff)
        srt, idx = c.sort(dim=-1)
        cum = srt.cumsum(-1) / srt.sum(-1, keepdim=True).clamp_min(1e-30)
        drop_sorted = cum <= self.params.cett
        return torch.ones_like(z, dtype=torch.bool).scatter_(-1, idx, ~drop_sorted)
