// Decode attention straight from a paged KV cache on CPU: one query token per sequence.
//
// The torch reference gathers every sequence's blocks into a padded copy and then runs SDPA
// over it; at batch 64 x 400 tokens that copy alone moves ~40 MB per layer. Here each
// (sequence, KV head) task walks its block table and reads each cached K/V row once, straight
// from the cache: the query heads that share the KV head are scored against a block, the block's
// scores go through an online softmax (running max and sum, fp32), and the block's V rows are
// accumulated into fp32 outputs. Decode is memory-bound, so bytes read is the cost; the math is
// AVX2/FMA over head_dim.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "attention_vec.h"
#include "paged_attention_cpu.h"
#include "decode_tasks.h"
#include "online_softmax.h"

namespace {

using namespace lmserve::attn;
constexpr int kMaxRows = 4;    // query rows scored together: 2 tokens x 4 rows = 8 accumulators

struct DecodeProblem {
  const float* q;
  int64_t q_seq_stride, q_head_stride;
  const void* k;
  const void* v;
  int64_t block_stride, token_stride, head_stride;   // elements, same for k and v
  const int64_t* tables;
  int64_t table_stride;
  const int64_t* context_lens;
  float* out;
  int64_t out_seq_stride, out_head_stride;
  int64_t kv_heads, group, head_dim, block_size;
  float scale;
};

// Scores of R query rows (qs, stride D, already scaled) against n K rows, two tokens at a time
// so each q load feeds two FMAs. s: R rows of stride sp.
template <typename T, int R>
void block_scores(const float* qs, const T* kb, int64_t tok_stride, int64_t n, int64_t D,
                  float* s, int64_t sp) {
  alignas(16) float sums[4];
  int64_t t = 0;
  for (; t + 2 <= n; t += 2) {
    const T* k0 = kb + t * tok_stride;
    const T* k1 = k0 + tok_stride;
    __m256 a0[kMaxRows], a1[kMaxRows];
    for (int g = 0; g < kMaxRows; ++g) a0[g] = a1[g] = _mm256_setzero_ps();
    for (int64_t c = 0; c < D; c += 8) {
      const __m256 x0 = load8(k0 + c), x1 = load8(k1 + c);
      for (int g = 0; g < R; ++g) {
        const __m256 qv = _mm256_loadu_ps(qs + g * D + c);
        a0[g] = _mm256_fmadd_ps(qv, x0, a0[g]);
        a1[g] = _mm256_fmadd_ps(qv, x1, a1[g]);
      }
    }
    _mm_store_ps(sums, hsum4(a0[0], a0[1], a0[2], a0[3]));
    for (int g = 0; g < R; ++g) s[g * sp + t] = sums[g];
    _mm_store_ps(sums, hsum4(a1[0], a1[1], a1[2], a1[3]));
    for (int g = 0; g < R; ++g) s[g * sp + t + 1] = sums[g];
  }
  if (t < n) {
    const T* k0 = kb + t * tok_stride;
    __m256 a0[kMaxRows];
    for (int g = 0; g < kMaxRows; ++g) a0[g] = _mm256_setzero_ps();
    for (int64_t c = 0; c < D; c += 8) {
      const __m256 x0 = load8(k0 + c);
      for (int g = 0; g < R; ++g)
        a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + g * D + c), x0, a0[g]);
    }
    _mm_store_ps(sums, hsum4(a0[0], a0[1], a0[2], a0[3]));
    for (int g = 0; g < R; ++g) s[g * sp + t] = sums[g];
  }
}

// acc[g] += sum_t p[g][t] * V[t] for R rows; acc stays in registers over the block, 16 lanes
// of head_dim at a time (8 for a trailing odd chunk).
template <typename T, int R>
void block_values(const float* p, int64_t sp, const T* vb, int64_t tok_stride, int64_t n,
                  int64_t D, float* acc) {
  int64_t c = 0;
  for (; c + 16 <= D; c += 16) {
    __m256 a[R][2];
    for (int g = 0; g < R; ++g) {
      a[g][0] = _mm256_loadu_ps(acc + g * D + c);
      a[g][1] = _mm256_loadu_ps(acc + g * D + c + 8);
    }
    for (int64_t t = 0; t < n; ++t) {
      const T* vr = vb + t * tok_stride + c;
      const __m256 x0 = load8(vr), x1 = load8(vr + 8);
      for (int g = 0; g < R; ++g) {
        const __m256 w = _mm256_broadcast_ss(p + g * sp + t);
        a[g][0] = _mm256_fmadd_ps(w, x0, a[g][0]);
        a[g][1] = _mm256_fmadd_ps(w, x1, a[g][1]);
      }
    }
    for (int g = 0; g < R; ++g) {
      _mm256_storeu_ps(acc + g * D + c, a[g][0]);
      _mm256_storeu_ps(acc + g * D + c + 8, a[g][1]);
    }
  }
  if (c < D) {
    __m256 a[R];
    for (int g = 0; g < R; ++g) a[g] = _mm256_loadu_ps(acc + g * D + c);
    for (int64_t t = 0; t < n; ++t) {
      const __m256 x0 = load8(vb + t * tok_stride + c);
      for (int g = 0; g < R; ++g)
        a[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + g * sp + t), x0, a[g]);
    }
    for (int g = 0; g < R; ++g) _mm256_storeu_ps(acc + g * D + c, a[g]);
  }
}

template <typename T>
void scores_rows(int rows, const float* qs, const T* kb, int64_t ts, int64_t n, int64_t D,
                 float* s, int64_t sp) {
  switch (rows) {
    case 1: return block_scores<T, 1>(qs, kb, ts, n, D, s, sp);
    case 2: return block_scores<T, 2>(qs, kb, ts, n, D, s, sp);
    case 3: return block_scores<T, 3>(qs, kb, ts, n, D, s, sp);
    default: return block_scores<T, 4>(qs, kb, ts, n, D, s, sp);
  }
}

template <typename T>
void values_rows(int rows, const float* p, int64_t sp, const T* vb, int64_t ts, int64_t n,
                 int64_t D, float* acc) {
  switch (rows) {
    case 1: return block_values<T, 1>(p, sp, vb, ts, n, D, acc);
    case 2: return block_values<T, 2>(p, sp, vb, ts, n, D, acc);
    case 3: return block_values<T, 3>(p, sp, vb, ts, n, D, acc);
    default: return block_values<T, 4>(p, sp, vb, ts, n, D, acc);
  }
}

// Prefetches the next block's K and V rows of this head. Blocks are scattered by the block table
// and a head's rows are strided within one, so the hardware prefetcher cannot run ahead; batch-1
// decode attention at ~450 tokens of context read its fp32 K/V at ~9 GB/s before this.
template <typename T>
void prefetch_block(const T* kb, const T* vb, int64_t tok_stride, int64_t n, int64_t D) {
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
  for (int64_t t = 0; t < n; ++t) {
    const char* kr = reinterpret_cast<const char*>(kb + t * tok_stride);
    const char* vr = reinterpret_cast<const char*>(vb + t * tok_stride);
    for (int64_t b = 0; b < row_bytes; b += 64) {
      _mm_prefetch(kr + b, _MM_HINT_T0);
      _mm_prefetch(vr + b, _MM_HINT_T0);
    }
  }
}

// One thread's buffers, reused across its tasks.
struct Scratch {
  std::vector<float> qs, scores, acc, m, l;
  Scratch(int64_t G, int64_t D, int64_t sp) : qs(G * D), scores(G * sp), acc(G * D), m(G), l(G) {}
};

// Attends (sequence b, KV head h) over the blocks [blk_begin, blk_end) of its context; `part`:
// see finish_task.
template <typename T>
void attend(const DecodeProblem& p, int64_t b, int64_t h, Scratch& w, int64_t blk_begin,
            int64_t blk_end, float* part) {
  const int64_t G = p.group, D = p.head_dim, bs = p.block_size, sp = (bs + 7) / 8 * 8;
  const float* q = p.q + b * p.q_seq_stride + h * G * p.q_head_stride;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) w.qs[g * D + d] = q[g * p.q_head_stride + d] * p.scale;
  std::fill(w.acc.begin(), w.acc.end(), 0.0f);
  std::fill(w.m.begin(), w.m.end(), -std::numeric_limits<float>::infinity());
  std::fill(w.l.begin(), w.l.end(), 0.0f);
  const int64_t ctx = p.context_lens[b];
  const int64_t* table = p.tables + b * p.table_stride;
  const T* k = static_cast<const T*>(p.k) + h * p.head_stride;
  const T* v = static_cast<const T*>(p.v) + h * p.head_stride;
  for (int64_t i = blk_begin, start = blk_begin * bs; i < blk_end && start < ctx; start += bs, ++i) {
    const int64_t n = std::min(bs, ctx - start);
    const T* kb = k + table[i] * p.block_stride;
    const T* vb = v + table[i] * p.block_stride;
    if (i + 1 < blk_end && start + bs < ctx)
      prefetch_block(k + table[i + 1] * p.block_stride, v + table[i + 1] * p.block_stride,
                     p.token_stride, std::min(bs, ctx - start - bs), D);
    for (int64_t g0 = 0; g0 < G; g0 += kMaxRows)
      scores_rows<T>(std::min<int64_t>(kMaxRows, G - g0), w.qs.data() + g0 * D, kb,
                     p.token_stride, n, D, w.scores.data() + g0 * sp, sp);
    for (int64_t g = 0; g < G; ++g)
      online_softmax_update(w.scores.data() + g * sp, n, w.m[g], w.l[g], w.acc.data() + g * D, D);
    for (int64_t g0 = 0; g0 < G; g0 += kMaxRows)
      values_rows<T>(std::min<int64_t>(kMaxRows, G - g0), w.scores.data() + g0 * sp, sp, vb,
                     p.token_stride, n, D, w.acc.data() + g0 * D);
  }
  finish_task(p, b, h, w.m.data(), w.l.data(), w.acc.data(), part);
}

template <typename T>
void run_all(const DecodeProblem& p, int64_t batch, int64_t total_context) {
  const int64_t sp = (p.block_size + 7) / 8 * 8;
  run_decode_tasks(p, batch, total_context, [&] { return Scratch(p.group, p.head_dim, sp); },
                   [&](Scratch& w, int64_t b, int64_t h, int64_t first, int64_t last, float* part) {
                     attend<T>(p, b, h, w, first, last, part);
                   });
}

void check(bool ok, const char* what) { TORCH_CHECK_VALUE(ok, "paged_decode_attention: ", what); }

}  // namespace

namespace lmserve {

// q [B, H, D] fp32; caches [num_blocks, block_size, KV, D] fp32/fp16/bf16; block_tables
// [B, width] int64; context_lens [B] int64 -> out [B, H, D] fp32 (written into `out` if given).
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale,
                                  const std::optional<at::Tensor>& out_arg) {
  check(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() &&
            k_cache.strides() == v_cache.strides() && k_cache.stride(3) == 1 &&
            k_cache.scalar_type() == v_cache.scalar_type() && k_cache.device().is_cpu(),
        "k_cache and v_cache must be CPU tensors [num_blocks, block_size, kv_heads, head_dim] of "
        "one dtype and layout, contiguous along head_dim");
  const auto dtype = k_cache.scalar_type();
  check(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
        "the cache dtype must be float32, float16 or bfloat16");
  check_query_and_tables(q, k_cache.size(2), block_tables, context_lens, "paged_decode_attention");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KV = k_cache.size(2);
  check(k_cache.size(3) == D && D % 8 == 0, "head_dim of q and the cache must agree and be a "
        "multiple of 8");
  at::Tensor out = out_arg ? *out_arg : at::empty({B, H, D}, q.options());
  check(out.scalar_type() == at::kFloat && out.sizes() == q.sizes() && out.stride(2) == 1,
        "out must be float32 with q's shape and contiguous rows");
  DecodeProblem p{q.data_ptr<float>(), q.stride(0), q.stride(1),
                  k_cache.data_ptr(), v_cache.data_ptr(),
                  k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                  block_tables.data_ptr<int64_t>(), block_tables.stride(0),
                  context_lens.data_ptr<int64_t>(),
                  out.data_ptr<float>(), out.stride(0), out.stride(1),
                  KV, H / KV, D, k_cache.size(1), static_cast<float>(scale)};
  const int64_t total = check_tables(p, B, block_tables.size(1), k_cache.size(0), "paged_decode_attention");
  if (dtype == at::kFloat) run_all<float>(p, B, total);
  else if (dtype == at::kHalf) run_all<c10::Half>(p, B, total);
  else run_all<c10::BFloat16>(p, B, total);
  return out;
}

}  // namespace lmserve
