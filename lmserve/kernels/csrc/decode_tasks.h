// How the CPU decode-attention kernels (float and quantized cache) share out their work, check
// their block tables and finish each task. A Problem has the fields both kernels' structs share:
// tables, table_stride, context_lens, out, out_seq_stride, out_head_stride, kv_heads, group,
// head_dim, block_size.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace lmserve::attn {

// Below this many (token, KV head) pairs in the batch one thread runs: a second one costs more in
// wake-up and barrier than it saves (measured on the float kernel).
constexpr int64_t kMinParallelWork = 512;

// The checks both kernels make of q [B, H, D] (fp32, CPU, rows contiguous), block_tables [B, width]
// and context_lens [B] (int64) against the cache's kv_heads; `op` prefixes each message.
inline void check_query_and_tables(const at::Tensor& q, int64_t kv_heads,
                                   const at::Tensor& block_tables, const at::Tensor& context_lens,
                                   const char* op) {
  TORCH_CHECK_VALUE(q.device().is_cpu() && q.scalar_type() == at::kFloat && q.dim() == 3 &&
                        q.stride(2) == 1,
                    op, ": q must be a float32 CPU tensor [batch, heads, head_dim] with contiguous rows");
  const int64_t B = q.size(0);
  TORCH_CHECK_VALUE(kv_heads > 0 && q.size(1) % kv_heads == 0,
                    op, ": the number of query heads must be a multiple of kv_heads");
  TORCH_CHECK_VALUE(block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 &&
                        block_tables.size(0) == B && block_tables.stride(1) == 1,
                    op, ": block_tables must be int64 [batch, max_blocks] with contiguous rows");
  TORCH_CHECK_VALUE(context_lens.scalar_type() == at::kLong && context_lens.dim() == 1 &&
                        context_lens.size(0) == B && context_lens.is_contiguous(),
                    op, ": context_lens must be a contiguous int64 [batch] tensor");
}

// Every block a sequence reads must exist: a bad table would otherwise read out of bounds.
// Returns the sum of the context lengths.
template <class Problem>
int64_t check_tables(const Problem& p, int64_t batch, int64_t width, int64_t num_blocks,
                     const char* op) {
  int64_t total = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t ctx = p.context_lens[b];
    TORCH_CHECK_VALUE(ctx >= 0 && ctx <= width * p.block_size, op, ": context length ", ctx,
                      " of sequence ", b, " does not fit its block table of ", width,
                      " blocks of ", p.block_size, " tokens");
    for (int64_t i = 0; i * p.block_size < ctx; ++i) {
      const int64_t blk = p.tables[b * p.table_stride + i];
      TORCH_CHECK_VALUE(blk >= 0 && blk < num_blocks, op, ": block id ", blk, " of sequence ", b,
                        " is outside the cache's ", num_blocks, " blocks");
    }
    total += ctx;
  }
  return total;
}

// The end of one (sequence b, KV head h) task over G query rows: with `part` (a split context)
// the unnormalized state goes there as [m (G), l (G), acc (G x D)] for combine_splits; without it
// acc / l is written to the output.
template <class Problem>
void finish_task(const Problem& p, int64_t b, int64_t h, const float* m, const float* l,
                 const float* acc, float* part) {
  const int64_t G = p.group, D = p.head_dim;
  if (part != nullptr) {
    std::copy(m, m + G, part);
    std::copy(l, l + G, part + G);
    std::copy(acc, acc + G * D, part + 2 * G);
    return;
  }
  float* out = p.out + b * p.out_seq_stride + h * G * p.out_head_stride;
  for (int64_t g = 0; g < G; ++g) {
    const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;   // no context: zeros, not 0/0
    for (int64_t d = 0; d < D; ++d) out[g * p.out_head_stride + d] = acc[g * D + d] * inv;
  }
}

// Merges the `splits` partial states of each (sequence, KV head) into the normalized output:
// rescale each part to the largest running max, then sum.
template <class Problem>
void combine_splits(const Problem& p, int64_t tasks, int64_t splits, const float* parts) {
  const int64_t G = p.group, D = p.head_dim, stride = G * (2 + D);
  for (int64_t t = 0; t < tasks; ++t) {
    const float* base = parts + t * splits * stride;
    float* out = p.out + (t / p.kv_heads) * p.out_seq_stride + (t % p.kv_heads) * G * p.out_head_stride;
    for (int64_t g = 0; g < G; ++g) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < splits; ++s) m = std::max(m, base[s * stride + g]);
      float l = 0.0f;
      for (int64_t d = 0; d < D; ++d) out[g * p.out_head_stride + d] = 0.0f;
      for (int64_t s = 0; s < splits; ++s) {
        const float* part = base + s * stride;
        if (part[G + g] == 0.0f) continue;          // an empty piece (past the context)
        const float f = std::exp(part[g] - m);
        l += part[G + g] * f;
        const float* acc = part + 2 * G + g * D;
        for (int64_t d = 0; d < D; ++d) out[g * p.out_head_stride + d] += acc[d] * f;
      }
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      for (int64_t d = 0; d < D; ++d) out[g * p.out_head_stride + d] *= inv;
    }
  }
}

// Runs attend(scratch, b, h, blk_begin, blk_end, part) for every (sequence, KV head) pair, handed
// out one at a time from a shared counter: contexts differ a lot in a batch, and a static split
// would leave one thread waiting on the other. When there are fewer pairs than two per thread
// (batch 1: 3 pairs for 2 threads), each pair's context is also cut into pieces, so every thread
// streams K/V until the end (decode attention is memory-bound); the pieces are merged after.
// make_scratch() gives each thread its own buffers.
template <class Problem, class MakeScratch, class Attend>
void run_decode_tasks(const Problem& p, int64_t batch, int64_t total_context,
                      MakeScratch make_scratch, Attend attend) {
  const int64_t tasks = batch * p.kv_heads;
  const int64_t threads = total_context * p.kv_heads < kMinParallelWork ? 1 : at::get_num_threads();
  int64_t splits = 1;
  if (threads > 1 && tasks < 2 * threads) {
    int64_t max_blocks = 0;
    for (int64_t b = 0; b < batch; ++b)
      max_blocks = std::max(max_blocks, (p.context_lens[b] + p.block_size - 1) / p.block_size);
    splits = std::max<int64_t>(1, std::min((2 * threads + tasks - 1) / tasks, max_blocks));
  }
  const int64_t items = tasks * splits, part_size = p.group * (2 + p.head_dim);
  const int64_t workers = std::min(threads, items);
  std::vector<float> parts(splits > 1 ? items * part_size : 0);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t i = begin; i < end; ++i)
      for (int64_t it = next++; it < items; it = next++) {
        const int64_t t = it / splits, s = it % splits, b = t / p.kv_heads, h = t % p.kv_heads;
        if (splits == 1) {
          attend(scratch, b, h, 0, std::numeric_limits<int64_t>::max(), nullptr);
          continue;
        }
        const int64_t nblocks = (p.context_lens[b] + p.block_size - 1) / p.block_size;
        const int64_t per = (nblocks + splits - 1) / splits;
        attend(scratch, b, h, s * per, std::min(nblocks, (s + 1) * per), parts.data() + it * part_size);
      }
  });
  if (splits > 1) combine_splits(p, tasks, splits, parts.data());
}

}  // namespace lmserve::attn
