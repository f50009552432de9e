"""static: the same neurons for every input (static-activation baseline)."""
from __future__ import annotations

import torch

from .base import KeepParams, Method, topk_mask


class Static(Method):
    """Static baseline (MOYU paper's comparison point): keep the top keep*d_ff neurons by the
    weight magnitude ||W_gate row|| * ||W_up row||, identical for every token and input."""

    name = "static"
    Params = KeepParams
    sequence_level = True

    def select(self, layer, z, gate, lm, x=None):
        mlp = lm.layers[layer].mlp
        s = mlp.gate_proj.weight.detach().float().norm(dim=1) * mlp.up_proj.weight.detach().float().norm(dim=1)
        return topk_mask(s, self.params.keep).expand(z.shape[0], -1).clone()
