// Decode attention straight from a paged int8/int4 KV cache on CPU (paged_attention_kvq_cpu.cpp);
// bound for Python in paged_attention_kvq_bind.cpp and called directly by the fused decode stack.
#pragma once
#include <ATen/core/Tensor.h>

namespace lmserve {

// q [B, H, D] fp32, already in the cache's rotated basis; k, v uint8 [num_blocks, block_size,
// KV, D or D/2]; k_sz, v_sz float16 [num_blocks, block_size, KV, 2]; bits 8 or 4 ->
// out [B, H, D] fp32 in the rotated basis.
at::Tensor paged_decode_attention_quant(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& k_sz,
                                        const at::Tensor& v_sz, int64_t bits,
                                        const at::Tensor& block_tables,
                                        const at::Tensor& context_lens, double scale);

}  // namespace lmserve
