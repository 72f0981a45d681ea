// Decode attention straight from a paged float KV cache on CPU (paged_attention_cpu.cpp); bound
// for Python in paged_attention_bind.cpp and called directly by the fused decode stack.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace lmserve {

// q [B, H, D] fp32 (rows contiguous); caches [num_blocks, block_size, KV, D] fp32/fp16/bf16;
// block_tables [B, width] int64; context_lens [B] int64 -> [B, H, D] fp32 (into `out` if given).
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale,
                                  const std::optional<at::Tensor>& out_arg);

}  // namespace lmserve
