// Whole-sequence statistics over (tokens, neurons) matrices (CPU): each row's top-k mask (every
// DA method's top-k, `methods.base.topk_mask`), column counts of a mask, and the neuron atlas'
// per-column aggregates of one layer (moyu_core/atlas/collect.py).
//
// topk_mask_rows finds each row's k-th largest value by a radix step, not a sort
// (`radix_select.h`, shared with the decode kernels); rows run in parallel (at::parallel_for).
//
// atlas_accumulate makes one pass over a layer's z, row by row: columns split among tasks, so each
// task owns its columns' accumulators (no partial sums to merge, results independent of threads).
// The histogram bin of a value comes from a lookup table indexed by the top 11 bits of |z| (no
// logarithm): the table holds, per bucket, how many edges lie below it and the one edge inside it
// if any (edges are far enough apart for at most one per bucket), so one comparison in double
// finishes the count exactly as numpy.searchsorted(edges, float64(z), side="right") does.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "radix_select.h"

namespace {

constexpr int BUCKET_SHIFT = 21;               // the atlas' histogram table: the top 11 bits of |z|
constexpr int64_t BUCKETS = int64_t(1) << 11;
constexpr int64_t TILE = 64;                   // atlas columns are split among tasks in multiples of this

using moyu::order_key;

// out[i] = 1 for the k largest of s (n values; |s| when absolute) in key order; ties at the k-th
// value: the lowest indices. keys (n), cand (n) and count (moyu::RADIX_BUCKETS) are scratch.
void row_topk(const float* s, int64_t n, int64_t k, bool absolute, bool* out, uint32_t* keys, uint32_t* cand,
              uint32_t* count) {
  if (absolute)
    for (int64_t i = 0; i < n; ++i) keys[i] = order_key(std::fabs(s[i]));
  else
    for (int64_t i = 0; i < n; ++i) keys[i] = order_key(s[i]);
  auto [kth, ties, equal] = moyu::kth_largest(keys, n, k, cand, count);
  if (ties == equal) {
    for (int64_t i = 0; i < n; ++i) out[i] = keys[i] >= kth;
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = keys[i] > kth || (keys[i] == kth && ties-- > 0);
  }
}

void check_float(const torch::Tensor& t, const char* what, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.dim() == dims,
              what, " must be a contiguous float32 CPU tensor of ", dims, " dimensions");
}

template <class T>
T* data(torch::Tensor& t, torch::ScalarType type, int64_t numel, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.is_contiguous() && t.numel() == numel,
              what, " must be a contiguous CPU tensor of ", numel, " values of type ", type);
  return t.data_ptr<T>();
}

// Bool (rows, n) mask of each row's k largest entries of score (rows, n) (|score| when absolute).
torch::Tensor topk_mask_rows(torch::Tensor score, int64_t k, bool absolute) {
  check_float(score, "score", 2);
  const int64_t rows = score.size(0), n = score.size(1);
  TORCH_CHECK(k >= 1 && k <= n, "k must lie in [1, ", n, "], got ", k);
  auto out = torch::empty({rows, n}, torch::kBool);
  const float* s = score.data_ptr<float>();
  bool* o = out.data_ptr<bool>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n)), [&](int64_t r0, int64_t r1) {
    std::vector<uint32_t> keys(n), cand(n), count(moyu::RADIX_BUCKETS);
    for (int64_t r = r0; r < r1; ++r)
      row_topk(s + r * n, n, k, absolute, o + r * n, keys.data(), cand.data(), count.data());
  });
  return out;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOYU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOYU_CLONES
#endif

// One row's columns into the running counts, sum and max (plain loops the compiler vectorises).
MOYU_CLONES void row_sums(const float* __restrict z, const uint8_t* __restrict m, const uint8_t* __restrict next,
                          int64_t w, int32_t* __restrict top10, int32_t* __restrict stay, int32_t* __restrict prev,
                          double* __restrict sum, float* __restrict mx) {
  for (int64_t j = 0; j < w; ++j) {
    const float a = std::fabs(z[j]);
    top10[j] += m[j];
    sum[j] += a;
    mx[j] = std::max(mx[j], a);
  }
  if (next)
    for (int64_t j = 0; j < w; ++j) {
      stay[j] += m[j] & next[j];
      prev[j] += m[j];
    }
}

MOYU_CLONES void column_add(const uint8_t* __restrict m, int64_t w, int32_t* __restrict c) {
  for (int64_t j = 0; j < w; ++j) c[j] += m[j];
}

// One row's columns into the histogram h (bins, w) and the running top-K tv, tj (w, K) whose
// K-th values th (w) mirror: bins first (no branch on the sign: it is a coin toss), then the
// counts, then a vectorised test against th, and only where it passes (rare once a column's
// top-K has filled) the entry into that column's top-K.
MOYU_CLONES void row_bins(const float* __restrict z, int64_t w, int64_t half, const int32_t* below,
                          const double* edge, uint8_t* __restrict bin, int32_t* __restrict h, float* __restrict th,
                          float* tv, int64_t* tj, int64_t K, int64_t token) {
  for (int64_t j = 0; j < w; ++j) {
    const float v = z[j], a = std::fabs(v);
    uint32_t u, sv;
    std::memcpy(&u, &a, sizeof u);
    std::memcpy(&sv, &v, sizeof sv);
    const int32_t lut = u >> BUCKET_SHIFT, neg = sv >> 31;
    const double e = edge[lut];
    // edges <= |z| for z >= 0; edges < |z| for z < 0 (the mirrored edge -e <= z counts)
    const int32_t cnt = below[lut] + (a > e) + ((1 - neg) & (a == e));
    bin[j] = static_cast<uint8_t>(half + (1 - 2 * neg) * cnt);
  }
  for (int64_t j = 0; j < w; ++j) ++h[bin[j] * w + j];
  int32_t any = 0;
  for (int64_t j = 0; j < w; ++j) any |= z[j] > th[j];
  if (!any) return;
  for (int64_t j = 0; j < w; ++j) {
    const float v = z[j];
    if (!(v > th[j])) continue;
    float* cv = tv + j * K;                   // column j's top-K, descending, contiguous
    int64_t q = K - 1;
    for (; q > 0 && cv[q - 1] < v; --q) {
      cv[q] = cv[q - 1];
      tj[j * K + q] = tj[j * K + q - 1];
    }
    cv[q] = v;
    tj[j * K + q] = token;
    th[j] = cv[K - 1];
  }
}

// One layer's z (T, D) of a piece into the atlas' running aggregates over rows 1..T-1 (row 0 is
// the sink): counts (3, D) int64 = [in the top 10%, in it at t and t+1, in it at t with a t+1],
// sum_abs (D) float64, max_abs (D) float32, hist (bins, D) int64, and the running top-K per column
// top_v (K, D) float32 descending (-inf where empty) with top_j (K, D) int64 = base + (t - 1)
// (ties: the earlier token first). m10 (T, D) bool is each row's top-10% mask; lut_below
// (BUCKETS) int32 and lut_edge (BUCKETS) float64 the table of the positive histogram edges
// (bins = 2 * edges + 1). Columns split among tasks, each with its own accumulators for its
// columns (int32 within a piece of fewer than 2^31 tokens), so no result depends on the threads.
void atlas_accumulate(torch::Tensor z, torch::Tensor m10, torch::Tensor counts, torch::Tensor sum_abs,
                      torch::Tensor max_abs, torch::Tensor hist, torch::Tensor lut_below, torch::Tensor lut_edge,
                      torch::Tensor top_v, torch::Tensor top_j, int64_t base) {
  check_float(z, "z", 2);
  const int64_t T = z.size(0), D = z.size(1), bins = hist.numel() / std::max<int64_t>(1, D);
  const int64_t K = top_v.numel() / std::max<int64_t>(1, D), half = bins / 2;
  TORCH_CHECK(bins % 2 == 1 && bins <= 255, "hist must hold an odd number (< 256) of bins per column");
  TORCH_CHECK(K >= 1, "top_v must hold at least one row");
  const float* zp = z.data_ptr<float>();
  const uint8_t* mp = reinterpret_cast<const uint8_t*>(data<bool>(m10, torch::kBool, T * D, "m10"));
  int64_t* cp = data<int64_t>(counts, torch::kInt64, 3 * D, "counts");
  double* sp = data<double>(sum_abs, torch::kFloat64, D, "sum_abs");
  float* xp = data<float>(max_abs, torch::kFloat32, D, "max_abs");
  int64_t* hp = data<int64_t>(hist, torch::kInt64, bins * D, "hist");
  const int32_t* below = data<int32_t>(lut_below, torch::kInt32, BUCKETS, "lut_below");
  const double* edge = data<double>(lut_edge, torch::kFloat64, BUCKETS, "lut_edge");
  float* tv = data<float>(top_v, torch::kFloat32, K * D, "top_v");
  int64_t* tj = data<int64_t>(top_j, torch::kInt64, K * D, "top_j");
  at::parallel_for(0, (D + TILE - 1) / TILE, 1, [&](int64_t b0, int64_t b1) {
    const int64_t j0 = b0 * TILE, w = std::min(b1 * TILE, D) - j0;
    std::vector<int32_t> top10(w), stay(w), prev(w), h(bins * w);
    std::vector<double> sum(w);
    std::vector<float> mx(xp + j0, xp + j0 + w);
    std::vector<uint8_t> bin(w);
    std::vector<float> cv(w * K);             // the columns' top-K, column-major: an entry shifts within a line
    std::vector<int64_t> cj(w * K);
    std::vector<float> th(w);                 // each column's K-th value
    for (int64_t j = 0; j < w; ++j) {
      for (int64_t q = 0; q < K; ++q) {
        cv[j * K + q] = tv[q * D + j0 + j];
        cj[j * K + q] = tj[q * D + j0 + j];
      }
      th[j] = cv[j * K + K - 1];
    }
    for (int64_t t = 1; t < T; ++t) {
      const float* zr = zp + t * D + j0;
      const uint8_t* m = mp + t * D + j0;
      row_sums(zr, m, t + 1 < T ? m + D : nullptr, w, top10.data(), stay.data(), prev.data(), sum.data(), mx.data());
      row_bins(zr, w, half, below, edge, bin.data(), h.data(), th.data(), cv.data(), cj.data(), K, base + t - 1);
    }
    for (int64_t j = 0; j < w; ++j) {
      cp[j0 + j] += top10[j];
      cp[D + j0 + j] += stay[j];
      cp[2 * D + j0 + j] += prev[j];
      sp[j0 + j] += sum[j];
      xp[j0 + j] = mx[j];
      for (int64_t q = 0; q < K; ++q) {
        tv[q * D + j0 + j] = cv[j * K + q];
        tj[q * D + j0 + j] = cj[j * K + q];
      }
    }
    for (int64_t q = 0; q < bins; ++q)
      for (int64_t j = 0; j < w; ++j) hp[q * D + j0 + j] += h[q * w + j];
  });
}

// counts (D) int64 += the column sums of mask (T, D) bool over rows row0..T-1.
void add_column_counts(torch::Tensor mask, int64_t row0, torch::Tensor counts) {
  TORCH_CHECK(mask.dim() == 2, "mask must be (rows, columns)");
  const int64_t T = mask.size(0), D = mask.size(1);
  const uint8_t* mp = reinterpret_cast<const uint8_t*>(data<bool>(mask, torch::kBool, T * D, "mask"));
  int64_t* cp = data<int64_t>(counts, torch::kInt64, D, "counts");
  at::parallel_for(0, (D + TILE - 1) / TILE, 1, [&](int64_t b0, int64_t b1) {
    const int64_t j0 = b0 * TILE, w = std::min(b1 * TILE, D) - j0;
    std::vector<int32_t> c(w);
    for (int64_t t = std::max<int64_t>(0, row0); t < T; ++t) column_add(mp + t * D + j0, w, c.data());
    for (int64_t j = 0; j < w; ++j) cp[j0 + j] += c[j];
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("topk_mask_rows", &topk_mask_rows);
  m.def("atlas_accumulate", &atlas_accumulate);
  m.def("add_column_counts", &add_column_counts);
}
