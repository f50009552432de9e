"""cats: threshold on |act(gate_proj(x))| per layer (CATS, Lee et al. 2024)."""
from __future__ import annotations

import torch

from .base import KeepParams, Method
from .calibration import thresholds


class Cats(Method):
    """CATS (Lee et al. 2024): keep neuron i when |act(gate_proj(x))_i| >= t_l; the gate stays
    dense, up_proj and down_proj are computed for survivors only. Choice: t_l is the per-layer
    (1-keep) quantile of |act(gate)| calibrated once per model on standard-library docstrings
    (disjoint from the evaluation text; token 0 excluded), as CATS calibrates on held-out data."""

    name = "cats"
    Params = KeepParams
    needs = "gate"

    def prepare(self, lm) -> None:
        if self.params.keep < 1.0:
            thresholds(lm, "cats", self.params.keep)

    def select(self, layer, z, gate, lm, x=None):
        if self.params.keep >= 1.0:
            return torch.ones_like(gate, dtype=torch.bool)
        return gate.abs() >= thresholds(lm, "cats", self.params.keep)[layer]
