// The online-softmax step of the CPU decode-attention kernels (float and quantized cache): fold
// one block's scores into a running max and sum.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "attention_vec.h"

namespace lmserve::attn {

// Turns row s (n scores, room for a multiple of 8) into exp(s - new max) in place and folds it
// into the running max m and sum l, rescaling the accumulated output row when the max grew.
inline void online_softmax_update(float* s, int64_t n, float& m, float& l, float* acc, int64_t D) {
  const int64_t padded = (n + 7) / 8 * 8;
  for (int64_t i = n; i < padded; ++i) s[i] = -std::numeric_limits<float>::infinity();
  __m256 vmax = _mm256_loadu_ps(s);
  for (int64_t i = 8; i < padded; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + i));
  const float m_new = std::max(m, hmax(vmax));
  if (m_new != m) {
    const float alpha = std::isinf(m) ? 0.0f : std::exp(m - m_new);
    l *= alpha;
    const __m256 va = _mm256_set1_ps(alpha);
    for (int64_t d = 0; d < D; d += 8)
      _mm256_storeu_ps(acc + d, _mm256_mul_ps(va, _mm256_loadu_ps(acc + d)));
    m = m_new;
  }
  const __m256 vm = _mm256_set1_ps(m_new);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t i = 0; i < padded; i += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
    _mm256_storeu_ps(s + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  l += hsum(vsum);
}

}  // namespace lmserve::attn
