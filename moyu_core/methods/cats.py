"""cats: threshold on |act(gate_proj(x))| per layer (CATS, Lee et al. 2024)."""
from __future__ import annotations

import torch

from .base import KeepParams, Method
from .tda import layer_threshold


class Cats(Method):
    """CATS (Lee et al. 2024): keep neuron i when |act(gate_proj(x))_i| >= t_l; the gate stays
    dense. Choice: t_l = per-layer (1-keep) quantile of the gate activation on the given tokens
    (token 0 excluded); disjoint-text calibration not implemented yet."""

    name = "cats"
    Params = KeepParams

    def select(self, layer, z, gate, lm):
        if self.params.keep >= 1.0:
            return torch.ones_like(z, dtype=torch.bool)
        a = gate.abs()
        return a >= layer_threshold(a, self.params.keep)
