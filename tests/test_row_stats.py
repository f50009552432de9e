"""The whole-sequence statistics kernels (`row_stats.cpp`) equal plain torch/numpy computations:
top-k masks (ties, signs, |score|), column counts, and the atlas' per-layer aggregates."""
import numpy as np
import pytest
import torch

from moyu_core import kernels
from moyu_core.atlas import collect, shards
from moyu_core.methods.base import topk_mask


def _reference_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of each row by a stable sort: ties at the k-th value keep the lowest indices."""
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)


@pytest.mark.parametrize("rows,n", [(512, 1536), (3, 7), (40, 2048)])
def test_topk_mask_equals_a_stable_sort(rows, n, threads):
    g = torch.Generator().manual_seed(n)
    score = torch.randn(rows, n, generator=g) * torch.rand(n, generator=g) * 10
    ops = kernels.row_ops()
    for k in sorted({1, n // 10 or 1, n // 2, n - 1}):
        assert torch.equal(ops.topk_mask_rows(score, k, False), _reference_mask(score, k)), k
        assert torch.equal(ops.topk_mask_rows(score, k, True), _reference_mask(score.abs(), k)), k


def test_topk_mask_breaks_ties_by_lowest_index_and_counts_exactly(threads):
    g = torch.Generator().manual_seed(0)
    score = torch.randint(-2, 3, (64, 100), generator=g).float()      # heavy ties
    score[5] = 0.0                                                      # a row of one value
    for k in (1, 30, 50, 99):
        got = kernels.row_ops().topk_mask_rows(score, k, False)
        assert (got.sum(1) == k).all()
        assert torch.equal(got, _reference_mask(score, k))


def test_topk_mask_keeps_its_contract_through_the_method_helper():
    z = torch.randn(2, 5, 300)
    m = topk_mask(z, 0.25, absolute=True)
    assert m.shape == z.shape and (m.sum(-1) == 75).all()
    assert torch.equal(m, _reference_mask(z.abs().reshape(-1, 300), 75).reshape(z.shape))
    assert topk_mask(z, 1.0).all()
    assert torch.equal(topk_mask(z.double(), 0.25), topk_mask(z, 0.25))   # the torch.topk path agrees


def test_column_counts_equal_a_sum(threads):
    m = torch.rand(300, 1000) > 0.7
    counts = torch.full((1000,), 5, dtype=torch.int64)
    kernels.row_ops().add_column_counts(m, 1, counts)
    assert torch.equal(counts, m[1:].sum(0) + 5)


def test_atlas_accumulate_equals_numpy_over_two_pieces(threads):
    """Two pieces into one running state: counts from each row's top 10%, sums, maxima, the
    histogram (numpy.searchsorted on float64, values on and next to every edge included) and
    the per-column top-K with the measured token index."""
    g = torch.Generator().manual_seed(3)
    D, K = 200, 7
    edges32 = torch.tensor(shards.HIST_EDGES, dtype=torch.float32)
    pieces = []
    for T in (40, 25):
        z = torch.randn(T, D, generator=g) * 10 ** torch.empty(T, D).uniform_(-4, 3.5, generator=g)
        z[1:, 0] = edges32[torch.arange(T - 1) % len(edges32)]                      # exactly on edges
        z[1:, 1] = torch.nextafter(z[1:, 0], torch.full_like(z[1:, 0], float("inf")))
        z[1:, 2] = torch.nextafter(z[1:, 0], torch.full_like(z[1:, 0], -float("inf")))
        z[3, 3] = 0.0
        z[4, 3] = -0.0
        pieces.append(z)
    ops = kernels.row_ops()
    state = dict(counts=torch.zeros(3, D, dtype=torch.int64), sum_abs=torch.zeros(D, dtype=torch.float64),
                 max_abs=torch.zeros(D), hist=torch.zeros(shards.N_BINS, D, dtype=torch.int64))
    top_v, top_j = torch.full((K, D), -torch.inf), torch.full((K, D), -1, dtype=torch.int64)
    base, rows = 0, []
    ref_counts = np.zeros((3, D), np.int64)
    for z in pieces:
        m = ops.topk_mask_rows(z, 20, True)
        ops.atlas_accumulate(z, m, state["counts"], state["sum_abs"], state["max_abs"], state["hist"],
                             *collect._HIST_TABLE, top_v, top_j, base)
        mm = m.numpy()[1:]
        ref_counts += np.stack([mm.sum(0), (mm[:-1] & mm[1:]).sum(0), mm[:-1].sum(0)])
        rows.append(z[1:].numpy())
        base += len(z) - 1
    allz = np.concatenate(rows)                                        # (N, D) measured rows in order
    assert np.array_equal(state["counts"].numpy(), ref_counts)
    np.testing.assert_allclose(state["sum_abs"].numpy(), np.abs(allz).astype(np.float64).sum(0), rtol=1e-12)
    assert np.array_equal(state["max_abs"].numpy(), np.abs(allz).max(0))
    bins = np.searchsorted(shards.HIST_EDGES, allz.astype(np.float64), side="right")
    ref_hist = np.zeros((shards.N_BINS, D), np.int64)
    np.add.at(ref_hist, (bins, np.broadcast_to(np.arange(D), bins.shape)), 1)
    assert np.array_equal(state["hist"].numpy(), ref_hist)
    order = np.argsort(-allz, axis=0, kind="stable")[:K]               # ties: the earlier token first
    assert np.array_equal(top_j.numpy(), order)
    assert np.array_equal(top_v.numpy(), np.take_along_axis(allz, order, 0))
