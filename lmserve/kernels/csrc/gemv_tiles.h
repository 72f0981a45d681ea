// Register tiles of the low-bit GEMV: R weight rows x MB activation rows, R * MB <= 4.
// Included by quant_gemv.cpp only. Layouts are described there and in quant_gemv.h.
//
// Why the tile shapes: a 64-weight chunk costs ~28 vector uops (8 AND/shift, 8 converts, 8 FMAs
// with x, 2 scale folds), ~7-8 cycles at Zen 3's 4 FP pipes, and getting there needs >= 4
// independent FMA chains. With one x row, four weight rows give the four chains and share every
// x load; with 2 x rows, two weight rows; with 3-4 x rows the x rows alone suffice. Measured on
// Zen 3 (cycles per 64 weights per x row, in = 576, 32-byte aligned x in L1): 1 row x 1 chain
// ~18.5 (~13.7 with 2 chains), 4 rows 9.2; M = 2 (2x2) 7.2; M = 4 (1x4) 6.3.
// Tried and slower: dequantize-then-FMA (w = q s + m, then one FMA per x row) for M = 2-4, and
// interleaving the two groups' chains of a chunk.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <utility>

namespace lmserve {
namespace tiles {

// Sums of the 8 lanes of a, b, c, d, as the four lanes of one vector.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// Nibble K of every 32-bit lane as float: q * 16^K, except K == 7, shifted down because
// q << 28 does not fit a signed int32. The prepared x carries the inverse power of two.
template <int K>
inline __m256 nibble(__m256i v) {
  if constexpr (K == 7) return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28));
  else return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xF << (4 * K))));
}

template <int K>
inline __m128 nibble(__m128i v) {
  if constexpr (K == 7) return _mm_cvtepi32_ps(_mm_srli_epi32(v, 28));
  else return _mm_cvtepi32_ps(_mm_and_si128(v, _mm_set1_epi32(0xF << (4 * K))));
}

template <int R, int MB>
struct Acc {
  __m256 v[R][MB];
  void zero() {
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) v[r][m] = _mm256_setzero_ps();
  }
};

// p[r][m] += nibble K of chunk word v[r] times the x slice (8 lanes) of block row m.
template <int R, int MB, int K>
inline void nibble_step(const __m256i* v, const float* x, Acc<R, MB>& p) {
  for (int r = 0; r < R; ++r) {
    const __m256 w = nibble<K>(v[r]);
    for (int m = 0; m < MB; ++m)
      p.v[r][m] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + (K * 8) * MB + m * 8), p.v[r][m]);
  }
}

template <int R, int MB, int... K>
inline void nibble_steps(const __m256i* v, const float* x, Acc<R, MB>& p,
                         std::integer_sequence<int, K...>) {
  (nibble_step<R, MB, K>(v, x, p), ...);
}

// acc += p * scale of group g (per weight row r, from the fp32 scale rows s[r * ngp + g]).
template <int R, int MB>
inline void fold(Acc<R, MB>& acc, const Acc<R, MB>& p, const float* s, int64_t ngp, int64_t g) {
  for (int r = 0; r < R; ++r) {
    const __m256 sg = _mm256_broadcast_ss(s + r * ngp + g);
    for (int m = 0; m < MB; ++m) acc.v[r][m] = _mm256_fmadd_ps(p.v[r][m], sg, acc.v[r][m]);
  }
}

// Adds the min term sum_g min[r][g] * xsum[m][g] (rows padded with zeros to ngp, a multiple
// of 8) and writes the R * MB dot products to out[r * MB + m].
template <int R, int MB>
inline void finish(Acc<R, MB>& acc, const float* mn, const float* xsum, int64_t ngp,
                   float* out) {
  if (mn) {
    for (int64_t g = 0; g < ngp; g += 8)
      for (int r = 0; r < R; ++r) {
        const __m256 mv = _mm256_loadu_ps(mn + r * ngp + g);
        for (int m = 0; m < MB; ++m)
          acc.v[r][m] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xsum + m * ngp + g), acc.v[r][m]);
      }
  }
  __m256 flat[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                    _mm256_setzero_ps()};
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) flat[r * MB + m] = acc.v[r][m];
  alignas(16) float sums[4];
  _mm_store_ps(sums, hsum4(flat[0], flat[1], flat[2], flat[3]));
  for (int i = 0; i < R * MB; ++i) out[i] = sums[i];
}

// Dot of the trailing 4-word chunk with one x row's slices (4 lanes each, MB rows apart).
template <int... K>
inline __m128 tail_dot(__m128i v4, const float* x, int MB, std::integer_sequence<int, K...>) {
  __m128 p4 = _mm_setzero_ps();
  ((p4 = _mm_fmadd_ps(nibble<K>(v4), _mm_loadu_ps(x + (K * 4) * MB), p4)), ...);
  return p4;
}

using Lo = std::integer_sequence<int, 0, 1, 2, 3>;
using Hi = std::integer_sequence<int, 4, 5, 6, 7>;
using All = std::make_integer_sequence<int, 8>;

// 4-bit rows in the word-interleaved layout; x block in the prepared layout.
template <int R, int MB, int G>
void tile4(const uint8_t* q, int64_t q_stride, const float* s, const float* mn, int64_t ngp,
           const float* xb, const float* xsum, int64_t in, float* out) {
  Acc<R, MB> acc, p;
  acc.zero();
  const int64_t n64 = in / 64;
  constexpr int kChunks = G == 32 ? 1 : G / 64;
  __m256i v[R];
  for (int64_t c = 0; c < n64; c += kChunks) {
    if constexpr (G == 32) {
      for (int r = 0; r < R; ++r)
        v[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r * q_stride + c * 32));
      const float* x = xb + c * 64 * MB;
      p.zero();
      nibble_steps(v, x, p, Lo{});
      fold(acc, p, s, ngp, 2 * c);
      p.zero();
      nibble_steps(v, x, p, Hi{});
      fold(acc, p, s, ngp, 2 * c + 1);
    } else {
      p.zero();
      for (int cc = 0; cc < kChunks; ++cc) {
        for (int r = 0; r < R; ++r)
          v[r] = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(q + r * q_stride + (c + cc) * 32));
        nibble_steps(v, xb + (c + cc) * 64 * MB, p, All{});
      }
      fold(acc, p, s, ngp, c / kChunks);
    }
  }
  if (G == 32 && in % 64) {   // trailing 32-element chunk: four words, 4 lanes per nibble
    const float* x = xb + n64 * 64 * MB;
    for (int r = 0; r < R; ++r) {
      const __m128i v4 =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + r * q_stride + n64 * 32));
      const __m256 sg = _mm256_broadcast_ss(s + r * ngp + 2 * n64);
      for (int m = 0; m < MB; ++m)
        acc.v[r][m] = _mm256_fmadd_ps(_mm256_zextps128_ps256(tail_dot(v4, x + m * 4, MB, All{})),
                                      sg, acc.v[r][m]);
    }
  }
  finish(acc, mn, xsum, ngp, out);
}

// Signed 8-bit rows in natural order; x block in the prepared layout (unscaled).
template <int R, int MB, int G>
void tile8(const uint8_t* qb, int64_t q_stride, const float* s, const float* mn, int64_t ngp,
           const float* xb, const float* xsum, int64_t in, float* out) {
  const int8_t* q = reinterpret_cast<const int8_t*>(qb);
  Acc<R, MB> acc, p;
  acc.zero();
  const int64_t ng = in / G;
  for (int64_t g = 0; g < ng; ++g) {
    p.zero();
    for (int j = 0; j < G; j += 8) {
      const float* x = xb + (g * G + j) * MB;
      for (int r = 0; r < R; ++r) {
        const __m128i b =
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + r * q_stride + g * G + j));
        const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        for (int m = 0; m < MB; ++m)
          p.v[r][m] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + m * 8), p.v[r][m]);
      }
    }
    fold(acc, p, s, ngp, g);
  }
  finish(acc, mn, xsum, ngp, out);
}

}  // namespace tiles
}  // namespace lmserve
