"""oracle: per token, the true top-k of |z| (upper bound for every method)."""
from __future__ import annotations

from .base import KeepParams, Method, topk_mask


class Oracle(Method):
    """Oracle top-k of |z| per token (MOYU paper's upper bound); ties broken by torch.topk."""

    name = "oracle"
    Params = KeepParams

    def select(self, layer, z, gate, lm, x=None):
        return topk_mask(z, self.params.keep, absolute=True)
