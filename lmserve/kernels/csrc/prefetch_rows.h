// Software prefetch of the weight rows a GEMV thread reads next.
// Why: a decode step streams ~90 MB of low-bit weights, more than the cache holds, and the
// hardware prefetcher alone leaves the GEMV waiting on memory: on the 2-core Xeon we measure on,
// one thread read SmolLM2's 30 layers at 4.6 GB/s cold against 12 GB/s for a plain stream, and
// took about the sum of compute and memory time (one 3072x576 Q4 matrix: 95 us cached, 190 us
// cold) instead of the larger of the two.
// Static, so each translation unit (AVX2 and AVX-512) has its own copy, compiled for its ISA.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>

#include "quant_gemv.h"

namespace lmserve {

// Bytes of weight rows to run ahead of the rows being multiplied. 6 KB measured best there with two
// threads (30 layers at M = 1: 6.4 ms without prefetch, 4.8 at 2 KB, 4.1 at 6 KB, 4.4 at 12 KB);
// one thread liked 8 KB (12.8 -> 7.8 ms). LMSERVE_GEMV_PREFETCH_BYTES overrides it for tuning on
// other CPUs (0 turns prefetching off).
static inline int64_t prefetch_distance() {
  static const int64_t d = [] {
    const char* e = std::getenv("LMSERVE_GEMV_PREFETCH_BYTES");
    return e ? std::atoll(e) : int64_t{6144};
  }();
  return d;
}

// Prefetches rows [o + ahead, o + ahead + n) of w (their quantized bytes, scales and mins),
// clipped to row_end, where `ahead` is prefetch_distance() in rows.
static inline void prefetch_rows(const QuantMatrix& w, int64_t o, int n, int64_t row_end) {
  const int64_t dist = prefetch_distance();
  if (dist <= 0) return;
  const int64_t first = o + (dist + w.q_stride - 1) / w.q_stride;
  const int64_t last = first + n < row_end ? first + n : row_end;
  if (first >= last) return;
  const char* q = reinterpret_cast<const char*>(w.q);
  for (int64_t b = first * w.q_stride; b < last * w.q_stride; b += 64)
    _mm_prefetch(q + b, _MM_HINT_T0);
  const int64_t s_elt = w.scales_half ? 2 : 4, m_elt = w.mins_half ? 2 : 4;
  const char* s = static_cast<const char*>(w.scales);
  for (int64_t b = first * w.scale_stride * s_elt; b < last * w.scale_stride * s_elt; b += 64)
    _mm_prefetch(s + b, _MM_HINT_T0);
  if (w.mins) {
    const char* m = static_cast<const char*>(w.mins);
    for (int64_t b = first * w.min_stride * m_elt; b < last * w.min_stride * m_elt; b += 64)
      _mm_prefetch(m + b, _MM_HINT_T0);
  }
}

}  // namespace lmserve
