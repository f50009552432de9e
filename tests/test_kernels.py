"""The fused decode kernels equal the masked dense computation in torch, on random weights (several
shapes, both thread counts) and on the real model's weights."""
import os
import time

import pytest
import torch
import torch.nn.functional as F

from moyu_core import kernels
from moyu_core.keep import keep_count
from moyu_core.methods.base import topk_mask

ACTS = {0: F.silu, 1: lambda g: F.gelu(g, approximate="tanh"), 2: F.gelu, 3: torch.relu}


def _close(a, b, scale):
    assert torch.allclose(a, b, atol=1e-4 * scale, rtol=1e-4), float((a - b).abs().max())


def _between(v, q=0.5):
    """A threshold halfway between two neighbouring values of |v| near its q-quantile, so that
    rounding differences between the kernel and torch never decide a comparison."""
    a = v.abs().flatten().sort().values
    k = min(max(int(q * (len(a) - 1)), 0), len(a) - 2)
    return float(a[k] + a[k + 1]) / 2


def _weights(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * 0.1, torch.randn(n, d, generator=g) * 0.1,
            torch.randn(d, n, generator=g) * 0.1, torch.randn(d, generator=g))


def _layouts(gate, up, down):
    h = kernels.hugepage
    return {"gu": h(torch.stack([gate, up], 1)), "dt": h(down.T), "g": h(gate),
            "ud": h(torch.stack([up, down.T], 1)), "rec": h(torch.stack([gate, up, down.T], 1)),
            "gut": kernels.input_major(torch.cat([gate, up]))}


def _masked_mlp(gate, up, down, x, kind, keep):
    """The dense MLP with z masked: what every MLP kernel must equal."""
    z = ACTS[kind](gate @ x) * (up @ x)
    return down @ (z * keep), z


@pytest.mark.parametrize("n,d", [(64, 32), (1536, 576), (200, 72)])
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_mlp_kernels_equal_masked_dense(n, d, kind, threads):
    K = kernels.ops()
    gate, up, down, x = _weights(n, d)
    L = _layouts(gate, up, down)
    ref, z = _masked_mlp(gate, up, down, x, kind, 1.0)
    scale = float(ref.abs().max())
    _close(K.mlp_dense(L["gu"], L["dt"], x, kind), ref, scale)

    t = _between(z)                                                 # tda
    _close(K.mlp_z_threshold(L["gu"], L["dt"], x, kind, t, torch.empty(0)),
           _masked_mlp(gate, up, down, x, kind, z.abs() >= t)[0], scale)
    s = down.norm(dim=0)                                            # cett
    ts = _between(z.abs() * s)
    _close(K.mlp_z_threshold(L["gu"], L["dt"], x, kind, ts, s.contiguous()),
           _masked_mlp(gate, up, down, x, kind, z.abs() * s >= ts)[0], scale)
    k = keep_count(n, 0.5)                                          # oracle
    top = torch.zeros(n, dtype=torch.bool).scatter_(0, z.abs().topk(k).indices, True)
    _close(K.mlp_z_topk(L["gu"], L["dt"], x, kind, k), _masked_mlp(gate, up, down, x, kind, top)[0], scale)

    a = ACTS[kind](gate @ x)                                        # cats
    tg = _between(a)
    _close(K.mlp_gate_threshold(L["g"], L["ud"], x, kind, tg),
           _masked_mlp(gate, up, down, x, kind, a.abs() >= tg)[0], scale)

    E = 8                                                           # moe-oracle, moe
    assign = torch.arange(n) % E
    members = assign.argsort(stable=True).view(E, -1).contiguous()
    score = torch.zeros(E).index_add_(0, assign, a.abs())
    keep_e = torch.zeros(E, dtype=torch.bool).scatter_(0, score.topk(3).indices, True)
    _close(K.mlp_gate_experts(L["g"], L["ud"], x, kind, members, 3),
           _masked_mlp(gate, up, down, x, kind, keep_e[assign])[0], scale)
    cent = torch.randn(E, d)
    keep_r = torch.zeros(E, dtype=torch.bool).scatter_(0, (cent @ x).topk(3).indices, True)
    _close(K.mlp_router_experts(L["rec"], x, kind, cent, members, 3),
           _masked_mlp(gate, up, down, x, kind, keep_r[assign])[0], scale)

    w1, w2 = torch.randn(16, d), torch.randn(n, 16)                 # dejavu
    logits = w2 @ (w1 @ x)
    keep_d = torch.zeros(n, dtype=torch.bool).scatter_(0, logits.topk(k).indices, True)
    _close(K.mlp_router_topk(L["rec"], x, kind, kernels.router_blocks(w1, w2), k),
           _masked_mlp(gate, up, down, x, kind, keep_d)[0], scale)

    tx, tz = _between(x), _between(z, 0.3)                          # teal
    tu = _between(x, 0.25)
    zt = ACTS[kind](gate @ (x * (x.abs() >= tx))) * (up @ (x * (x.abs() >= tu)))
    tz = _between(zt, 0.3)
    _close(K.teal_mlp(L["gut"], L["dt"], x, kind, tx, tu, tz), down @ (zt * (zt.abs() >= tz)), scale)


def test_top_k_ties_keep_the_lowest_indices(threads):
    """Scores tied at the k-th value: the kernels keep the lowest indices, as the simulated masks
    do (`methods.base.topk_mask`), for positive and negative scores."""
    K = kernels.ops()
    n, d, E = 64, 32, 8
    gate, up, down, x = _weights(n, d)
    L = _layouts(gate, up, down)
    assign = torch.arange(n) % E
    members = assign.argsort(stable=True).view(E, -1).contiguous()
    for sign in (1.0, -1.0):
        cent = (sign * x).repeat(E, 1)        # every expert scores x . x (or its negative) exactly
        cent[5] = 0.5 * sign * x if sign < 0 else 2 * x     # expert 5 scores highest
        keep_e = torch.zeros(E, dtype=torch.bool)
        keep_e[[0, 1, 5]] = True
        assert torch.equal(topk_mask(cent @ x, 3 / E), keep_e)
        _close(K.mlp_router_experts(L["rec"], x, 0, cent, members, 3),
               _masked_mlp(gate, up, down, x, 0, keep_e[assign])[0], 1.0)


@pytest.mark.parametrize("out,inp", [(960, 576), (576, 576), (40, 24), (3072, 576)])
def test_input_channel_skipping_equals_masked_dense(out, inp, threads):
    K = kernels.ops()
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(out, inp, generator=g), torch.randn(inp, generator=g)
    bounds = [0, out // 2, 3 * out // 4, out]
    wt = kernels.input_major(w)
    lo, hi = _between(x), _between(x, 0.8)
    # thresholds per segment: all different; shared (a kept channel is one whole row); the middle
    # one higher (a channel kept in the outer segments only is two pieces of its row)
    for th in ([lo, 0.0, hi], [lo, lo, lo], [lo, hi, lo], [hi, lo, 0.0]):
        ref = torch.cat([w[a:b] @ (x * (x.abs() >= t)) for a, b, t in zip(bounds, bounds[1:], th)])
        _close(K.linear_t(wt, x, bounds, th), ref, float(ref.abs().max()))
    _close(K.linear_t(wt, x, [0, out], [0.0]), w @ x, float((w @ x).abs().max()))
    _close(K.gemv(kernels.hugepage(w), x), w @ x, float((w @ x).abs().max()))


def test_hugepage_rows_copy_the_rows():
    t = torch.randn(50, 2, 8)
    idx = torch.tensor([3, 0, 49, 7])
    assert torch.equal(kernels.hugepage_rows(t, idx), t[idx])
    assert torch.equal(kernels.hugepage(t), t)


def test_activation_kind_recognises_the_families_activations():
    from transformers.activations import ACT2FN
    assert kernels.activation_kind(ACT2FN["silu"]) == 0
    assert kernels.activation_kind(ACT2FN["gelu_pytorch_tanh"]) == 1
    assert kernels.activation_kind(ACT2FN["gelu"]) == 2
    assert kernels.activation_kind(torch.nn.ReLU()) == 3
    assert kernels.activation_kind(torch.nn.Tanh()) is None


def test_kernels_on_real_weights_equal_masked_dense(lm):
    """Every executed per-token path, on the real model's layer 7 and a real MLP input."""
    from moyu_core import decode
    from moyu_core.hooks import method_intervention
    from moyu_core.methods import make
    from moyu_core.preparation import prepare

    i, got = 7, {}

    def grab(li, z, g, x):
        got[li] = (x[-1], z[0, -1], g[-1])

    with torch.inference_mode(), method_intervention(lm, grab):
        lm.model(torch.tensor([lm.encode("The history of the Roman empire begins with the city")]))
    x, z, gate = (t.contiguous().float() for t in got[i])
    w = lm.mlp_weights(i)
    kind = decode.activation(lm)
    names = ["dense", "tda", "cett", "oracle", "cats", "moe-oracle", "moe"]
    from moyu_core.router import load_router
    if load_router(lm) is not None:
        names.append("dejavu")
    for name in names:
        m = make(name, keep=0.5) if name != "dense" else make("dense")
        prepare(lm, m)
        keep = m.select(i, z[None], gate[None], lm, x[None])[0]
        ref = w.down @ (z * keep)
        with torch.inference_mode():
            out = decode.EXECUTED[name](lm, i, m, kind)(x)
        _close(out, ref, float(ref.abs().max()))


def test_a_stale_build_lock_is_cleared_a_fresh_one_kept(tmp_path):
    """A build killed mid-compile leaves torch's lock file; later builds would wait on it forever."""
    lock = tmp_path / "lock"
    lock.touch()
    assert not kernels.clear_stale_lock(tmp_path) and lock.exists()   # a build may be running
    old = time.time() - kernels.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    assert kernels.clear_stale_lock(tmp_path) and not lock.exists()
    assert not kernels.clear_stale_lock(tmp_path)                     # nothing left to clear
