"""Every forward hook moyu puts on a model.

Hooks are only ever added inside a `with` block whose `finally` removes them, and only while the
model's lock is held, so a failing forward leaves no hook behind and two threads never mix their
activations. The model itself is never edited.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import MoyuError
from .models import LoadedModel

# fn(layer_index, z) -> replacement z or None (keep as is); z is (B, T, d_ff)
MlpFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@dataclass
class Captured:
    """What one capture records, all float32 numpy."""

    z: np.ndarray | None       # (L, T, d_ff): input of down_proj, per layer and token
    attn_received: np.ndarray  # (L, H, T): attention each key token receives, summed over queries
    resid_norm: np.ndarray     # (L, T): L2 norm of the residual stream after each layer
    z_int8: np.ndarray | None = None   # (L, T, d_ff) int8, when captured with int8=True (z is None)
    z_scale: np.ndarray | None = None  # (L, T): per-row scale, z ~= z_int8 * z_scale


def quantize_int8(z: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """Rows of z (N, d_ff) into int8 `q` (N, d_ff) with per-row `scale` (N,) = max|z|/127, so
    z ~= q * scale within scale/2. Done per layer inside the hook, while z is still in cache,
    into the capture's preallocated buffers."""
    torch.maximum(z.amax(dim=1), z.amin(dim=1).neg_(), out=scale).div_(127.0)
    q.copy_(torch.mul(z, scale.clamp_min(1e-30).reciprocal_()[:, None]).round_())


def hook_count(model: torch.nn.Module) -> int:
    """Number of forward hooks and pre-hooks on all submodules (0 when moyu is idle)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@contextmanager
def hooked(lm: LoadedModel, hooks: list[tuple[torch.nn.Module, str, Callable]]) -> Iterator[None]:
    """Hold the model's lock and register (module, 'pre'|'post', fn) hooks; always remove them."""
    with lm.lock:
        handles = []
        try:
            for module, kind, fn in hooks:
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(fn))
                else:
                    handles.append(module.register_forward_hook(fn))
            yield
        finally:
            for h in handles:
                h.remove()


def mlp_hooks(lm: LoadedModel, layers, x: Callable | None = None, gate: Callable | None = None,
              z: Callable | None = None) -> list[tuple[torch.nn.Module, str, Callable]]:
    """Hooks that hand each chosen layer's MLP tensors, always shaped (B, T, ...), to
    `x(i, x)` (the MLP input), `gate(i, g)` (the activation's output) and `z(i, z)` (the input of
    the down projection; a returned tensor replaces it). Found through the model's family
    adapter; where the MLP sees (B*T, d) (OPT) the shape comes from the attention's output."""
    flat = lm.family.flat_mlp
    shape: list = [None]   # (B, T) of the running forward, for flat MLPs

    def bt(t):
        return t.view(*shape[0], t.shape[-1]) if flat else t

    def on_attn(_m, _args, out):
        shape[0] = out[0].shape[:2]

    def on_x(i):
        def pre(_m, args):
            x(i, bt(args[0]))
        return pre

    def on_gate(i):
        def post(_m, _args, out):
            gate(i, bt(out))
        return post

    def on_z(i):
        def pre(_m, args):
            new = z(i, bt(args[0]))
            if new is not None:
                return (new.reshape(args[0].shape),) + tuple(args[1:])
        return pre

    hooks = []
    for i in layers:
        p = lm.parts(i)
        if flat:
            hooks.append((p.attn, "post", on_attn))
        if x is not None:
            hooks.append((p.mlp_in, "pre", on_x(i)))
        if gate is not None:
            hooks.append((p.act, "post", on_gate(i)))
        if z is not None:
            hooks.append((p.down, "pre", on_z(i)))
    return hooks


def mlp_intervention(lm: LoadedModel, fn: MlpFn):
    """Context manager: every layer's z (the input of the down projection) passes through `fn`."""
    return hooked(lm, mlp_hooks(lm, range(lm.n_layers), z=fn))


def method_intervention(lm: LoadedModel, fn: Callable) -> Iterator[None]:
    """Context manager for DA methods: per layer, `fn(i, z, gate, x)` sees z (B, T, d_ff), the
    activation's output act(gate_proj(x)) (act(fc(x)) = z in a non-gated MLP) and the MLP input x
    (both batch 0, detached) and may return a replacement z."""
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def on_x(i, x):
        seen[i] = {"x": x[0].detach()}

    def on_gate(i, g):
        seen[i]["gate"] = g[0].detach()

    def on_z(i, z):
        return fn(i, z, seen[i]["gate"], seen[i]["x"])

    return hooked(lm, mlp_hooks(lm, range(lm.n_layers), x=on_x, gate=on_gate, z=on_z))


class _Recorder:
    """Writes z, attention received and residual norms of the chosen positions of each sequence
    into buffers allocated once for the whole capture (`rows` positions per layer)."""

    def __init__(self, lm: LoadedModel, rows: int, last_only: bool, int8: bool = False):
        self.lm, self.last_only, self.int8 = lm, last_only, int8
        L = lm.n_layers
        self.z = torch.empty(L, rows, lm.d_ff, dtype=torch.int8 if int8 else torch.float32)
        self.scale = torch.empty(L, rows)
        self.attn = torch.empty(L, rows, lm.n_heads)
        self.norm = torch.empty(L, rows)
        self.filled = {kind: [0] * L for kind in ("z", "attn", "norm")}  # rows written so far

    def _rows(self, kind: str, i: int, n: int) -> slice:
        start = self.filled[kind][i]
        self.filled[kind][i] = start + n
        return slice(start, start + n)

    def _pick(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B, T, ...) -> (B*T', ...) with T' = 1 (last position) or T
        t = t[:, -1:] if self.last_only else t
        return t.reshape(-1, *t.shape[2:]).detach().float()

    def hooks(self) -> list[tuple[torch.nn.Module, str, Callable]]:
        out = mlp_hooks(self.lm, range(self.lm.n_layers), z=self._z)
        for i in range(self.lm.n_layers):
            p = self.lm.parts(i)
            out.append((p.attn, "post", self._attn_hook(i)))
            out.append((p.layer, "post", self._norm_hook(i)))
        return out

    def _z(self, i, z):
        z = self._pick(z)
        rows = self._rows("z", i, len(z))
        if self.int8:
            quantize_int8(z, self.z[i, rows], self.scale[i, rows])
        else:
            self.z[i, rows] = z

    def _attn_hook(self, i):
        def post(_m, _args, out):
            w = out[1] if isinstance(out, tuple) and len(out) > 1 else None  # (B, H, Tq, Tk) under eager
            if w is None:
                raise MoyuError(f"{self.lm.family.name} layer {i} returned no attention weights: "
                                "load the model with attn_implementation='eager'")
            if self.last_only:  # the token's own key, seen by its own query only
                rec = w[:, :, -1, -1]                      # (B, H)
            else:
                rec = w[0].sum(dim=1).T                     # (Tk, H)
            self.attn[i, self._rows("attn", i, len(rec))] = rec
        return post

    def _norm_hook(self, i):
        def post(_m, _args, out):
            h = out[0] if isinstance(out, tuple) else out  # (B, T, d)
            norm = self._pick(h.norm(dim=-1, keepdim=True))[:, 0]
            self.norm[i, self._rows("norm", i, len(norm))] = norm
        return post

    def result(self) -> Captured:
        attn = self.attn.permute(0, 2, 1).contiguous().numpy()
        if self.int8:
            return Captured(z=None, attn_received=attn, resid_norm=self.norm.numpy(), z_int8=self.z.numpy(),
                            z_scale=self.scale.numpy())
        return Captured(z=self.z.numpy(), attn_received=attn, resid_norm=self.norm.numpy())


@torch.inference_mode()
def capture(lm: LoadedModel, ids: list[int], mode: str = "sequential",
            prefix_ids: list[int] | None = None, batch: int = 64,
            progress: Callable[[float], None] | None = None, int8: bool = False) -> Captured:
    """Run `ids` through the model and record every token's activations.

    The forward runs the decoder body only (`lm.body`): nothing here reads logits, and the LM
    head (576 x 49152 for smollm2) is an eighth of a 512-token forward.
    sequential: one forward over the whole sequence (prefix ids, if any, are simply not recorded).
    parallel: each token alone after the shared prefix (the paper's Figure 2 control); the
    recorded position is the token itself, its attention figure the weight it gives its own key.
    int8: quantize z per row inside the hook (`quantize_int8`) and return z_int8/z_scale, z None.
    """
    if mode not in ("sequential", "parallel"):
        raise ValueError(f"unknown input mode '{mode}' (sequential or parallel)")
    prefix_ids = list(prefix_ids or [])
    rows = len(prefix_ids) + len(ids) if mode == "sequential" else len(ids)
    rec = _Recorder(lm, rows, last_only=(mode == "parallel"), int8=int8)
    with hooked(lm, rec.hooks()):
        if mode == "sequential":
            lm.body(torch.tensor([prefix_ids + list(ids)]), use_cache=False)
            if progress:
                progress(1.0)
        else:
            for start in range(0, len(ids), batch):
                chunk = ids[start:start + batch]
                x = torch.tensor([prefix_ids + [t] for t in chunk])
                lm.body(x, use_cache=False)
                if progress:
                    progress(min(1.0, (start + len(chunk)) / len(ids)))
    got = rec.result()
    if mode == "sequential" and prefix_ids:
        p = len(prefix_ids)
        cut = (lambda a: None if a is None else a[:, p:])
        got = Captured(cut(got.z), got.attn_received[:, :, p:], got.resid_norm[:, p:],
                       cut(got.z_int8), cut(got.z_scale))
    return got


@contextmanager
def mask_key_attention(lm: LoadedModel, position: int) -> Iterator[None]:
    """Context manager (experiments: heavy-hitter ablation): in every layer, no later query may
    attend to key `position` (the token still sees itself and what precedes it). Replaces each
    attention call's mask by an additive causal mask with that column blocked; batch rows share
    one length, no padding."""

    def pre(_module, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)  # (B, T, d)
        T = h.shape[1]
        neg = torch.finfo(h.dtype).min
        mask = torch.full((T, T), neg, dtype=h.dtype).triu(1)   # (T, T) causal, additive
        if 0 <= position < T:
            mask[position + 1:, position] = neg
        kwargs["attention_mask"] = mask[None, None]
        return args, kwargs

    with lm.lock:
        handles = []
        try:
            for i in range(lm.n_layers):
                handles.append(lm.parts(i).attn.register_forward_pre_hook(pre, with_kwargs=True))
            yield
        finally:
            for hd in handles:
                hd.remove()


@torch.inference_mode()
def capture_mlp_io(lm: LoadedModel, ids: list[int], layers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One sequential forward; for the chosen layers return the MLP input x (len(layers), T, d)
    and z, the input of down_proj (len(layers), T, d_ff), float32 (experiments: router training)."""
    xs: dict[int, torch.Tensor] = {}
    zs: dict[int, torch.Tensor] = {}

    def on_x(i, x):
        xs[i] = x[0].detach().float()

    def on_z(i, z):
        zs[i] = z[0].detach().float()

    with hooked(lm, mlp_hooks(lm, layers, x=on_x, z=on_z)):
        lm.body(torch.tensor([list(ids)]), use_cache=False)
    return (torch.stack([xs[i] for i in layers]).numpy(), torch.stack([zs[i] for i in layers]).numpy())


def block_linears(lm: LoadedModel, i: int) -> dict[str, torch.nn.Module]:
    """The linears of block i by role: the attention module's children with a 2-D weight, named
    without "_proj" (q, k, v, o on Llama-like families), and the MLP's "gate", "up" and "down"
    (a fused [gate; up] module (phi3) under "gate_up")."""
    fam, layer = lm.family, lm.layers[i]
    out = {name.removesuffix("_proj"): m for name, m in lm.parts(i).attn.named_children()
           if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2}
    gate = reduce(getattr, fam.gate.split("."), layer) if fam.gate else None
    up = reduce(getattr, fam.up.split("."), layer)
    if gate is up:
        out["gate_up"] = up
    else:
        out.update({"gate": gate, "up": up} if gate is not None else {"up": up})
    out["down"] = lm.parts(i).down
    return out


def input_intervention(lm: LoadedModel, fn: Callable, exclude: tuple[str, ...] = ()):
    """Context manager (TEAL): the input of every linear of every block passes through
    `fn(layer, role, x)` (x (B, T, d_in), roles of `block_linears`), which may return a
    replacement; roles in `exclude` are left alone."""
    def pre(i, role):
        def hook(_m, args):
            new = fn(i, role, args[0])
            if new is not None:
                return (new,) + tuple(args[1:])
        return hook

    hooks = [(m, "pre", pre(i, role)) for i in range(lm.n_layers)
             for role, m in block_linears(lm, i).items() if role not in exclude]
    return hooked(lm, hooks)


@contextmanager
def block_inputs(lm: LoadedModel, record: Callable[[int, tuple, dict], None]) -> Iterator[None]:
    """Context manager: each decoder layer's call, positional and keyword arguments (hidden
    states first), handed to `record(layer, args, kwargs)` before it runs; lets calibration run
    one block again alone (`layer(*args, **kwargs)`)."""
    def pre(i):
        def hook(_m, args, kwargs):
            record(i, args, kwargs)
        return hook

    with lm.lock:
        handles = []
        try:
            for i in range(lm.n_layers):
                handles.append(lm.layers[i].register_forward_pre_hook(pre(i), with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()
