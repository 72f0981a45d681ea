// Decode attention straight from an int8/int4 paged KV cache on CPU (layout: kernels/kv_quant.py).
//
// Same plan as paged_attention_cpu.cpp (one task per (sequence, KV head), block by block, online
// softmax in fp32), reading 1 or 1/2 byte per element instead of 2 or 4. Dequantization is folded
// into the math instead of done per element: with x = q * s + z per token,
//   score = qs . x = s * (qs . q) + z * sum(qs)
//   out  += p * x  = (p * s) * q + p * z        (the p * z terms summed once per block)
// so the inner loops are integer-to-float conversions and FMAs over the raw codes. Rotation (when
// the cache is rotated) happens outside: the caller rotates q and un-rotates the output.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention_vec.h"
#include "decode_tasks.h"
#include "online_softmax.h"
#include "paged_attention_kvq_cpu.h"

namespace {

using namespace lmserve::attn;
constexpr int kMaxRows = 4;                 // query rows of one KV head scored together

struct QuantProblem {
  const float* q;
  int64_t q_seq_stride, q_head_stride;
  const uint8_t* k;
  const uint8_t* v;
  int64_t block_stride, token_stride, head_stride;          // bytes, same for k and v
  const c10::Half* k_sz;
  const c10::Half* v_sz;
  int64_t sz_block_stride, sz_token_stride, sz_head_stride;  // elements, same for k and v
  const int64_t* tables;
  int64_t table_stride;
  const int64_t* context_lens;
  float* out;
  int64_t out_seq_stride, out_head_stride;
  int64_t kv_heads, group, head_dim, block_size;
  float scale;
};

// Eight int8 codes as fp32.
inline __m256 codes8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Eight bytes of int4 codes: low nibbles are elements c..c+7, high nibbles c+D/2..c+D/2+7.
inline void nibbles8(const uint8_t* p, __m256& lo, __m256& hi) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(b, mask)));
  hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), mask)));
}

// acc[g] += qs[g] * codes of one row, lane-wise (R query rows of stride D).
template <int BITS, int R>
inline void row_dot(const float* qs, const uint8_t* row, int64_t D, __m256* acc) {
  if constexpr (BITS == 8) {
    for (int64_t c = 0; c < D; c += 8) {
      const __m256 x = codes8(row + c);
      for (int g = 0; g < R; ++g) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + g * D + c), x, acc[g]);
    }
  } else {
    const int64_t half = D / 2;
    for (int64_t c = 0; c < half; c += 8) {
      __m256 lo, hi;
      nibbles8(row + c, lo, hi);
      for (int g = 0; g < R; ++g) {
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + g * D + c), lo, acc[g]);
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + g * D + half + c), hi, acc[g]);
      }
    }
  }
}

// Scores of R query rows against the n tokens of one block: s[g * sp + t].
template <int BITS, int R>
void block_scores(const QuantProblem& p, const float* qs, const float* qsum, const uint8_t* kb,
                  const c10::Half* szb, int64_t n, float* s, int64_t sp) {
  alignas(16) float sums[4];
  for (int64_t t = 0; t < n; ++t) {
    __m256 acc[kMaxRows];
    for (int g = 0; g < kMaxRows; ++g) acc[g] = _mm256_setzero_ps();
    row_dot<BITS, R>(qs, kb + t * p.token_stride, p.head_dim, acc);
    _mm_store_ps(sums, hsum4(acc[0], acc[1], acc[2], acc[3]));
    const float scale = static_cast<float>(szb[t * p.sz_token_stride]);
    const float zero = static_cast<float>(szb[t * p.sz_token_stride + 1]);
    for (int g = 0; g < R; ++g) s[g * sp + t] = scale * sums[g] + zero * qsum[g];
  }
}

// acc[g] += sum_t e[g][t] * x_t for R rows, where e are the block's softmax numerators; w is
// scratch of the same shape as e.
template <int BITS, int R>
void block_values(const QuantProblem& p, const float* e, int64_t sp, const uint8_t* vb,
                  const c10::Half* szb, int64_t n, float* w, float* acc) {
  const int64_t D = p.head_dim;
  float bias[kMaxRows] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t t = 0; t < n; ++t) {
    const float scale = static_cast<float>(szb[t * p.sz_token_stride]);
    const float zero = static_cast<float>(szb[t * p.sz_token_stride + 1]);
    for (int g = 0; g < R; ++g) {
      w[g * sp + t] = e[g * sp + t] * scale;
      bias[g] += e[g * sp + t] * zero;
    }
  }
  if constexpr (BITS == 8) {
    for (int64_t c = 0; c < D; c += 8) {
      __m256 a[R];
      for (int g = 0; g < R; ++g) a[g] = _mm256_loadu_ps(acc + g * D + c);
      for (int64_t t = 0; t < n; ++t) {
        const __m256 x = codes8(vb + t * p.token_stride + c);
        for (int g = 0; g < R; ++g) a[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + g * sp + t), x, a[g]);
      }
      for (int g = 0; g < R; ++g) _mm256_storeu_ps(acc + g * D + c, a[g]);
    }
  } else {
    const int64_t half = D / 2;
    for (int64_t c = 0; c < half; c += 8) {
      __m256 a[R][2];
      for (int g = 0; g < R; ++g) {
        a[g][0] = _mm256_loadu_ps(acc + g * D + c);
        a[g][1] = _mm256_loadu_ps(acc + g * D + half + c);
      }
      for (int64_t t = 0; t < n; ++t) {
        __m256 lo, hi;
        nibbles8(vb + t * p.token_stride + c, lo, hi);
        for (int g = 0; g < R; ++g) {
          const __m256 wt = _mm256_broadcast_ss(w + g * sp + t);
          a[g][0] = _mm256_fmadd_ps(wt, lo, a[g][0]);
          a[g][1] = _mm256_fmadd_ps(wt, hi, a[g][1]);
        }
      }
      for (int g = 0; g < R; ++g) {
        _mm256_storeu_ps(acc + g * D + c, a[g][0]);
        _mm256_storeu_ps(acc + g * D + half + c, a[g][1]);
      }
    }
  }
  for (int g = 0; g < R; ++g) {
    const __m256 b = _mm256_set1_ps(bias[g]);
    for (int64_t c = 0; c < D; c += 8)
      _mm256_storeu_ps(acc + g * D + c, _mm256_add_ps(b, _mm256_loadu_ps(acc + g * D + c)));
  }
}

template <int BITS>
void scores_rows(int rows, const QuantProblem& p, const float* qs, const float* qsum,
                 const uint8_t* kb, const c10::Half* szb, int64_t n, float* s, int64_t sp) {
  switch (rows) {
    case 1: return block_scores<BITS, 1>(p, qs, qsum, kb, szb, n, s, sp);
    case 2: return block_scores<BITS, 2>(p, qs, qsum, kb, szb, n, s, sp);
    case 3: return block_scores<BITS, 3>(p, qs, qsum, kb, szb, n, s, sp);
    default: return block_scores<BITS, 4>(p, qs, qsum, kb, szb, n, s, sp);
  }
}

template <int BITS>
void values_rows(int rows, const QuantProblem& p, const float* e, int64_t sp, const uint8_t* vb,
                 const c10::Half* szb, int64_t n, float* w, float* acc) {
  switch (rows) {
    case 1: return block_values<BITS, 1>(p, e, sp, vb, szb, n, w, acc);
    case 2: return block_values<BITS, 2>(p, e, sp, vb, szb, n, w, acc);
    case 3: return block_values<BITS, 3>(p, e, sp, vb, szb, n, w, acc);
    default: return block_values<BITS, 4>(p, e, sp, vb, szb, n, w, acc);
  }
}

struct Scratch {
  std::vector<float> qs, qsum, scores, weights, acc, m, l;
  Scratch(int64_t G, int64_t D, int64_t sp)
      : qs(G * D), qsum(G), scores(G * sp), weights(G * sp), acc(G * D), m(G), l(G) {}
};

// Attends (sequence b, KV head h) over the blocks [blk_begin, blk_end) of its context; `part`:
// see finish_task.
template <int BITS>
void attend(const QuantProblem& p, int64_t b, int64_t h, Scratch& w, int64_t blk_begin,
            int64_t blk_end, float* part) {
  const int64_t G = p.group, D = p.head_dim, bs = p.block_size, sp = (bs + 7) / 8 * 8;
  const float* q = p.q + b * p.q_seq_stride + h * G * p.q_head_stride;
  for (int64_t g = 0; g < G; ++g) {
    float sum = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      w.qs[g * D + d] = q[g * p.q_head_stride + d] * p.scale;
      sum += w.qs[g * D + d];
    }
    w.qsum[g] = sum;
  }
  std::fill(w.acc.begin(), w.acc.end(), 0.0f);
  std::fill(w.m.begin(), w.m.end(), -std::numeric_limits<float>::infinity());
  std::fill(w.l.begin(), w.l.end(), 0.0f);
  const int64_t ctx = p.context_lens[b];
  const int64_t* table = p.tables + b * p.table_stride;
  for (int64_t i = blk_begin, start = blk_begin * bs; i < blk_end && start < ctx; start += bs, ++i) {
    const int64_t n = std::min(bs, ctx - start);
    const uint8_t* kb = p.k + table[i] * p.block_stride + h * p.head_stride;
    const uint8_t* vb = p.v + table[i] * p.block_stride + h * p.head_stride;
    const int64_t sz_off = table[i] * p.sz_block_stride + h * p.sz_head_stride;
    for (int64_t g0 = 0; g0 < G; g0 += kMaxRows)
      scores_rows<BITS>(std::min<int64_t>(kMaxRows, G - g0), p, w.qs.data() + g0 * D,
                        w.qsum.data() + g0, kb, p.k_sz + sz_off, n, w.scores.data() + g0 * sp, sp);
    for (int64_t g = 0; g < G; ++g)
      online_softmax_update(w.scores.data() + g * sp, n, w.m[g], w.l[g], w.acc.data() + g * D, D);
    for (int64_t g0 = 0; g0 < G; g0 += kMaxRows)
      values_rows<BITS>(std::min<int64_t>(kMaxRows, G - g0), p, w.scores.data() + g0 * sp, sp, vb,
                        p.v_sz + sz_off, n, w.weights.data() + g0 * sp, w.acc.data() + g0 * D);
  }
  finish_task(p, b, h, w.m.data(), w.l.data(), w.acc.data(), part);
}

template <int BITS>
void run_all(const QuantProblem& p, int64_t batch, int64_t total_context) {
  const int64_t sp = (p.block_size + 7) / 8 * 8;
  run_decode_tasks(p, batch, total_context, [&] { return Scratch(p.group, p.head_dim, sp); },
                   [&](Scratch& w, int64_t b, int64_t h, int64_t first, int64_t last, float* part) {
                     attend<BITS>(p, b, h, w, first, last, part);
                   });
}

void check(bool ok, const char* what) { TORCH_CHECK_VALUE(ok, "paged_decode_attention_quant: ", what); }

}  // namespace

namespace lmserve {

// q [B, H, D] fp32; k, v uint8 [num_blocks, block_size, KV, D or D/2]; k_sz, v_sz float16
// [num_blocks, block_size, KV, 2]; bits 8 or 4; block_tables [B, width] int64; context_lens [B]
// int64 -> out [B, H, D] fp32, in the cache's (rotated) basis.
at::Tensor paged_decode_attention_quant(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& k_sz,
                                        const at::Tensor& v_sz, int64_t bits,
                                        const at::Tensor& block_tables,
                                        const at::Tensor& context_lens, double scale) {
  check(bits == 8 || bits == 4, "bits must be 8 or 4");
  check(k.dim() == 4 && k.sizes() == v.sizes() && k.strides() == v.strides() && k.stride(3) == 1 &&
            k.scalar_type() == at::kByte && v.scalar_type() == at::kByte && k.device().is_cpu() &&
            v.device().is_cpu(),
        "k and v must be uint8 CPU tensors [num_blocks, block_size, kv_heads, packed head_dim] "
        "of one layout, contiguous along head_dim");
  check(k_sz.dim() == 4 && k_sz.sizes() == v_sz.sizes() && k_sz.strides() == v_sz.strides() &&
            k_sz.scalar_type() == at::kHalf && v_sz.scalar_type() == at::kHalf &&
            k_sz.size(3) == 2 && k_sz.stride(3) == 1 && k_sz.device().is_cpu() &&
            v_sz.device().is_cpu() && k_sz.size(0) == k.size(0) && k_sz.size(1) == k.size(1) &&
            k_sz.size(2) == k.size(2),
        "k_sz and v_sz must be float16 CPU tensors [num_blocks, block_size, kv_heads, 2] matching "
        "the data, contiguous along the last dim");
  check_query_and_tables(q, k.size(2), block_tables, context_lens, "paged_decode_attention_quant");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KV = k.size(2);
  check(k.size(3) == (bits == 8 ? D : D / 2) && D % (bits == 8 ? 8 : 16) == 0,
        "head_dim must match the cache and be a multiple of 8 (int8) or 16 (int4)");
  at::Tensor out = at::empty({B, H, D}, q.options());
  QuantProblem p{q.data_ptr<float>(), q.stride(0), q.stride(1),
                 k.data_ptr<uint8_t>(), v.data_ptr<uint8_t>(),
                 k.stride(0), k.stride(1), k.stride(2),
                 k_sz.data_ptr<c10::Half>(), v_sz.data_ptr<c10::Half>(),
                 k_sz.stride(0), k_sz.stride(1), k_sz.stride(2),
                 block_tables.data_ptr<int64_t>(), block_tables.stride(0),
                 context_lens.data_ptr<int64_t>(),
                 out.data_ptr<float>(), out.stride(0), out.stride(1),
                 KV, H / KV, D, k.size(1), static_cast<float>(scale)};
  const int64_t total = check_tables(p, B, block_tables.size(1), k.size(0), "paged_decode_attention_quant");
  if (bits == 8) run_all<8>(p, B, total);
  else run_all<4>(p, B, total);
  return out;
}

}  // namespace lmserve
