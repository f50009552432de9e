"""What a DA method is: a frozen dataclass of parameters and a rule that decides which MLP
neurons to keep, from what it is allowed to see. Nothing here runs the model or reads the store:
what a method needs from outside (calibrated thresholds, a trained router, data derived from the
weights) it declares in `requires()`, and `moyu_core.preparation.prepare` binds it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import kernels
from ..errors import MoyuError
from ..keep import keep_count

RESOURCES = ("thresholds", "router", "derived")
# What an executed path can leave unread, by what a method decides from (DESIGN.md, speed protocol):
# the rows of W_down (decides from z), up and down (from the gate), the whole MLP (a router on x,
# or one mask per sequence), the input channels of every linear of the block (TEAL).
SKIPS = ("none", "down", "up_down", "mlp", "all_linear")


@dataclass(frozen=True)
class KeepParams:
    keep: float = 0.5  # fraction of d_ff neurons kept

    def __post_init__(self):
        if not 0.0 < float(self.keep) <= 1.0:
            raise MoyuError(f"keep must be in (0, 1], got {self.keep}")


@dataclass(frozen=True)
class Sample:
    """What a calibration pass saw at one layer, token 0 of each chunk left out."""

    z: torch.Tensor      # (N, d_ff) input of down_proj
    gate: torch.Tensor   # (N, d_ff) act(gate_proj(x)); z itself for non-gated MLPs
    # methods that skip input channels of every linear (skips "all_linear") also get, by role
    # ("q", "k", "v", "o", "gate", "up", "down"), each linear's input (N, d_in) and its number of
    # weights, and block_error({role: threshold}) -> the L2 error of the block's output with
    # those inputs thresholded, against the dense block, on calibration tokens
    inputs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    block_error: Callable[[dict], float] | None = None


class Method:
    """select(layer, z (T, d_ff), gate (T, d_ff), lm, x (T, d) = the MLP input) -> bool mask
    (T, d_ff) of kept neurons. `sequence_level` methods decide once from the prompt's rows and
    apply that one mask to every later token; the others decide per token from its own row.
    `needs` says what a per-token decision reads: "z", "gate" (z may be None) or "x" (z and gate
    may be None)."""

    name = "base"
    Params: type = KeepParams
    sequence_level = False
    needs = "z"
    skips = "down"                     # one of SKIPS: sets the method's speed-up ceiling
    derived_cache: str | None = None   # folder under the cache where `derive` results are kept

    def __init__(self, params):
        self.params = params
        self._bound: tuple[str, dict] | None = None

    def describe(self) -> dict:
        return {"name": self.name, "params": dataclasses.asdict(self.params),
                "doc": (type(self).__doc__ or "").strip().splitlines()[0]}

    # ---- what the method needs from outside methods/ ------------------------------------------

    def requires(self) -> tuple[str, ...]:
        """Resources (of RESOURCES) `prepare` must bind before `select` runs, at these params."""
        return ()

    def calibration_score(self, layer: int, sample: Sample, lm) -> torch.Tensor:
        """The score whose per-layer (1 - keep) quantile on calibration text is the threshold."""
        raise NotImplementedError

    def calibrate(self, layer: int, sample: Sample, lm) -> float:
        """The layer's threshold from calibration tokens (methods requiring "thresholds")."""
        score = self.calibration_score(layer, sample, lm).flatten()[:4_000_000]
        return float(torch.quantile(score, 1.0 - float(self.params.keep)))

    def derive_key(self) -> str:
        """What `derive`'s result depends on besides the model's weights."""
        return ""

    def derive(self, lm) -> Any:
        """Data computed from the weights alone, once per model (clusters, norms)."""
        raise NotImplementedError

    def dump_derived(self, data) -> Any:
        """`derive`'s result as JSON (methods with a `derived_cache`)."""
        raise NotImplementedError

    def load_derived(self, lm, saved) -> Any:
        """The inverse of `dump_derived`; ValueError when `saved` does not fit this model."""
        raise NotImplementedError

    def bind(self, lm, **resources) -> None:
        self._bound = (lm.fingerprint, resources)

    def resource(self, lm, name: str):
        if self._bound is None or self._bound[0] != lm.fingerprint or name not in self._bound[1]:
            raise MoyuError(f"{self.name}: not prepared for {lm.name}; call "
                            "moyu_core.preparation.prepare(lm, method) first")
        return self._bound[1][name]

    # ---- the decision ------------------------------------------------------------------------

    def select(self, layer: int, z: torch.Tensor, gate: torch.Tensor, lm, x: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def topk_mask(score: torch.Tensor, keep: float, absolute: bool = False) -> torch.Tensor:
    """Bool mask keeping the top `keep_count(n, keep)` entries of the last dim of score (of
    |score| when `absolute`); ties at the k-th value keep the lowest indices (CPU float32:
    `row_stats.cpp`'s radix select; other tensors, or where the kernels cannot be built:
    torch.topk, which keeps any k of the tied)."""
    n = score.shape[-1]
    k = keep_count(n, keep)
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    if score.device.type == "cpu" and score.dtype == torch.float32 and score.numel():
        try:
            ops = kernels.row_ops()
        except MoyuError:
            ops = None
        if ops is not None:
            return ops.topk_mask_rows(score.detach().reshape(-1, n).contiguous(), k, absolute).reshape(score.shape)
    idx = (score.abs() if absolute else score).topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, True)
