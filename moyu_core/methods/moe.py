"""moe: training-free MoEfication (Zhang et al. 2022): neurons clustered into experts, a router on
the MLP input picks the experts of each token.

    experts: balanced k-means of the L2-normalised gate_proj rows, E clusters of d_ff / E neurons
    c_e = mean of expert e's normalised gate_proj rows          C: (E, d)
    score = x C^T, keep the top keep * E experts per token       x: (T, d) -> (T, E)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MoyuError
from ..keep import keep_count
from .base import Method


@dataclass(frozen=True)
class MoeParams:
    keep: float = 0.5     # fraction of experts kept per token
    experts: int = 32     # number of experts E (d_ff must be divisible by E)

    def __post_init__(self):
        if not 0.0 < float(self.keep) <= 1.0:
            raise MoyuError(f"keep must be in (0, 1], got {self.keep}")
        if not 1 <= int(self.experts) <= 4096:
            raise MoyuError("experts must be in [1, 4096]")


def balanced_kmeans(rows: torch.Tensor, experts: int, iters: int = 8) -> torch.Tensor:
    """Assign each of n rows (normalised) to one of E equal-size clusters -> (n,) expert id.
    Balanced by greedy assignment in order of best similarity, capacity n/E per expert."""
    g = torch.Generator().manual_seed(0)
    n = rows.shape[0]
    cap = n // experts
    cent = rows[torch.randperm(n, generator=g)[:experts]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        order = (rows @ cent.T).flatten().argsort(descending=True)   # over (row, expert) pairs
        got, load, left = [-1] * n, [0] * experts, n                 # plain lists: a tight loop
        for f in order.tolist():
            i, e = divmod(f, experts)
            if got[i] < 0 and load[e] < cap:
                got[i] = e
                load[e] += 1
                left -= 1
                if not left:
                    break
        assign = torch.tensor(got)
        for e in range(experts):
            cent[e] = rows[assign == e].mean(0)
    return assign


@dataclass(frozen=True)
class Experts:
    """One layer's clustering: the expert of every neuron, each expert's neurons, and the
    router's centroids."""

    assign: torch.Tensor     # (d_ff,) expert id of each neuron
    members: torch.Tensor    # (E, d_ff / E) neuron ids of each expert, ascending
    centroids: torch.Tensor  # (E, d) mean of the expert's L2-normalised gate_proj rows


def _rows(lm, i: int) -> torch.Tensor:
    """The rows the clustering reads: gate_proj (up_proj where the MLP has no gate), normalised."""
    w = lm.mlp_weights(i)
    rows = w.gate if w.gate is not None else w.up
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def experts_of(lm, i: int, assign: torch.Tensor, experts: int) -> Experts:
    rows = _rows(lm, i)
    members = assign.argsort(stable=True).view(experts, -1)
    return Experts(assign, members.contiguous(), rows[members].mean(1).contiguous())


class Moe(Method):
    """MoEfication (Zhang et al. 2022), training-free, with its similarity router. Choices:
    neurons of each layer are clustered into E experts by balanced k-means on L2-normalised
    gate_proj rows (up_proj rows where the MLP has no gate; clusters cached on disk per model
    and E, shared with moe-oracle); each expert is represented by the mean of its neurons'
    normalised gate_proj rows, and a token's expert score is x . centroid (x = the MLP input),
    MoEfication's "similarity selection" (its alternative, a trained MLP router, is not used); the
    top keep*E experts are kept. The router reads x only, so the executed path computes gate, up
    and down for the kept experts' neurons alone. `moe-oracle` chooses experts from the exact gate
    instead: the upper bound of any router over these clusters."""

    name = "moe"
    Params = MoeParams
    needs = "x"
    skips = "mlp"
    derived_cache = "moe"

    def requires(self):
        return ("derived",) if self.params.keep < 1.0 else ()

    def derive_key(self) -> str:
        return f"E{self.params.experts}"

    def derive(self, lm) -> list[Experts]:
        """Each layer's clustering (`Experts`)."""
        out = []
        for i in range(lm.n_layers):
            rows = _rows(lm, i)
            if rows.shape[0] % self.params.experts:
                raise MoyuError(f"d_ff {rows.shape[0]} is not divisible by experts={self.params.experts}")
            out.append(experts_of(lm, i, balanced_kmeans(rows, self.params.experts), self.params.experts))
        return out

    def dump_derived(self, data):
        return [e.assign.tolist() for e in data]

    def load_derived(self, lm, saved):
        E = self.params.experts
        assign = [torch.tensor(a, dtype=torch.long) for a in saved]
        if len(assign) != lm.n_layers or any(
                a.shape != (lm.d_ff,) or not bool(((a >= 0) & (a < E)).all())
                or not bool((torch.bincount(a, minlength=E) == lm.d_ff // E).all()) for a in assign):
            raise ValueError("not this model's clusters")
        return [experts_of(lm, i, a, E) for i, a in enumerate(assign)]

    def expert_scores(self, layer: int, z, gate, lm, x) -> torch.Tensor:
        """(T, E): x . centroid_e."""
        if x is None:
            raise MoyuError("moe needs the MLP input x; this caller passed none")
        return x.float() @ self.resource(lm, "derived")[layer].centroids.T

    def select(self, layer, z, gate, lm, x=None):
        rows = next(t for t in (x, gate, z) if t is not None).shape[0]
        if self.params.keep >= 1.0:
            return torch.ones(rows, lm.d_ff, dtype=torch.bool)
        score = self.expert_scores(layer, z, gate, lm, x)                       # (T, E)
        top = score.topk(keep_count(self.params.experts, self.params.keep), dim=-1).indices
        keep_e = torch.zeros(rows, self.params.experts, dtype=torch.bool).scatter_(1, top, True)
        assign = self.resource(lm, "derived")[layer].assign
        return keep_e.gather(1, assign.expand(rows, -1))                        # (T, d_ff)
