"""moe: training-free MoEfication (Zhang et al. 2022): neurons clustered into experts."""
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


class Moe(Method):
    """MoEfication (Zhang et al. 2022), training-free: neurons of each layer clustered into E
    experts by balanced k-means on L2-normalised gate_proj rows (up_proj rows where the MLP has
    no gate); the router scores an expert by the sum of |act(gate_proj(x))| over its neurons
    (exact gate instead of a learned router); keep the top keep*E experts per token."""

    name = "moe"
    Params = MoeParams
    needs = "gate"
    derived_cache = "moe"

    def requires(self):
        return ("derived",) if self.params.keep < 1.0 else ()

    def derive_key(self) -> str:
        return f"E{self.params.experts}"

    def derive(self, lm) -> list[torch.Tensor]:
        """Expert id of every neuron (d_ff,), per layer."""
        out = []
        for i in range(lm.n_layers):
            w = lm.mlp_weights(i)
            rows = w.gate if w.gate is not None else w.up
            if rows.shape[0] % self.params.experts:
                raise MoyuError(f"d_ff {rows.shape[0]} is not divisible by experts={self.params.experts}")
            out.append(balanced_kmeans(rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12), self.params.experts))
        return out

    def dump_derived(self, data):
        return [a.tolist() for a in data]

    def load_derived(self, lm, saved):
        E = self.params.experts
        data = [torch.tensor(a, dtype=torch.long) for a in saved]
        if len(data) != lm.n_layers or any(a.shape != (lm.d_ff,) or not bool(((a >= 0) & (a < E)).all())
                                           for a in data):
            raise ValueError("not this model's clusters")
        return data

    def select(self, layer, z, gate, lm, x=None):
        if self.params.keep >= 1.0:
            return torch.ones_like(gate, dtype=torch.bool)
        a = self.resource(lm, "derived")[layer]                      # (d_ff,)
        E = self.params.experts
        score = torch.zeros(gate.shape[0], E).index_add_(1, a, gate.abs().float())  # (T, E)
        top = score.topk(keep_count(E, self.params.keep), dim=-1).indices          # (T, k)
        keep_e = torch.zeros(gate.shape[0], E, dtype=torch.bool).scatter_(1, top, True)
        return keep_e[:, a]
