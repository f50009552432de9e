"""Where the parts of a decoder-only LM sit, one adapter per architecture family.

moyu touches five places per layer, and hooks find them here and nowhere else:
the attention module (its forward output[1] holds the eager attention weights (B, H, Tq, Tk)),
the MLP input module (a forward pre-hook sees x), the activation module (a forward post-hook sees
act(gate_proj(x)), or act(fc(x)) in a non-gated MLP), and the down projection (a forward pre-hook
sees z, its input, and may replace it). In a non-gated MLP z is the activation's output, and the
"gate" a method reads is that same tensor. `mlp_weights` gives every family's MLP weights in one
layout: gate and up (d_ff, d), down (d, d_ff), float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import MoyuError


@dataclass(frozen=True)
class MlpWeights:
    """One layer's MLP in the canonical layout: out = down @ (act(gate x) * up x) (gated) or
    down @ act(up x + up_bias) + down_bias (non-gated); float32, detached."""

    gate: torch.Tensor | None              # (d_ff, d); None in a non-gated MLP
    up: torch.Tensor                       # (d_ff, d): up_proj, or fc1 in a non-gated MLP
    down: torch.Tensor                     # (d, d_ff)
    gate_bias: torch.Tensor | None = None  # (d_ff,)
    up_bias: torch.Tensor | None = None    # (d_ff,)
    down_bias: torch.Tensor | None = None  # (d,)

    @property
    def biased(self) -> bool:
        return any(b is not None for b in (self.gate_bias, self.up_bias, self.down_bias))


@dataclass(frozen=True)
class LayerParts:
    """The modules of one decoder layer that moyu hooks."""

    layer: torch.nn.Module
    attn: torch.nn.Module     # output[1]: attention weights (B, H, Tq, Tk) under eager attention
    mlp_in: torch.nn.Module   # pre-hook args[0]: the MLP input x
    act: torch.nn.Module      # post-hook output: act(gate_proj(x)), or act(fc(x)) when not gated
    down: torch.nn.Module     # pre-hook args[0]: z, the input of the down projection


@dataclass(frozen=True)
class Family:
    """Attribute paths (dotted) of one architecture family. `body` is taken from the causal LM,
    `layers` from the body, the others from a decoder layer."""

    name: str
    body: str
    layers: str
    attn: str
    mlp_in: str
    act: str
    up: str
    down: str
    gate: str | None = None      # None: non-gated MLP
    fused_gate_up: bool = False  # `gate` holds [gate; up] rows in one matrix (phi3)
    conv1d: bool = False         # weights stored (in, out): GPT-2's Conv1D
    mlp: str | None = "mlp"      # the MLP module a decoder may swap; None where fc1/fc2 sit on the layer
    flat_mlp: bool = False       # the MLP sees (B*T, d) rather than (B, T, d) (OPT)

    @property
    def gated(self) -> bool:
        return self.gate is not None

    def decoder(self, model: torch.nn.Module) -> torch.nn.Module:
        return _get(model, self.body)

    def layer_list(self, body: torch.nn.Module) -> torch.nn.ModuleList:
        return _get(body, self.layers)

    def parts(self, layer: torch.nn.Module) -> LayerParts:
        return LayerParts(layer, _get(layer, self.attn), _get(layer, self.mlp_in), _get(layer, self.act),
                          _get(layer, self.down))

    def mlp_weights(self, layer: torch.nn.Module) -> MlpWeights:
        up_m, down_m = _get(layer, self.up), _get(layer, self.down)
        up, down = _weight(up_m, self.conv1d), _weight(down_m, self.conv1d)
        gate = gate_bias = None
        up_bias = _bias(up_m)
        if self.fused_gate_up:  # [gate; up] rows
            gate, up = up.chunk(2, dim=0)
            gate_bias, up_bias = up_bias.chunk(2) if up_bias is not None else (None, None)
        elif self.gate is not None:
            gate_m = _get(layer, self.gate)
            gate, gate_bias = _weight(gate_m, self.conv1d), _bias(gate_m)
        return MlpWeights(*map(_plain, (gate, up, down, gate_bias, up_bias, _bias(down_m))))

    def mlp_parameters(self, model: torch.nn.Module) -> set[int]:
        """ids of every layer's MLP parameters (gate, up, down, biases) in the causal LM `model`."""
        paths = {self.up, self.down} | ({self.gate} if self.gate else set())
        return {id(p) for layer in self.layer_list(self.decoder(model)) for path in paths
                for p in _get(layer, path).parameters()}


def _get(obj, path: str):
    for attr in path.split("."):
        obj = getattr(obj, attr)
    return obj


def _weight(module: torch.nn.Module, conv1d: bool) -> torch.Tensor:
    """(out, in) whatever the module stores."""
    return module.weight.T if conv1d else module.weight


def _bias(module: torch.nn.Module) -> torch.Tensor | None:
    return getattr(module, "bias", None)


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float().contiguous()


def _gated(name: str, **kw) -> Family:
    parts = dict(body="model", layers="layers", attn="self_attn", mlp_in="mlp", act="mlp.act_fn",
                 gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj")
    return Family(name, **{**parts, **kw})


FAMILIES: dict[str, Family] = {f.name: f for f in [
    _gated("llama"),
    _gated("qwen2"),
    _gated("qwen3"),
    _gated("mistral"),
    _gated("gemma2"),
    _gated("gemma3_text"),
    _gated("phi3", act="mlp.activation_fn", gate="mlp.gate_up_proj", up="mlp.gate_up_proj",
           fused_gate_up=True),
    Family("gpt2", body="transformer", layers="h", attn="attn", mlp_in="mlp", act="mlp.act",
           up="mlp.c_fc", down="mlp.c_proj", conv1d=True),
    Family("opt", body="model.decoder", layers="layers", attn="self_attn", mlp_in="fc1",
           act="activation_fn", up="fc1", down="fc2", mlp=None, flat_mlp=True),
    Family("gpt_neox", body="gpt_neox", layers="layers", attn="attention", mlp_in="mlp", act="mlp.act",
           up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h"),
]}


def family_of(model_type: str | None) -> Family:
    """The adapter for a config's `model_type`; a one-line MoyuError for any other family."""
    if model_type not in FAMILIES:
        raise MoyuError(f"model family '{model_type}' is not supported; supported families: "
                        f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]
