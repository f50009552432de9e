"""cats: threshold on |act(gate_proj(x))| per layer (CATS, Lee et al. 2024)."""
from __future__ import annotations

import torch

from .base import KeepParams, Method


class Cats(Method):
    """CATS (Lee et al. 2024): keep neuron i when |act(gate_proj(x))_i| >= t_l; the gate stays
    dense, up_proj and down_proj are computed for survivors only. Choice: t_l is the per-layer
    (1-keep) quantile of |act(gate)| calibrated once per model on standard-library docstrings
    (disjoint from the evaluation text; token 0 excluded), as CATS calibrates on held-out data.
    On a non-gated MLP the activation's output is z itself, so cats equals tda there."""

    name = "cats"
    Params = KeepParams
    needs = "gate"
    skips = "up_down"

    def requires(self):
        return ("thresholds",) if self.params.keep < 1.0 else ()

    def calibration_score(self, layer, sample, lm):
        return sample.gate.abs()

    def select(self, layer, z, gate, lm, x=None):
        if self.params.keep >= 1.0:
            return torch.ones_like(gate, dtype=torch.bool)
        return gate.abs() >= self.resource(lm, "thresholds")[layer]
