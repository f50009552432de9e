"""griffin: training-free sequence-level top-k by the flocking statistic (Dong et al. 2024).

    s_j = || Z[:, j] / ||Z[t, :]|| ||_2 over prompt tokens t     Z: (T, d_ff) -> s: (d_ff,)
    keep topk(s, keep * d_ff) for every generated token
"""
from __future__ import annotations

import numpy as np
import torch

from .base import KeepParams, Method, topk_mask


def flocking_score(z) -> torch.Tensor:
    """s_j: rows L2-normalised, then the L2 norm over tokens. z: (T, d_ff) array or tensor -> (d_ff,)."""
    z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).float()
    zn = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)   # (T, d_ff)
    return zn.norm(dim=0)                                     # (d_ff,)


class Griffin(Method):
    """GRIFFIN (Dong et al. 2024): the prompt runs dense; per layer keep topk(flocking_score of
    the prompt's z, keep*d_ff) for every token. Choice: where masks are drawn for a prompt alone
    (no generation), the prompt is the whole given sequence, so every token shares one mask;
    keep 1.0 keeps all neurons."""

    name = "griffin"
    Params = KeepParams
    sequence_level = True
    skips = "mlp"

    def select(self, layer, z, gate, lm, x=None):
        m = topk_mask(flocking_score(z), self.params.keep)   # (d_ff,)
        return m.expand(z.shape[0], -1).clone()
