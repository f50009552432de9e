"""moe-oracle: MoEfication's clusters with the exact expert choice (an upper bound for its routers)."""
from __future__ import annotations

import torch

from ..errors import MoyuError
from .moe import Moe


class MoeOracle(Moe):
    """MoEfication's experts (the clusters of `moe`, same cache) chosen by the exact gate: an
    expert's score is the sum of |act(gate_proj(x))| over its neurons, and the top keep*E experts
    are kept. Reading the dense gate is what no router can do, so this is the upper bound of any
    router over these clusters; the executed path computes the gate densely, then up and down for
    the kept experts' neurons."""

    name = "moe-oracle"
    needs = "gate"
    skips = "up_down"

    def expert_scores(self, layer, z, gate, lm, x):
        if gate is None:
            raise MoyuError("moe-oracle needs the gate activations; this caller passed none")
        a = self.resource(lm, "derived")[layer].assign                     # (d_ff,)
        return torch.zeros(gate.shape[0], self.params.experts).index_add_(1, a, gate.abs().float())
