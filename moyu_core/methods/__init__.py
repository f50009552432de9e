"""DA methods behind one registry: name -> class; `make(name, **params)`; `keep_masks`."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import MoyuError
from .base import Method
from .cats import Cats
from .cett import Cett
from .dejavu import Dejavu
from .dense import Dense
from .griffin import Griffin
from .moe import Moe
from .oracle import Oracle
from .static import Static
from .tda import Tda

REGISTRY: dict[str, type] = {c.name: c for c in (Dense, Oracle, Tda, Cats, Cett, Dejavu, Griffin, Moe, Static)}


def make(name: str, **params) -> Method:
    """Build a method by name; unknown name or parameter -> MoyuError listing the valid ones."""
    if name not in REGISTRY:
        raise MoyuError(f"unknown method {name!r}; valid: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    valid = [f.name for f in dataclasses.fields(cls.Params)]
    bad = [k for k in params if k not in valid]
    if bad:
        raise MoyuError(f"method {name!r} has no parameter {bad[0]!r}; valid: {', '.join(valid) or '(none)'}")
    try:
        p = cls.Params(**params)
    except (TypeError, ValueError) as e:
        raise MoyuError(f"bad parameters for {name!r}: {e}") from None
    return cls(p)


def _selecting_forward(lm, method: Method, ids: list[int], forward, apply: bool):
    """forward(ids tensor) with the method deciding at every layer; apply: its masks multiply
    z (else the forward stays dense). Returns the forward's output and masks bool (L, T, d_ff)."""
    from ..hooks import method_intervention
    masks: list[np.ndarray | None] = [None] * lm.n_layers

    def on_z(i, z, gate, x):
        m = method.select(i, z[0].detach(), gate, lm, x)     # (T, d_ff)
        masks[i] = m.numpy()
        return z * m.to(z.dtype)[None] if apply else None

    method.prepare(lm)
    with method_intervention(lm, on_z):
        out = forward(torch.tensor([ids]))
    return out, np.stack(masks)


@torch.inference_mode()
def masked_logits(lm, method: Method, ids: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """One forward of ids with method's masks applied to z at every layer.
    Returns logits (T, vocab) and masks bool (L, T, d_ff)."""
    out, masks = _selecting_forward(lm, method, ids, lambda x: lm.model(x, use_cache=False), apply=True)
    return out.logits[0].float(), masks


@torch.inference_mode()
def keep_masks(lm, method: Method, ids: list[int]) -> np.ndarray:
    """bool (L, T, d_ff): neurons the method keeps for each token of the prompt, decided on the
    dense forward (griffin's prompt runs dense; drawn against the oracle on the same z). The
    forward needs no logits and no attention weights: the decoder body with SDPA attention."""
    from ..models import fused_attention

    with fused_attention(lm):
        return _selecting_forward(lm, method, ids, lambda x: lm.body(x, use_cache=False), apply=False)[1]


def keep_masks_from_z(lm, method: Method, layer_z) -> np.ndarray | None:
    """bool (L, T, d_ff) decided from already-captured dense z (`layer_z(layer)` -> (T, d_ff)
    float32, e.g. the store's) with no forward, for methods that decide from z alone
    (`needs == "z"`); None for methods that need the gate activation or the MLP input."""
    if getattr(method, "needs", None) != "z":
        return None
    method.prepare(lm)
    with torch.inference_mode():
        return np.stack([method.select(i, torch.from_numpy(np.ascontiguousarray(layer_z(i), dtype=np.float32)),
                                       None, lm, None).numpy() for i in range(lm.n_layers)])


__all__ = ["REGISTRY", "make", "keep_masks", "keep_masks_from_z", "masked_logits", "Method"]
