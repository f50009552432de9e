// The k-th largest of n floats by a radix step, not a sort, shared by row_stats.cpp (each row's
// top-k mask) and sparse_decode.cpp (a decode kernel's kept rows), so that the simulated masks and
// the executed kernels choose the same set. One pass counts order-preserving keys of the floats
// into 2048 buckets by their top 11 bits (sign, exponent, 2 mantissa bits); only the bucket that
// holds the k-th value goes through std::nth_element. Values compare by their keys, so -0.0 ranks
// below +0.0 (torch.topk may take either); everything else ranks as the floats do.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moyu {

constexpr int RADIX_SHIFT = 21;                                   // 32 - 11 bits
constexpr int64_t RADIX_BUCKETS = int64_t(1) << (32 - RADIX_SHIFT);

// Unsigned key with the order of the float (NaN aside): negatives flipped, positives offset.
inline uint32_t order_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u >> 31) ? ~u : (u | 0x80000000u);
}

// The k largest of keys[0, n) (1 <= k < n), ties at the k-th value going to the lowest indices,
// are the keys above `kth` and the first `ties` keys equal to it; `equal` counts the keys equal to
// it (ties == equal: every key >= kth). cand (n) and count (RADIX_BUCKETS) are scratch.
struct Kth {
  uint32_t kth;
  int64_t ties, equal;
};

inline Kth kth_largest(const uint32_t* keys, int64_t n, int64_t k, uint32_t* cand, uint32_t* count) {
  std::fill(count, count + RADIX_BUCKETS, 0u);
  for (int64_t i = 0; i < n; ++i) ++count[keys[i] >> RADIX_SHIFT];
  int64_t need = k, b = RADIX_BUCKETS - 1;
  while (count[b] < need) need -= count[b--];                     // the k-th largest lies in bucket b
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {                                // bucket b's keys, without a branch
    cand[m] = keys[i];
    m += (keys[i] >> RADIX_SHIFT) == static_cast<uint32_t>(b);
  }
  std::nth_element(cand, cand + (m - need), cand + m);
  const uint32_t kth = cand[m - need];
  int64_t above = 0, equal = 0;                                    // bucket b's keys above and at kth
  for (int64_t q = 0; q < m; ++q) {
    above += cand[q] > kth;
    equal += cand[q] == kth;
  }
  return {kth, need - above, equal};
}

}  // namespace moyu
