// Fused batch-1 decode kernels for moyu's executed sparse paths (float32, CPU).
//
// An MLP of n neurons over d inputs is kept in the layout its access needs (moyu_core/kernels):
//   gu (n, 2, d) [gate_i; up_i] and dt (n, d) = W_down^T   dense and z-based (gate and up stream,
//                                                          then the kept rows of W_down^T);
//   g (n, d) and ud (n, 2, d) [up_i; W_down[:, i]]          gate-based (the gate streams, a kept
//                                                          neuron's up and down are one block);
//   records (n, 3, d) [gate_i; up_i; W_down[:, i]]          routers (a kept neuron is one block);
//   router (r, d + n) [w1_j; w2[:, j]]                     DejaVu's router (one block per rank);
//   wt = W^T (in, out)                                     input-channel skipping (TEAL): one
//                                                          row per input channel.
// Every kernel applies its selection (threshold, top-k, router) itself; the list of kept rows is
// built here, never in Python. The dense stream of gate and up is left to the hardware prefetcher;
// kept blocks, and the sparse kernels' other streams, are prefetched into L2 at a constant
// distance ahead (`Ahead`), long gathered rows one group of rows ahead (`sum_range`).
// `llama_attention` is the attention half of a Llama decode step (the small operations around its
// two products in one call). Work is one task per thread
// (at::parallel_for, torch's own OpenMP pool); a task summing rows keeps its own partial sum,
// added up in task order, so results do not depend on thread timing. Inner loops are plain
// loops on 16-float vector values; on x86-64 GCC builds them for AVX-512, AVX2+FMA and baseline
// x86-64 and picks one at load time (target_clones), so the flags stay portable.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <tuple>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "radix_select.h"

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOYU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOYU_CLONES
#endif

enum Act : int64_t { SILU = 0, GELU_TANH = 1, GELU = 2, RELU = 3 };

inline float act(float g, int64_t kind) {
  switch (kind) {
    case SILU: return g / (1.f + std::exp(-g));
    case GELU_TANH: {
      const float c = 0.7978845608028654f;  // sqrt(2 / pi)
      return 0.5f * g * (1.f + std::tanh(c * (g + 0.044715f * g * g * g)));
    }
    case GELU: return 0.5f * g * (1.f + std::erf(g * 0.7071067811865476f));
    default: return g > 0.f ? g : 0.f;
  }
}

// 16 floats as one value: the compiler lowers its arithmetic to whatever vector width the clone
// targets (one AVX-512 register, two AVX2 registers, four SSE registers).
typedef float vf __attribute__((vector_size(64)));
typedef float vf_unaligned __attribute__((vector_size(64), aligned(4), may_alias));
constexpr int64_t W = 16;
inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_unaligned*>(p) = v; }
inline float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < W; ++l) s += v[l];
  return s;
}

MOYU_CLONES float dot(const float* __restrict a, const float* __restrict x, int64_t n) {
  vf s0 = {}, s1 = {};
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    s0 += load(a + j) * load(x + j);
    s1 += load(a + j + W) * load(x + j + W);
  }
  for (; j + W <= n; j += W) s0 += load(a + j) * load(x + j);
  float s = hsum(s0 + s1);
  for (; j < n; ++j) s += a[j] * x[j];
  return s;
}

MOYU_CLONES void axpy(float a, const float* __restrict w, float* __restrict y, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W) store(y + j, load(y + j) + a * load(w + j));
  for (; j < n; ++j) y[j] += a * w[j];
}

// y += a[0] w[0] + a[1] w[1] + a[2] w[2] + a[3] w[3]: one pass over y for four rows; with Fetch,
// the rows `next` are prefetched into L2 as it goes, a line of each per line of its own rows.
template <bool Fetch>
inline __attribute__((always_inline)) void axpy4_body(const float* a, const float* const* w, const float* const* next,
                                                      float* __restrict y, int64_t n) {
  const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
  const float *n0 = Fetch ? next[0] : nullptr, *n1 = Fetch ? next[1] : nullptr, *n2 = Fetch ? next[2] : nullptr,
              *n3 = Fetch ? next[3] : nullptr;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    if (Fetch) {
      __builtin_prefetch(n0 + j, 0, 1);
      __builtin_prefetch(n1 + j, 0, 1);
      __builtin_prefetch(n2 + j, 0, 1);
      __builtin_prefetch(n3 + j, 0, 1);
    }
    store(y + j, load(y + j) + a[0] * load(w0 + j) + a[1] * load(w1 + j) + a[2] * load(w2 + j) + a[3] * load(w3 + j));
  }
  for (; j < n; ++j) y[j] += a[0] * w0[j] + a[1] * w1[j] + a[2] * w2[j] + a[3] * w3[j];
}

MOYU_CLONES void axpy4(const float* a, const float* const* w, float* __restrict y, int64_t n) {
  axpy4_body<false>(a, w, nullptr, y, n);
}

// axpy4 prefetching the next four rows to be read: a prefetch distance of one group, spread over it.
MOYU_CLONES void axpy4_fetch(const float* a, const float* const* w, const float* const* next, float* __restrict y,
                             int64_t n) {
  axpy4_body<true>(a, w, next, y, n);
}

// ---- tasks ------------------------------------------------------------------------------------

int64_t task_count(int64_t work, int64_t min_work) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), work / std::max<int64_t>(1, min_work)));
}

template <class F>
void run_tasks(int64_t tasks, const F& f) {
  if (tasks <= 1) {
    f(0);
    return;
  }
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) f(t);
  });
}

inline int64_t split(int64_t n, int64_t tasks, int64_t t) { return n * t / tasks; }

// Software prefetch runs this many 64-byte lines (about 7 KiB) ahead of the line being read.
constexpr int64_t AHEAD_LINES = 108;

// A task's software prefetch into L2: walks the blocks of items [q0, q1) (`block(q)`, `span`
// floats each) in the order they will be read, AHEAD_LINES lines ahead of the reading. The
// constructor issues the first AHEAD_LINES lines; `step()`, called as each item starts, one
// block's worth more, so the distance stays constant. Every block is prefetched, kept blocks that
// follow one another too. On this 2-core EPYC, in a standalone loop over records at keep 0.5 (not
// kept in the repository), the hardware prefetcher alone, retrained at every jump, read them at
// about 55% of the streaming rate, a burst of the whole next block at each item at about 75%,
// and this constant distance at about 90%.
template <class Block>
class Ahead {
 public:
  Ahead(const Block& block, int64_t span, int64_t q0, int64_t q1)
      : block_(block), span_(span), lines_((span + W - 1) / W), q_(span > 0 ? q0 : q1), q1_(q1),
        p_(q_ < q1 ? block(q0) : nullptr) {
    issue(AHEAD_LINES);
  }
  void step() { issue(lines_); }

 private:
  void issue(int64_t n) {
    for (; n > 0 && q_ < q1_; --n) {
      __builtin_prefetch(p_ + off_, 0, 1);
      off_ += W;
      if (off_ >= span_) {
        off_ = 0;
        if (++q_ < q1_) p_ = block_(q_);
      }
    }
  }
  const Block& block_;
  const int64_t span_, lines_;
  int64_t q_, q1_, off_ = 0;
  const float* p_;
};

// f(i) for i in [0, n) over rows of `span` floats from `base` (row i at base + i * span), read in
// order: contiguous ranges, one per task, prefetched ahead if `fetch`. The dense MLP's stream of
// gate and up (z_all, also tda's, cett's and oracle's) runs without: it ran slower with, in
// alternating rounds at 1 and 2 threads (the hardware prefetcher alone keeps up with it); the gate
// of cats and moe-oracle ran faster with it.
template <class F>
void for_rows(const float* base, int64_t span, int64_t n, int64_t min_per_task, bool fetch, const F& f) {
  const int64_t tasks = task_count(n, min_per_task);
  auto block = [&](int64_t i) { return base + i * span; };
  run_tasks(tasks, [&](int64_t t) {
    const int64_t i0 = split(n, tasks, t), i1 = split(n, tasks, t + 1);
    Ahead<decltype(block)> ahead(block, fetch ? span : 0, i0, i1);
    for (int64_t i = i0; i < i1; ++i) {
      ahead.step();
      f(i);
    }
  });
}

// y = sum over q in [0, K) of coef(q) * row(q), rows of d floats: the items split among tasks,
// each with its own partial sum, added in task order (results do not depend on thread timing).
// `block(q)` is the block of `span` floats item q reads (its row, or a record whose coefficient
// comes from dot products over the rest of it), prefetched ahead (`Ahead`). Gathered items go
// four per pass over the task's partial sum (a quarter of its loads and stores). Four rows of
// LONG_ROW floats or more (TEAL's rows: gate and up, 2 d_ff floats; q, k and v) are more than the
// constant distance, so `Ahead` would fetch three of them just as they are read; they are fetched
// one group ahead instead, a line of each next row per line read (`axpy4_fetch`). With this and
// the input-major layout (`linear_t_into`), TEAL's gate and up at half ran 1.35 times as fast as
// before at 1 thread and 1.2 times at 2 (alternating rounds on the real weights, a script not
// kept in the repository); rows of 576 floats gained nothing in a standalone loop. Span 0, rows
// read in one unbroken stream (dense), are not prefetched and go one at a time: both prefetching
// them and four interleaved streams made dense slower, in alternating rounds at 1 and 2 threads.
constexpr int64_t LONG_ROW = 768;

template <class Block, class Coef, class RowPtr>
void sum_range(int64_t q0, int64_t q1, int64_t d, int64_t span, const Block& block, const Coef& coef,
               const RowPtr& row, float* acc) {
  int64_t q = q0;
  if (span == d && d >= LONG_ROW) {   // long gathered rows
    for (; q + 4 <= q1; q += 4) {
      float a[4];
      const float *w[4], *next[4];
      for (int u = 0; u < 4; ++u) {
        a[u] = coef(q + u);
        w[u] = row(q + u);
        next[u] = row(std::min(q + 4 + u, q1 - 1));
      }
      axpy4_fetch(a, w, next, acc, d);
    }
    for (; q < q1; ++q) axpy(coef(q), row(q), acc, d);
    return;
  }
  Ahead<Block> ahead(block, span, q0, q1);
  for (; span > 0 && q + 4 <= q1; q += 4) {
    float a[4];
    const float* w[4];
    for (int u = 0; u < 4; ++u) {
      ahead.step();
      a[u] = coef(q + u);
      w[u] = row(q + u);
    }
    axpy4(a, w, acc, d);
  }
  for (; q < q1; ++q) {
    ahead.step();
    axpy(coef(q), row(q), acc, d);
  }
}

// The tasks' partial sums (tasks x d) added in task order into y (d).
void add_parts(const std::vector<float>& part, int64_t tasks, int64_t d, float* y) {
  std::fill(y, y + d, 0.f);
  for (int64_t t = 0; t < tasks; ++t) axpy(1.f, part.data() + t * d, y, d);
}

template <class Block, class Coef, class RowPtr>
void sum_rows_into(int64_t K, int64_t d, int64_t span, const Block& block, const Coef& coef, const RowPtr& row,
                   float* y, int64_t min_per_task = 64) {
  const int64_t tasks = task_count(K, min_per_task);
  std::vector<float> part(tasks * d, 0.f);
  run_tasks(tasks, [&](int64_t t) {
    sum_range(split(K, tasks, t), split(K, tasks, t + 1), d, span, block, coef, row, part.data() + t * d);
  });
  add_parts(part, tasks, d, y);
}

template <class Block, class Coef, class RowPtr>
torch::Tensor sum_rows(int64_t K, int64_t d, int64_t span, const Block& block, const Coef& coef, const RowPtr& row) {
  auto out = torch::empty({d});
  sum_rows_into(K, d, span, block, coef, row, out.data_ptr<float>());
  return out;
}

// Indices (ascending) of the k largest of s; ties at the k-th value: lowest indices first. The
// radix select of the simulated masks (`radix_select.h`), so both choose the same set. Its
// scratch is kept per thread, and where no key equal to the k-th is cut (no tie at the boundary,
// the usual case) the kept pass tests `>= kth` alone: 2.5 times as fast as with a scratch
// allocated per call and the tie count carried through every entry (3.5 against 9 us per call at
// 1536 entries, a standalone loop not kept in the repository).
std::vector<int64_t> top_k(const float* s, int64_t n, int64_t k) {
  std::vector<int64_t> kept;
  if (k >= n) {
    kept.resize(n);
    for (int64_t i = 0; i < n; ++i) kept[i] = i;
    return kept;
  }
  if (k <= 0) return kept;
  thread_local std::vector<uint32_t> keys, cand, count;
  keys.resize(n);
  cand.resize(n);
  count.resize(moyu::RADIX_BUCKETS);
  for (int64_t i = 0; i < n; ++i) keys[i] = moyu::order_key(s[i]);
  auto [kth, ties, equal] = moyu::kth_largest(keys.data(), n, k, cand.data(), count.data());
  kept.resize(k + 1);   // exactly k are kept; the branch-free passes write one slot past the last
  int64_t c = 0;
  if (ties == equal) {   // branch-free, as in `at_least`
    for (int64_t i = 0; i < n; ++i) {
      kept[c] = i;
      c += keys[i] >= kth;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const bool tie = keys[i] == kth && ties > 0;
      ties -= tie;
      kept[c] = i;
      c += keys[i] > kth || tie;
    }
  }
  kept.resize(c);
  return kept;
}

// Indices i (ascending) with |v_i| * scale_i >= t (scale null: 1). Branch-free: about half pass,
// in an order no branch predictor learns, and a mispredicted branch each cost more than the test.
std::vector<int64_t> at_least(const float* v, const float* scale, int64_t n, float t) {
  std::vector<int64_t> kept(n);
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    kept[c] = i;
    c += std::fabs(v[i]) * (scale ? scale[i] : 1.f) >= t;
  }
  kept.resize(c);
  return kept;
}

// Neurons of the chosen experts, ascending; members (E, m) int64.
std::vector<int64_t> members_of(const torch::Tensor& members, const std::vector<int64_t>& experts, int64_t n) {
  TORCH_CHECK(members.scalar_type() == torch::kInt64 && members.is_contiguous() && members.dim() == 2,
              "members must be a contiguous int64 (experts, size) tensor");
  const int64_t m = members.size(1);
  const int64_t* p = members.data_ptr<int64_t>();
  std::vector<int64_t> kept;
  kept.reserve(experts.size() * m);
  for (int64_t e : experts)
    for (int64_t q = 0; q < m; ++q) {
      TORCH_CHECK(p[e * m + q] >= 0 && p[e * m + q] < n, "member index out of range");
      kept.push_back(p[e * m + q]);
    }
  std::sort(kept.begin(), kept.end());
  return kept;
}

// ---- argument checks ----------------------------------------------------------------------------

void check(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              what, " must be a contiguous float32 CPU tensor");
}

const float* mat(const torch::Tensor& t, const char* what, int64_t rows, int64_t cols) {
  check(t, what);
  TORCH_CHECK(t.numel() == rows * cols, what, " has ", t.numel(), " values, expected ", rows, " x ", cols);
  return t.data_ptr<float>();
}

const float* vec(const torch::Tensor& x, int64_t n, const char* what) { return mat(x, what, 1, n); }

// y = W x for W (out, in), rows split among tasks (a stream: not prefetched, see for_rows).
void gemv_into(const float* w, const float* x, int64_t in, int64_t out, float* y) {
  for_rows(w, in, out, 64, false, [&](int64_t i) { y[i] = dot(w + i * in, x, in); });
}

// ---- MLP kernels --------------------------------------------------------------------------------

// z = act(gate . x) * (up . x) of every neuron, gate and up streaming from gu (n, 2, d).
std::vector<float> z_all(const float* gu, int64_t n, int64_t d, const float* x, int64_t kind) {
  std::vector<float> z(n);
  for_rows(gu, 2 * d, n, 64, false, [&](int64_t i) {
    const float* r = gu + i * 2 * d;
    z[i] = act(dot(r, x, d), kind) * dot(r + d, x, d);
  });
  return z;
}

torch::Tensor down_rows(const float* dt, int64_t d, const std::vector<float>& z, const std::vector<int64_t>& kept) {
  auto row = [&](int64_t q) { return dt + kept[q] * d; };
  return sum_rows(kept.size(), d, d, row, [&](int64_t q) { return z[kept[q]]; }, row);
}

int64_t rows_of(const torch::Tensor& t) { return t.dim() ? t.size(0) : 0; }

// Dense MLP: every neuron (the baseline every method is timed against).
torch::Tensor mlp_dense(torch::Tensor gu, torch::Tensor dt, torch::Tensor x, int64_t kind) {
  const int64_t n = rows_of(dt), d = x.numel();
  const float* gp = mat(gu, "gu", 2 * n, d);
  const float* dp = mat(dt, "dt", n, d);
  const auto z = z_all(gp, n, d, vec(x, d, "x"), kind);
  auto row = [&](int64_t i) { return dp + i * d; };
  return sum_rows(n, d, 0, row, [&](int64_t i) { return z[i]; }, row);
}

// Neurons with |z_i| * scale_i >= t (scale empty: 1): tda, cett.
torch::Tensor mlp_z_threshold(torch::Tensor gu, torch::Tensor dt, torch::Tensor x, int64_t kind, double t,
                              torch::Tensor scale) {
  const int64_t n = rows_of(dt), d = x.numel();
  const float* sp = scale.numel() ? vec(scale, n, "scale") : nullptr;
  const auto z = z_all(mat(gu, "gu", 2 * n, d), n, d, vec(x, d, "x"), kind);
  return down_rows(mat(dt, "dt", n, d), d, z, at_least(z.data(), sp, n, static_cast<float>(t)));
}

// The k neurons of largest |z| (oracle).
torch::Tensor mlp_z_topk(torch::Tensor gu, torch::Tensor dt, torch::Tensor x, int64_t kind, int64_t k) {
  const int64_t n = rows_of(dt), d = x.numel();
  const auto z = z_all(mat(gu, "gu", 2 * n, d), n, d, vec(x, d, "x"), kind);
  std::vector<float> az(n);
  for (int64_t i = 0; i < n; ++i) az[i] = std::fabs(z[i]);
  return down_rows(mat(dt, "dt", n, d), d, z, top_k(az.data(), n, k));
}

// act(gate . x) of every neuron, the gate streaming from g (n, d).
std::vector<float> gate_all(const float* g, int64_t n, int64_t d, const float* x, int64_t kind) {
  std::vector<float> a(n);
  for_rows(g, d, n, 64, true, [&](int64_t i) { a[i] = act(dot(g + i * d, x, d), kind); });
  return a;
}

// up and down of the kept neurons, one block [up_i; W_down[:, i]] each from ud (n, 2, d).
torch::Tensor up_down_rows(const float* ud, int64_t d, const float* x, const std::vector<float>& a,
                           const std::vector<int64_t>& kept) {
  auto block = [&](int64_t q) { return ud + kept[q] * 2 * d; };
  return sum_rows(
      kept.size(), d, 2 * d, block, [&](int64_t q) { return a[kept[q]] * dot(block(q), x, d); },
      [&](int64_t q) { return block(q) + d; });
}

// |act(gate . x)| >= t: up and down for survivors only (cats).
torch::Tensor mlp_gate_threshold(torch::Tensor g, torch::Tensor ud, torch::Tensor x, int64_t kind, double t) {
  const int64_t n = rows_of(g), d = x.numel();
  const float* xp = vec(x, d, "x");
  const auto a = gate_all(mat(g, "g", n, d), n, d, xp, kind);
  return up_down_rows(mat(ud, "ud", 2 * n, d), d, xp, a, at_least(a.data(), nullptr, n, static_cast<float>(t)));
}

// Experts scored by the sum of |act(gate)| over their neurons, the k best kept (moe-oracle).
torch::Tensor mlp_gate_experts(torch::Tensor g, torch::Tensor ud, torch::Tensor x, int64_t kind,
                               torch::Tensor members, int64_t k) {
  const int64_t n = rows_of(g), d = x.numel();
  const float* xp = vec(x, d, "x");
  const auto a = gate_all(mat(g, "g", n, d), n, d, xp, kind);
  TORCH_CHECK(members.dim() == 2 && members.numel() <= n, "members must be (experts, size)");
  const int64_t E = members.size(0), m = members.size(1);
  const int64_t* mp = members.data_ptr<int64_t>();
  std::vector<float> score(E, 0.f);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t q = 0; q < m; ++q) score[e] += std::fabs(a[mp[e * m + q]]);
  return up_down_rows(mat(ud, "ud", 2 * n, d), d, xp, a, members_of(members, top_k(score.data(), E, k), n));
}

// gate, up and down of the kept neurons, one block [gate_i; up_i; W_down[:, i]] each.
torch::Tensor record_rows(const float* rec, int64_t d, const float* x, int64_t kind, const std::vector<int64_t>& kept) {
  auto block = [&](int64_t q) { return rec + kept[q] * 3 * d; };
  return sum_rows(
      kept.size(), d, 3 * d, block, [&](int64_t q) { return act(dot(block(q), x, d), kind) * dot(block(q) + d, x, d); },
      [&](int64_t q) { return block(q) + 2 * d; });
}

// DejaVu: logits = w2 (w1 x), the k largest kept. The router comes as one block per rank j,
// [w1_j; w2[:, j]] (r, d + n) (`kernels.router_blocks`): h_j = w1_j . x, then h_j w2[:, j] is added
// to the logits, so the router is one stream of blocks (a row of w2 has only r floats, too short for
// the dot product's 16-float vectors). As two products (h = w1 x, then the logits from w2^T) it took
// as long at 1 thread and 1.3 times as long at 2, where it was two parallel regions, not one
// (ad hoc, alternating on the real router). Streamed without `Ahead` it was slower at 1 thread.
torch::Tensor mlp_router_topk(torch::Tensor records, torch::Tensor x, int64_t kind, torch::Tensor router, int64_t k) {
  const int64_t d = x.numel(), n = records.numel() / (3 * std::max<int64_t>(1, d));
  const int64_t r = router.numel() / std::max<int64_t>(1, d + n);
  const float* xp = vec(x, d, "x");
  const float* rp = mat(router, "router", r, d + n);
  auto block = [&](int64_t j) { return rp + j * (d + n); };
  std::vector<float> logits(n);
  sum_rows_into(
      r, n, d + n, block, [&](int64_t j) { return dot(block(j), xp, d); }, [&](int64_t j) { return block(j) + d; },
      logits.data(), 16);
  return record_rows(mat(records, "records", 3 * n, d), d, xp, kind, top_k(logits.data(), n, k));
}

// MoE with its router: experts scored by x . centroid_e, the k best kept.
torch::Tensor mlp_router_experts(torch::Tensor records, torch::Tensor x, int64_t kind, torch::Tensor centroids,
                                 torch::Tensor members, int64_t k) {
  const int64_t d = x.numel(), E = rows_of(centroids), n = records.numel() / (3 * std::max<int64_t>(1, d));
  const float* xp = vec(x, d, "x");
  const float* c = mat(centroids, "centroids", E, d);
  TORCH_CHECK(rows_of(members) == E, "one member row per centroid");
  std::vector<float> score(E);
  for (int64_t e = 0; e < E; ++e) score[e] = dot(c + e * d, xp, d);
  return record_rows(mat(records, "records", 3 * n, d), d, xp, kind, members_of(members, top_k(score.data(), E, k), n));
}

// ---- input-channel skipping (TEAL) --------------------------------------------------------------

// y = W x over the input channels j with |x_j| >= t_s in output segment s: W's output rows cut
// into segments by `bounds` (S + 1 offsets from 0 to out), one threshold each (q, k and v of a
// stacked matrix; gate and up), wt = W^T (in, out) (`kernels.input_major`): channel j's weights
// are one contiguous row. A channel reads the part of its row that its kept segments cover, as
// one piece per run of consecutive kept segments: where the segments share a threshold (q, k, v
// and gate, up unless TEAL's greedy allocation parts them), a kept channel is one unbroken row,
// long enough to be fetched a group ahead (`sum_range`). The pieces are grouped by run; all
// groups' pieces split among tasks by their floats in one parallel region (a region per segment
// cost more than the skipped bytes saved on q/k/v at 2 threads).
void linear_t_into(const float* wt, int64_t in, int64_t out, const float* x, const std::vector<int64_t>& bounds,
                   const std::vector<float>& th, float* y) {
  const int64_t S = th.size();
  // group g = (a, b) = a * S + b: the channels whose kept segments include the run a..b, bounded
  // by dropped ones; each group's channels ascending, one group after another in `kept`
  std::vector<int64_t> kept(in * ((S + 1) / 2)), gid, first(1, 0), floats(1, 0);
  auto add_group = [&](int64_t g, int64_t end) {
    gid.push_back(g);
    first.push_back(end);
    floats.push_back(floats.back() + (end - first[first.size() - 2]) * (bounds[g % S + 1] - bounds[g / S]));
  };
  if (std::all_of(th.begin(), th.end(), [&](float t) { return t == th[0]; })) {
    // one threshold (TEAL's uniform sparsity): a kept channel is one unbroken row, group (0, S - 1);
    // branch-free, as half the channels are kept in no predictable order
    int64_t c = 0;
    for (int64_t j = 0; j < in; ++j) {
      kept[c] = j;
      c += !(std::fabs(x[j]) < th[0]);   // NaN kept: its row makes the output NaN, as the masked product
    }
    if (c > 0) add_group(S - 1, c);
  } else {
    std::vector<std::vector<int64_t>> rows(S * S);
    for (int64_t j = 0; j < in; ++j) {
      const float v = std::fabs(x[j]);
      for (int64_t a = 0; a < S;) {
        if (v < th[a]) { ++a; continue; }
        int64_t b = a;
        while (b + 1 < S && !(v < th[b + 1])) ++b;
        rows[a * S + b].push_back(j);
        a = b + 1;
      }
    }
    for (int64_t g = 0; g < S * S; ++g) {
      if (rows[g].empty()) continue;
      std::copy(rows[g].begin(), rows[g].end(), kept.begin() + first.back());
      add_group(g, first.back() + rows[g].size());
    }
  }
  const int64_t G = gid.size(), tasks = task_count(floats.back(), 64 * 576);
  auto piece_at = [&](int64_t f) {   // the first piece at or after float f of the whole work
    const int64_t g = std::upper_bound(floats.begin(), floats.end(), f) - floats.begin() - 1;
    if (g >= G) return first[G];
    const int64_t width = bounds[gid[g] % S + 1] - bounds[gid[g] / S];
    return std::min(first[g + 1], first[g] + (f - floats[g] + width - 1) / width);
  };
  std::vector<float> part(tasks * out, 0.f);
  run_tasks(tasks, [&](int64_t t) {   // one parallel region for all groups
    const int64_t q0 = piece_at(split(floats.back(), tasks, t)), q1 = piece_at(split(floats.back(), tasks, t + 1));
    for (int64_t g = 0; g < G; ++g) {
      const int64_t a = std::max(q0, first[g]), e = std::min(q1, first[g + 1]);
      if (a >= e) continue;
      const int64_t b = bounds[gid[g] / S], width = bounds[gid[g] % S + 1] - b;
      auto row = [&](int64_t q) { return wt + kept[q] * out + b; };
      sum_range(a, e, width, width, row, [&](int64_t q) { return x[kept[q]]; }, row, part.data() + t * out + b);
    }
  });
  add_parts(part, tasks, out, y);
}

// `linear_t_into` on W^T (in, out), its bounds and thresholds checked first.
void linear_t_checked(const torch::Tensor& wt, const float* x, int64_t in, int64_t out,
                      const std::vector<int64_t>& bounds, const std::vector<double>& thresholds, float* y) {
  TORCH_CHECK(bounds.size() == thresholds.size() + 1 && !thresholds.empty() && bounds.front() == 0 &&
                  bounds.back() == out,
              "bounds must run from 0 to out with one threshold per segment");
  linear_t_into(mat(wt, "wt", in, out), in, out, x, bounds, std::vector<float>(thresholds.begin(), thresholds.end()),
                y);
}

torch::Tensor linear_t(torch::Tensor wt, torch::Tensor x, std::vector<int64_t> bounds, std::vector<double> thresholds) {
  const int64_t in = x.numel(), out = bounds.empty() ? 0 : bounds.back();
  auto y = torch::empty({out});
  linear_t_checked(wt, vec(x, in, "x"), in, out, bounds, thresholds, y.data_ptr<float>());
  return y;
}

// TEAL's MLP: gate and up skip the input channels below their thresholds (gut: W_gate^T (d, n)
// then W_up^T (d, n)), z = act(g) * u, and down skips neurons with |z| < t_down.
torch::Tensor teal_mlp(torch::Tensor gut, torch::Tensor dt, torch::Tensor x, int64_t kind, double t_gate,
                       double t_up, double t_down) {
  const int64_t n = rows_of(dt), d = x.numel();
  const float* xp = vec(x, d, "x");
  std::vector<float> gu(2 * n);
  linear_t_into(mat(gut, "gut", d, 2 * n), d, 2 * n, xp, {0, n, 2 * n},
                {static_cast<float>(t_gate), static_cast<float>(t_up)}, gu.data());
  std::vector<float> z(n);
  const int64_t tasks = task_count(n, 256);   // the activation split among the tasks, as in z_all
  run_tasks(tasks, [&](int64_t t) {
    for (int64_t i = split(n, tasks, t); i < split(n, tasks, t + 1); ++i) z[i] = act(gu[i], kind) * gu[n + i];
  });
  return down_rows(mat(dt, "dt", n, d), d, z, at_least(z.data(), nullptr, n, static_cast<float>(t_down)));
}

// ---- dense -----------------------------------------------------------------------------------------

// y = W x for W (out, in), rows split among tasks.
torch::Tensor gemv(torch::Tensor w, torch::Tensor x) {
  const int64_t in = x.numel(), out = w.numel() / std::max<int64_t>(1, in);
  const float* wp = mat(w, "w", out, in);
  const float* xp = vec(x, in, "x");
  auto y = torch::empty({out});
  gemv_into(wp, xp, in, out, y.data_ptr<float>());
  return y;
}

// ---- the attention half of a Llama decode step (llama_step.py) ------------------------------------

// x * rsqrt(mean(x^2) + eps) * w (LlamaRMSNorm, float32).
void rms_norm(const float* x, const float* w, double eps, int64_t d, float* y) {
  double ss = 0.0;
  for (int64_t j = 0; j < d; ++j) ss += double(x[j]) * x[j];
  const float r = 1.f / std::sqrt(static_cast<float>(ss / d) + static_cast<float>(eps));
  for (int64_t j = 0; j < d; ++j) y[j] = x[j] * r * w[j];
}

// y = W x: W (out, in) read row by row when `thresholds` is empty (dense), else W^T (in, out) with
// input channels below their segment's threshold skipped (TEAL, `linear_t_into`).
void product(const torch::Tensor& w, const float* x, int64_t in, int64_t out, const std::vector<int64_t>& bounds,
             const std::vector<double>& thresholds, float* y) {
  if (thresholds.empty())
    gemv_into(mat(w, "weight", out, in), x, in, out, y);
  else
    linear_t_checked(w, x, in, out, bounds, thresholds, y);
}

// One layer's attention for one new token at position `pos`, batch 1, in place of the dozens of
// small torch calls it took in Python: h_out = h + o(attention(rope(qkv(norm1(h))))) and
// mlp_in = norm2(h_out). The new key and value are written to the caches k, v (positions, nkv,
// hd). q, k, v come from one product over their stacked weights (`product`: dense or TEAL's
// skipping); cos and sin (hd,) are the rotary embedding of `pos` with sin's first half negated,
// so that rope(x)_j = x_j cos_j + x_(j + hd/2 mod hd) sin_j. Query head h reads kv head
// h / (nh / nkv). Returns {h_out, mlp_in}.
std::vector<torch::Tensor> llama_attention(torch::Tensor h, torch::Tensor norm1, double eps1, torch::Tensor w_qkv,
                                           const std::vector<int64_t>& qkv_bounds,
                                           const std::vector<double>& qkv_thresholds, torch::Tensor cos,
                                           torch::Tensor sin, torch::Tensor kc, torch::Tensor vc, int64_t pos,
                                           int64_t nh, int64_t nkv, int64_t hd, double scaling, torch::Tensor w_o,
                                           const std::vector<double>& o_thresholds, torch::Tensor norm2,
                                           double eps2) {
  const int64_t d = h.numel(), nq = nh * hd, nk = nkv * hd;
  TORCH_CHECK(nh > 0 && nkv > 0 && nh % nkv == 0 && hd % 2 == 0, "heads must group evenly, head size even");
  check(kc, "k cache");
  check(vc, "v cache");
  TORCH_CHECK(kc.dim() == 3 && kc.size(1) == nkv && kc.size(2) == hd && vc.sizes() == kc.sizes(),
              "caches must be (positions, nkv, hd)");
  TORCH_CHECK(pos >= 0 && pos < kc.size(0), "position ", pos, " outside the cache of ", kc.size(0));
  const float* hp = vec(h, d, "h");
  const float *c = vec(cos, hd, "cos"), *sn = vec(sin, hd, "sin");
  std::vector<float> x(d), qkv(nq + 2 * nk), q(nq), att(nq);
  rms_norm(hp, vec(norm1, d, "norm1"), eps1, d, x.data());
  product(w_qkv, x.data(), d, nq + 2 * nk, qkv_bounds, qkv_thresholds, qkv.data());
  float* kp = kc.data_ptr<float>() + pos * nk;
  float* vp = vc.data_ptr<float>() + pos * nk;
  const int64_t half = hd / 2;
  for (int64_t r = 0; r < nh + nkv; ++r) {   // rope on each head of q and of k
    const float* src = qkv.data() + r * hd;
    float* dst = r < nh ? q.data() + r * hd : kp + (r - nh) * hd;
    for (int64_t j = 0; j < hd; ++j) dst[j] = src[j] * c[j] + src[(j + half) % hd] * sn[j];
  }
  std::memcpy(vp, qkv.data() + nq + nk, nk * sizeof(float));
  const float* ks = kc.data_ptr<float>();
  const float* vs = vc.data_ptr<float>();
  const int64_t group = nh / nkv, T = pos + 1;
  auto head = [&](int64_t hq) {
    const int64_t g = hq / group;
    const float* qh = q.data() + hq * hd;
    std::vector<float> w(T);
    float mx = -INFINITY;
    for (int64_t t = 0; t < T; ++t) {
      w[t] = dot(ks + (t * nkv + g) * hd, qh, hd) * static_cast<float>(scaling);
      mx = std::max(mx, w[t]);
    }
    float sum = 0.f;
    for (int64_t t = 0; t < T; ++t) sum += (w[t] = std::exp(w[t] - mx));
    float* out = att.data() + hq * hd;
    std::fill(out, out + hd, 0.f);
    for (int64_t t = 0; t < T; ++t) axpy(w[t] / sum, vs + (t * nkv + g) * hd, out, hd);
  };
  if (T * nh >= 4096) {
    at::parallel_for(0, nh, 1, [&](int64_t b, int64_t e) {
      for (int64_t hq = b; hq < e; ++hq) head(hq);
    });
  } else {
    for (int64_t hq = 0; hq < nh; ++hq) head(hq);
  }
  auto h_out = torch::empty({d});
  float* ho = h_out.data_ptr<float>();
  product(w_o, att.data(), nq, d, {0, d}, o_thresholds, ho);
  for (int64_t j = 0; j < d; ++j) ho[j] += hp[j];
  auto mlp_in = torch::empty({d});
  rms_norm(ho, vec(norm2, d, "norm2"), eps2, d, mlp_in.data_ptr<float>());
  return {h_out, mlp_in};
}

// ---- a whole decode step in one call (llama_step.LlamaDecoder with per-layer kernels) ----------

// An MLP kernel bound to its layer's weights and settings (`bind_*`): one token's MLP input (d,)
// -> its output (d,). Python calls it as a function (decode.KernelMLP); `Decoder` calls it directly.
struct Mlp {
  std::function<torch::Tensor(const torch::Tensor&)> run;
  torch::Tensor operator()(const torch::Tensor& x) const { return run(x); }
};

// One layer's arguments of `llama_attention` that stay fixed from step to step: norm1, eps1, w_qkv,
// qkv bounds, qkv thresholds, w_o, o thresholds, norm2, eps2, scaling, and its k and v caches.
using LayerArgs = std::tuple<torch::Tensor, double, torch::Tensor, std::vector<int64_t>, std::vector<double>,
                             torch::Tensor, std::vector<double>, torch::Tensor, double, double, torch::Tensor,
                             torch::Tensor>;

// A Llama decode step in one call: the token's embedding, each layer's attention half
// (`llama_attention`) and MLP kernel with the residual, the final norm and the LM head, with no
// Python in between. With a call per layer from Python, the time outside the kernels was about
// 1.6 ms of a 32 ms dense step at 1 thread (ad hoc), the same for dense and every method, so it
// hid part of what a method skips. cos and sin (positions, hd) hold the rotary embedding of every
// position from `first` on that the decode reaches, sin's first half negated (as `llama_attention`
// takes them).
class Decoder {
 public:
  Decoder(torch::Tensor embed, std::vector<LayerArgs> layers, std::vector<Mlp> mlps, torch::Tensor cos,
          torch::Tensor sin, torch::Tensor norm, double eps, torch::Tensor head, int64_t nh, int64_t nkv,
          int64_t hd, int64_t first)
      : embed_(embed), layers_(std::move(layers)), mlps_(std::move(mlps)), cos_(cos), sin_(sin), norm_(norm),
        head_(head), eps_(eps), nh_(nh), nkv_(nkv), hd_(hd), first_(first) {
    check(embed, "embed");
    TORCH_CHECK(embed.dim() == 2 && embed.size(1) > 0, "embed must be (vocab, d)");
    TORCH_CHECK(layers_.size() == mlps_.size(), "one MLP kernel per layer");
    d_ = embed.size(1);
    vocab_ = head.numel() / d_;
    mat(head, "head", vocab_, d_);
    vec(norm, d_, "norm");
    mat(cos, "cos", cos.numel() / std::max<int64_t>(1, hd), hd);
    TORCH_CHECK(cos.dim() == 2 && sin.sizes() == cos.sizes(), "cos and sin must be (positions, hd)");
    check(sin, "sin");
  }

  // The logits (vocab,) after `token` at position `pos`; its k and v are written to the caches.
  torch::Tensor step(int64_t token, int64_t pos) {
    TORCH_CHECK(token >= 0 && token < embed_.size(0), "token ", token, " outside the vocabulary");
    TORCH_CHECK(pos >= first_ && pos < first_ + cos_.size(0), "position ", pos, " outside the rotary table (",
                first_, " to ", first_ + cos_.size(0) - 1, ")");
    torch::Tensor h = embed_[token].clone();
    const torch::Tensor c = cos_[pos - first_], s = sin_[pos - first_];
    for (size_t i = 0; i < layers_.size(); ++i) {
      const auto& [n1, e1, w_qkv, bounds, t_qkv, w_o, t_o, n2, e2, scaling, kc, vc] = layers_[i];
      auto hx = llama_attention(h, n1, e1, w_qkv, bounds, t_qkv, c, s, kc, vc, pos, nh_, nkv_, hd_, scaling, w_o, t_o,
                                n2, e2);
      h = hx[0];
      const torch::Tensor y = mlps_[i](hx[1]);
      const float* yp = vec(y, d_, "MLP output");
      float* hp = h.data_ptr<float>();
      for (int64_t j = 0; j < d_; ++j) hp[j] += yp[j];
    }
    std::vector<float> x(d_);
    rms_norm(h.data_ptr<float>(), norm_.data_ptr<float>(), eps_, d_, x.data());
    auto logits = torch::empty({vocab_});
    gemv_into(head_.data_ptr<float>(), x.data(), d_, vocab_, logits.data_ptr<float>());
    return logits;
  }

 private:
  torch::Tensor embed_;
  std::vector<LayerArgs> layers_;
  std::vector<Mlp> mlps_;
  torch::Tensor cos_, sin_, norm_, head_;
  double eps_;
  int64_t nh_, nkv_, hd_, first_, d_ = 0, vocab_ = 0;
};

// Float32 memory of `n` floats aligned to 2 MiB and advised for transparent huge pages: weights
// streamed once per token then cost fewer TLB misses and prefetch across 4 KiB page edges.
torch::Tensor hugepage_empty(at::IntArrayRef sizes) {
  int64_t n = 1;
  for (auto s : sizes) n *= s;
  const size_t bytes = std::max<size_t>(sizeof(float), n * sizeof(float)), huge = size_t(2) << 20;
  const size_t size = (bytes + huge - 1) / huge * huge;
  void* p = std::aligned_alloc(huge, size);
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, size, MADV_HUGEPAGE);
#endif
  return torch::from_blob(p, sizes, [](void* q) { std::free(q); }, torch::TensorOptions().dtype(torch::kFloat32));
}

torch::Tensor hugepage_copy(torch::Tensor t) {
  auto src = t.contiguous().to(torch::kFloat32);
  auto out = hugepage_empty(src.sizes());
  std::memcpy(out.data_ptr<float>(), src.data_ptr<float>(), src.numel() * sizeof(float));
  return out;
}

// Rows idx of t (n, ...) into new huge-page memory (k, ...): a sliced MLP for one prompt.
torch::Tensor hugepage_rows(torch::Tensor t, torch::Tensor idx) {
  check(t, "t");
  TORCH_CHECK(idx.scalar_type() == torch::kInt64 && idx.dim() == 1, "idx must be int64 (k,)");
  auto ix = idx.contiguous();
  std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
  const int64_t n = sizes[0], row = t.numel() / std::max<int64_t>(1, n), k = ix.numel();
  sizes[0] = k;
  auto out = hugepage_empty(sizes);
  const int64_t* ip = ix.data_ptr<int64_t>();
  for (int64_t q = 0; q < k; ++q) TORCH_CHECK(ip[q] >= 0 && ip[q] < n, "row index out of range");
  const float* src = t.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t tasks = task_count(k, 16);
  run_tasks(tasks, [&](int64_t t) {
    for (int64_t q = split(k, tasks, t); q < split(k, tasks, t + 1); ++q)
      std::memcpy(dst + q * row, src + ip[q] * row, row * sizeof(float));
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mlp_dense", &mlp_dense);
  m.def("mlp_z_threshold", &mlp_z_threshold);
  m.def("mlp_z_topk", &mlp_z_topk);
  m.def("mlp_gate_threshold", &mlp_gate_threshold);
  m.def("mlp_gate_experts", &mlp_gate_experts);
  m.def("mlp_router_topk", &mlp_router_topk);
  m.def("mlp_router_experts", &mlp_router_experts);
  m.def("linear_t", &linear_t);
  m.def("teal_mlp", &teal_mlp);
  m.def("gemv", &gemv);
  m.def("llama_attention", &llama_attention);
  m.def("hugepage_copy", &hugepage_copy);
  // the MLP kernels above bound to a layer's weights and settings: Mlp(x) runs them on x
  pybind11::class_<Mlp>(m, "Mlp").def("__call__", &Mlp::operator());
  using T = torch::Tensor;
  m.def("bind_mlp_dense", [](T gu, T dt, int64_t kind) {
    return Mlp{[=](const T& x) { return mlp_dense(gu, dt, x, kind); }};
  });
  m.def("bind_mlp_z_threshold", [](T gu, T dt, int64_t kind, double t, T scale) {
    return Mlp{[=](const T& x) { return mlp_z_threshold(gu, dt, x, kind, t, scale); }};
  });
  m.def("bind_mlp_z_topk", [](T gu, T dt, int64_t kind, int64_t k) {
    return Mlp{[=](const T& x) { return mlp_z_topk(gu, dt, x, kind, k); }};
  });
  m.def("bind_mlp_gate_threshold", [](T g, T ud, int64_t kind, double t) {
    return Mlp{[=](const T& x) { return mlp_gate_threshold(g, ud, x, kind, t); }};
  });
  m.def("bind_mlp_gate_experts", [](T g, T ud, int64_t kind, T members, int64_t k) {
    return Mlp{[=](const T& x) { return mlp_gate_experts(g, ud, x, kind, members, k); }};
  });
  m.def("bind_mlp_router_topk", [](T records, int64_t kind, T router, int64_t k) {
    return Mlp{[=](const T& x) { return mlp_router_topk(records, x, kind, router, k); }};
  });
  m.def("bind_mlp_router_experts", [](T records, int64_t kind, T centroids, T members, int64_t k) {
    return Mlp{[=](const T& x) { return mlp_router_experts(records, x, kind, centroids, members, k); }};
  });
  m.def("bind_teal_mlp", [](T gut, T dt, int64_t kind, double t_gate, double t_up, double t_down) {
    return Mlp{[=](const T& x) { return teal_mlp(gut, dt, x, kind, t_gate, t_up, t_down); }};
  });
  pybind11::class_<Decoder>(m, "Decoder")
      .def(pybind11::init<T, std::vector<LayerArgs>, std::vector<Mlp>, T, T, T, double, T, int64_t, int64_t, int64_t,
                          int64_t>())
      .def("step", &Decoder::step, pybind11::call_guard<pybind11::gil_scoped_release>());   // no Python inside
  m.def("hugepage_rows", &hugepage_rows);
}
