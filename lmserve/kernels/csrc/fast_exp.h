// exp(x) for fp32 as a fixed sequence of multiplies and adds, 8 lanes at a time with AVX2 and
// lane by lane with the same operations in the same order (so both give identical bits).
// Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so r is exact), a degree-6
// polynomial for e^r, and 2^n put into the exponent bits. Within 1 ulp of the exact value over
// [-87, 88] (measured: at most 0.98 ulp against exp in double, 2e7 points); inputs are clamped
// to that range, where 2^n stays a normal number. ~5x faster than std::exp in a loop.
//
// Written with intrinsics, not left to the auto-vectorizer: GCC turned the clamp into a second,
// constant-input evaluation blended in afterwards, whose x / (1 + e^87) lanes are subnormal and
// took a microcode assist each (SiLU ran 6x slower than with std::exp).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace lmserve {

namespace fast_exp_detail {
constexpr float kLo = -87.0f, kHi = 88.0f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
}  // namespace fast_exp_detail

inline float fast_exp(float x) {
  using namespace fast_exp_detail;
  x = std::min(std::max(x, kLo), kHi);
  const float n = std::floor(x * kLog2e + 0.5f);
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kP[0];
  for (int i = 1; i < 6; ++i) p = p * r + kP[i];
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline __m256 fast_exp8(__m256 x) {
  using namespace fast_exp_detail;
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kLo)), _mm256_set1_ps(kHi));
  const __m256 n = _mm256_floor_ps(
      _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Hi)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Lo)));
  __m256 p = _mm256_set1_ps(kP[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP[i]));
  p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

}  // namespace lmserve
