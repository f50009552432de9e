"""dense: nothing skipped (the reference every method is compared with)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Method


@dataclass(frozen=True)
class DenseParams:
    pass


class Dense(Method):
    """Dense baseline: every neuron kept."""

    name = "dense"
    Params = DenseParams
    skips = "none"

    def select(self, layer, z, gate, lm, x=None):
        return torch.ones_like(z, dtype=torch.bool)
