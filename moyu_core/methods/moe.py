"""moe: training-free MoEfication (Zhang et al. 2022): neurons clustered into experts."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MoyuError
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
    experts by balanced k-means on L2-normalised gate_proj rows; the router scores an expert by
    the sum of |act(gate_proj(x))| over its neurons (exact gate instead of a learned router);
    keep the top keep*E experts per token. Clusters cached per (layer, E)."""

    name = "moe"
    Params = MoeParams
    needs = "gate"
    _cache: dict = {}

    def experts_of(self, layer, lm) -> torch.Tensor:
        key = (getattr(lm, "fingerprint", id(lm)), layer, self.params.experts)
        if key not in Moe._cache:
            w = lm.layers[layer].mlp.gate_proj.weight.detach().float()
            if w.shape[0] % self.params.experts:
                raise MoyuError(f"d_ff {w.shape[0]} is not divisible by experts={self.params.experts}")
            Moe._cache[key] = balanced_kmeans(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12), self.params.experts)
        return Moe._cache[key]

    def prepare(self, lm) -> None:
        """Clusters of every layer, read from `cache/moe/` when this model's are there
        (clustering takes a second or two), else computed and saved there."""
        if self.params.keep >= 1.0:
            return
        E, fp = self.params.experts, getattr(lm, "fingerprint", None)
        if fp is not None and not all((fp, i, E) in Moe._cache for i in range(lm.n_layers)):
            from ..models import CACHE_DIR
            path = Path(CACHE_DIR) / "moe" / f"{lm.name}-{str(fp)[:12]}-E{E}.json"
            try:
                saved = [torch.tensor(a, dtype=torch.long) for a in json.loads(path.read_text())]
                if len(saved) != lm.n_layers or any(a.shape != (lm.d_ff,) or not bool(((a >= 0) & (a < E)).all())
                                                    for a in saved):
                    raise ValueError("not this model's clusters")
                Moe._cache.update({(fp, i, E): a for i, a in enumerate(saved)})
            except (OSError, ValueError, TypeError):
                clusters = [self.experts_of(i, lm).tolist() for i in range(lm.n_layers)]
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(clusters))
                tmp.replace(path)
        for i in range(lm.n_layers):
            self.experts_of(i, lm)

    def select(self, layer, z, gate, lm, x=None):
        if self.params.keep >= 1.0:
            return torch.ones_like(gate, dtype=torch.bool)
        a = self.experts_of(layer, lm)                               # (d_ff,)
        E = self.params.experts
        score = torch.zeros(gate.shape[0], E).index_add_(1, a, gate.abs().float())  # (T, E)
        k = max(1, int(round(self.params.keep * E)))
        top = score.topk(k, dim=-1).indices                          # (T, k)
        keep_e = torch.zeros(gate.shape[0], E, dtype=torch.bool).scatter_(1, top, True)
        return keep_e[:, a]
