// AVX2/FMA/F16C kernels for low-bit weights times fp32 activations.
//
// 4-bit row layout ("word-interleaved"): a row is a run of 64-element chunks of 32 bytes, read as
// eight little-endian uint32 words; element k*8 + j of the chunk is nibble k (bits 4k..4k+3) of
// word j. When in % 64 == 32 a final 32-element chunk of four words holds element k*4 + j in
// nibble k of word j. Masking nibble k of one 256-bit load therefore yields eight consecutive
// weights already in lane order: one AND and one int->float convert per 8 weights, no shuffles.
// The masked value is q * 16^k; prepare_x multiplies the matching x lanes by 16^-k, and since
// both factors are scaled by powers of two the products q * x are bit-identical to unscaled ones.
//
// The dot product is factored per group: sum_i x_i (q_i s + m) = s * sum_i x_i q_i + m * sum_i x_i,
// so the scale costs one FMA per group and the min one FMA per 8 groups via the group sums of x.
// The weights stay in memory in low-bit form; only registers ever see them as fp32.
//
// Prepared x: rows go in blocks of up to 4 (block b holds rows 4b.. of x). Within a block of MB
// rows, the slice of `lanes` elements starting at element e of block row m sits at
// block + e * MB + m * lanes (lanes = 8, or 4 in a trailing 32-chunk), so every x load of a
// tile is at a constant offset from one pointer. After all blocks come the group sums, one row
// of ngp (groups rounded up to 8, zero padded) per x row.
#include "quant_gemv.h"
#include "prefetch_rows.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gemv_tiles.h"

namespace lmserve {
namespace {

constexpr int kBlockM = 4;

int64_t padded_groups(const QuantMatrix& w) { return (w.in / w.group + 7) / 8 * 8; }

using TileFn = void (*)(const uint8_t*, int64_t, const float*, const float*, int64_t,
                        const float*, const float*, int64_t, float*);

template <int G>
TileFn pick_tile(int bits, int R, int MB) {
  using namespace tiles;
  if (R == 4) return bits == 4 ? tile4<4, 1, G> : tile8<4, 1, G>;
  if (R == 2) return bits == 4 ? tile4<2, 2, G> : tile8<2, 2, G>;   // only M == 2 uses R = 2
  switch (MB) {
    case 1: return bits == 4 ? tile4<1, 1, G> : tile8<1, 1, G>;
    case 2: return bits == 4 ? tile4<1, 2, G> : tile8<1, 2, G>;
    case 3: return bits == 4 ? tile4<1, 3, G> : tile8<1, 3, G>;
    default: return bits == 4 ? tile4<1, 4, G> : tile8<1, 4, G>;
  }
}

TileFn pick_tile(const QuantMatrix& w, int R, int MB) {
  switch (w.group) {
    case 32: return pick_tile<32>(w.bits, R, MB);
    case 64: return pick_tile<64>(w.bits, R, MB);
    default: return pick_tile<128>(w.bits, R, MB);
  }
}

struct RowTiles {
  TileFn full, last, single, single_last;
};

void to_f32(const void* src, bool half, int64_t n, float* dst) {
  if (!half) {
    std::copy_n(static_cast<const float*>(src), n, dst);
    return;
  }
  const uint16_t* h = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(h[i]);
}

// Row o's scales and mins as fp32 (mins untouched when the matrix has none).
void row_params(const QuantMatrix& w, int64_t o, int64_t ng, float* s, float* m) {
  const int64_t s_elt = w.scales_half ? 2 : 4, m_elt = w.mins_half ? 2 : 4;
  to_f32(static_cast<const char*>(w.scales) + o * w.scale_stride * s_elt, w.scales_half, ng, s);
  if (w.mins)
    to_f32(static_cast<const char*>(w.mins) + o * w.min_stride * m_elt, w.mins_half, ng, m);
}

}  // namespace

int64_t prepared_x_size(const QuantMatrix& w, int64_t M) {
  return M * (w.in + padded_groups(w));
}

void prepare_x(const QuantMatrix& w, const float* x, int64_t ldx, int64_t M, float* prep) {
  const int64_t in = w.in, ng = in / w.group, ngp = padded_groups(w);
  float* xsum = prep + M * in;
  for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
    const int64_t mb = std::min<int64_t>(kBlockM, M - m0);
    float* block = prep + m0 * in;
    for (int64_t m = 0; m < mb; ++m) {
      const float* xr = x + (m0 + m) * ldx;
      if (w.bits == 4) {
        for (int64_t base = 0; base < in; base += 64) {
          const int lanes = in - base >= 64 ? 8 : 4;
          for (int k = 0; k < 8; ++k) {
            const float f = k == 7 ? 1.0f : std::ldexp(1.0f, -4 * k);
            const int64_t e = base + k * lanes;
            for (int j = 0; j < lanes; ++j) block[e * mb + m * lanes + j] = xr[e + j] * f;
          }
        }
      } else {
        for (int64_t e = 0; e < in; e += 8)
          for (int j = 0; j < 8; ++j) block[e * mb + m * 8 + j] = xr[e + j];
      }
      float* sums = xsum + (m0 + m) * ngp;
      for (int64_t g = 0; g < ngp; ++g) {
        float sum = 0.0f;
        for (int64_t i = g * w.group; g < ng && i < (g + 1) * w.group; ++i) sum += xr[i];
        sums[g] = sum;
      }
    }
  }
}

void gemv_rows(const QuantMatrix& w, const float* prep, int64_t M, const float* bias, float* y,
               int64_t ldy, int64_t row_begin, int64_t row_end) {
  const int64_t in = w.in, ng = in / w.group, ngp = padded_groups(w);
  const float* xsum = prep + M * in;
  // Weight rows per tile: enough independent FMA chains with the x rows (see gemv_tiles.h).
  const int R = M == 1 ? 4 : M == 2 ? 2 : 1;
  std::vector<float> params(2 * R * ngp, 0.0f);   // zero padding makes the min loop branch-free
  float* s = params.data();
  float* mn = w.mins ? s + R * ngp : nullptr;
  // Tiles picked once per call: full blocks of 4 x rows, the last partial block, and single
  // weight rows for the rows left over at the end of this thread's range.
  const int last_mb = static_cast<int>((M - 1) % kBlockM + 1);
  const RowTiles tiles{pick_tile(w, R, static_cast<int>(std::min<int64_t>(M, kBlockM))),
                       pick_tile(w, R, last_mb), pick_tile(w, 1, 1), pick_tile(w, 1, last_mb)};
  float out[4];
  for (int64_t o = row_begin; o < row_end;) {
    const int r_tile = row_end - o >= R ? R : 1;
    prefetch_rows(w, o, r_tile, row_end);
    for (int r = 0; r < r_tile; ++r) row_params(w, o + r, ng, s + r * ngp, s + (R + r) * ngp);
    const uint8_t* q = w.q + o * w.q_stride;
    for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
      const int mb = static_cast<int>(std::min<int64_t>(kBlockM, M - m0));
      const bool last = m0 + kBlockM >= M;
      const TileFn tile = r_tile == R ? (last ? tiles.last : tiles.full)
                                      : (last ? tiles.single_last : tiles.single);
      tile(q, w.q_stride, s, mn, ngp, prep + m0 * in, xsum + m0 * ngp, in, out);
      for (int r = 0; r < r_tile; ++r) {
        const float b = bias ? bias[o + r] : 0.0f;
        for (int m = 0; m < mb; ++m) y[(m0 + m) * ldy + o + r] = out[r * mb + m] + b;
      }
    }
    o += r_tile;
  }
}

void dequant_rows(const QuantMatrix& w, int64_t row_begin, int64_t row_end, float* dst,
                  int64_t ld) {
  const int64_t in = w.in, ng = in / w.group, G = w.group;
  std::vector<float> params(2 * ng, 0.0f);
  float* s = params.data();
  float* mn = s + ng;
  for (int64_t o = row_begin; o < row_end; ++o) {
    row_params(w, o, ng, s, mn);
    const uint8_t* q = w.q + o * w.q_stride;
    float* d = dst + (o - row_begin) * ld;
    // mul then add (built with -ffp-contract=off): the same two roundings as q * s + m in
    // torch, so even fp32 scales dequantize bit-identically to the reference.
    if (w.bits == 4) {
      for (int64_t base = 0; base < in; base += 64) {
        const int lanes = in - base >= 64 ? 8 : 4;
        const __m256i v = lanes == 8
            ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + base / 2))
            : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + base / 2)));
        for (int k = 0; k < 8; ++k) {
          const int64_t g = (base + k * lanes) / G;
          const __m256 qf = _mm256_cvtepi32_ps(_mm256_and_si256(
              _mm256_srl_epi32(v, _mm_cvtsi32_si128(4 * k)), _mm256_set1_epi32(0xF)));
          const __m256 wv =
              _mm256_add_ps(_mm256_mul_ps(qf, _mm256_set1_ps(s[g])), _mm256_set1_ps(mn[g]));
          if (lanes == 8) _mm256_storeu_ps(d + base + k * 8, wv);
          else _mm_storeu_ps(d + base + k * 4, _mm256_castps256_ps128(wv));
        }
      }
    } else {
      const int8_t* q8 = reinterpret_cast<const int8_t*>(q);
      for (int64_t i = 0; i < in; i += 8) {
        const __m256 qf = _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q8 + i))));
        _mm256_storeu_ps(d + i, _mm256_add_ps(_mm256_mul_ps(qf, _mm256_set1_ps(s[i / G])),
                                              _mm256_set1_ps(mn[i / G])));
      }
    }
  }
}

}  // namespace lmserve
