"""DA methods behind one registry: name -> class; `make(name, **params)`; `keep_masks`."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import MoyuError
from .base import Method, keep_count
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


@torch.inference_mode()
def method_inputs(lm, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the methods that do not decide from z read, for every layer and token of a prompt,
    from one dense forward (decoder body, SDPA): gate = act(gate_proj(x)) (L, T, d_ff) and the
    MLP input x (L, T, d), float32. With the stored z it lets `keep_masks_from` draw any method's
    masks, at any parameters, without another forward."""
    from ..hooks import method_intervention
    from ..models import fused_attention
    gate = torch.empty(lm.n_layers, len(ids), lm.d_ff)
    x = torch.empty(lm.n_layers, len(ids), lm.layers[0].mlp.gate_proj.in_features)

    def grab(i, z, g, xi):
        gate[i], x[i] = g, xi

    with fused_attention(lm), method_intervention(lm, grab):
        lm.body(torch.tensor([ids]), use_cache=False)
    return gate, x


def keep_masks_from(lm, method: Method, layer_z=None, inputs=None) -> np.ndarray | None:
    """bool (L, T, d_ff) with no forward: from already-captured dense z (`layer_z(layer)` ->
    (T, d_ff), e.g. the store's) for methods that decide from z, from `method_inputs(...)` =
    (gate, x) for those that read the gate activation or the MLP input; None when what the
    method needs was not given."""
    needs = getattr(method, "needs", None)
    if needs == "z" and layer_z is not None:
        def args(i):
            return torch.as_tensor(np.array(layer_z(i), dtype=np.float32)), None, None
    elif needs in ("gate", "x") and inputs is not None:
        def args(i):
            return None, inputs[0][i], inputs[1][i]
    else:
        return None
    method.prepare(lm)
    with torch.inference_mode():
        masks = []
        for i in range(lm.n_layers):
            z, gate, x = args(i)
            masks.append(method.select(i, z, gate, lm, x).numpy())
        return np.stack(masks)


__all__ = ["REGISTRY", "make", "keep_masks", "keep_masks_from", "method_inputs", "masked_logits", "Method", "keep_count"]
