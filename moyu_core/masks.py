"""Which neurons a method keeps for a prompt, as bool masks (L, T, d_ff), and where they are
drawn from: the stored activations (methods deciding from z), one dense forward's gate
activations and MLP inputs (methods reading those), or a forward with the method's hooks."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .hooks import method_intervention
from .methods import Method
from .models import fused_attention
from .preparation import prepare

SOURCES = ("stored z", "method inputs", "forward")


def _selecting_forward(lm, method: Method, ids: list[int], forward, apply: bool):
    """forward(ids tensor) with the method deciding at every layer; apply: its masks multiply
    z (else the forward stays dense). Returns the forward's output and masks bool (L, T, d_ff)."""
    masks: list[np.ndarray | None] = [None] * lm.n_layers

    def on_z(i, z, gate, x):
        m = method.select(i, z[0].detach(), gate, lm, x)     # (T, d_ff)
        masks[i] = m.numpy()
        return z * m.to(z.dtype)[None] if apply else None

    prepare(lm, method)
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
    with fused_attention(lm):
        return _selecting_forward(lm, method, ids, lambda x: lm.body(x, use_cache=False), apply=False)[1]


@torch.inference_mode()
def method_inputs(lm, ids: list[int], progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the methods that do not decide from z read, for every layer and token of a prompt,
    from one dense forward (decoder body, SDPA): gate = act(gate_proj(x)) (L, T, d_ff) and the
    MLP input x (L, T, d), float32. With the stored z it lets `keep_masks_from` draw any method's
    masks, at any parameters, without another forward. `progress(fraction, message)` after each
    layer."""
    gate = torch.empty(lm.n_layers, len(ids), lm.d_ff)
    x = torch.empty(lm.n_layers, len(ids), lm.d_model)

    def grab(i, z, g, xi):
        gate[i], x[i] = g, xi
        if progress:
            progress((i + 1) / lm.n_layers, f"layer {i + 1}/{lm.n_layers}")

    with fused_attention(lm), method_intervention(lm, grab):
        lm.body(torch.tensor([ids]), use_cache=False)
    return gate, x


def keep_masks_from(lm, method: Method, layer_z=None, inputs=None, layers=None) -> np.ndarray | None:
    """bool (L, T, d_ff) with no forward: from already-captured dense z (`layer_z(layer)` ->
    (T, d_ff), e.g. the store's) for methods that decide from z, from `method_inputs(...)` =
    (gate, x) for those that read the gate activation or the MLP input; None when what the
    method needs was not given. `layers` (indices) draws only those, stacked in that order."""
    if method.needs == "z" and layer_z is not None:
        def args(i):
            return torch.as_tensor(np.array(layer_z(i), dtype=np.float32)), None, None
    elif method.needs in ("gate", "x") and inputs is not None:
        def args(i):
            return None, inputs[0][i], inputs[1][i]
    else:
        return None
    prepare(lm, method)
    with torch.inference_mode():
        masks = []
        for i in range(lm.n_layers) if layers is None else layers:
            z, gate, x = args(i)
            masks.append(method.select(i, z, gate, lm, x).numpy())
        return np.stack(masks)


def source(rec, method: Method) -> str:
    """Where a stored run's masks for `method` come from (one of SOURCES): a dense sequential
    run's stored z serves methods deciding from z, its method inputs the others; any other run
    (parallel input, a method run) needs a forward over its tokens as one sequence."""
    if rec.mode != "sequential" or rec.method != "dense":
        return "forward"
    return "stored z" if method.needs == "z" else "method inputs"


def run_masks(lm, reader, run_id: str, method: Method,
              inputs: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
              layer_z: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """bool (L, T, d_ff): the method's masks on a stored run, from `source(...)`. `inputs`
    returns the run's `method_inputs` (e.g. from a background job) and `layer_z(layer)` its
    stored z (e.g. from a cache); both are read from `reader` / computed here when None."""
    rec = reader.run(run_id)
    ids = [i for i, _ in reader.tokens(run_id)]
    where = source(rec, method)
    if where == "stored z":
        return keep_masks_from(lm, method, layer_z=layer_z or (lambda i: reader.activations(run_id, i)))
    if where == "method inputs":
        return keep_masks_from(lm, method, inputs=inputs() if inputs is not None else method_inputs(lm, ids))
    return keep_masks(lm, method, ids)
