"""dejavu: RODA router predicting active neurons from the layer input (Liu et al. 2023)."""
from __future__ import annotations

import torch

from ..errors import MoyuError
from .base import KeepParams, Method, topk_mask


class Dejavu(Method):
    """DejaVu (Liu et al. 2023, "Deja Vu: Contextual Sparsity for Efficient LLMs at Inference
    Time"): per layer a predictor Linear(d, r) -> Linear(r, d_ff), no bias, reads the MLP input x
    and keeps the top-k (k = keep * d_ff) of its logits for each token. Choices: the router is
    trained by `moyu_core.router.train` on activation history in the store and bound by
    `prepare` (any object with `logits(layer, x (T, d)) -> (T, d_ff)`); it sees x of the same
    layer (the paper looks one layer ahead to overlap prediction with compute, which only
    matters for executed timings); top-k rather than a threshold so that keep is the exact kept
    fraction, as for the other methods; keep 1.0 keeps everything without needing a router."""

    name = "dejavu"
    Params = KeepParams
    needs = "x"
    skips = "mlp"

    def requires(self):
        return ("router",) if self.params.keep < 1.0 else ()

    def select(self, layer, z, gate, lm, x=None):
        if x is None:
            raise MoyuError("dejavu needs the MLP input x; this caller passed none")
        if self.params.keep >= 1.0:
            return torch.ones(x.shape[0], lm.d_ff, dtype=torch.bool)
        return topk_mask(self.resource(lm, "router").logits(layer, x), self.params.keep)
