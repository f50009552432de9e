"""static: the same neurons for every input (static-activation baseline)."""
from __future__ import annotations

from .base import KeepParams, Method, topk_mask


class Static(Method):
    """Static baseline (MOYU paper's comparison point): keep the top keep*d_ff neurons by the
    weight magnitude ||W_gate row|| * ||W_up row||, identical for every token and input.
    Choice for non-gated MLPs (no gate): ||W_up row|| * ||W_down column||."""

    name = "static"
    Params = KeepParams
    sequence_level = True
    skips = "mlp"

    def requires(self):
        return ("derived",)

    def derive(self, lm):
        """The magnitude score of every neuron, per layer (d_ff,)."""
        out = []
        for i in range(lm.n_layers):
            w = lm.mlp_weights(i)
            other = w.gate.norm(dim=1) if w.gate is not None else w.down.norm(dim=0)
            out.append(other * w.up.norm(dim=1))
        return out

    def select(self, layer, z, gate, lm, x=None):
        s = self.resource(lm, "derived")[layer]
        return topk_mask(s, self.params.keep).expand(z.shape[0], -1).clone()
