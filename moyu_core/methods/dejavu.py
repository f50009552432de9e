"""dejavu: RODA router predicting active neurons from the layer input (Liu et al. 2023)."""
from __future__ import annotations

import torch

from ..errors import MoyuError
from .base import KeepParams, Method


class Dejavu(Method):
    """DejaVu (Liu et al. 2023): per layer a predictor Linear(d, r) -> Linear(r, d_ff) trained on
    stored activations keeps the top-k of its logits. Router training is NOT implemented yet:
    keep 1.0 keeps everything, lower keep raises MoyuError."""

    name = "dejavu"
    Params = KeepParams

    def select(self, layer, z, gate, lm):
        if self.params.keep >= 1.0:
            return torch.ones_like(z, dtype=torch.bool)
        raise MoyuError("dejavu: no trained router yet (router training is not implemented)")
