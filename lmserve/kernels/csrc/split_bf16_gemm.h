// The bf16x3 GEMM of a low-bit weight (split_bf16_gemm.cpp): fp32 activations and weights each
// split into two bf16 halves, three bf16 products accumulated in fp32 by torch's brgemm.
#pragma once
#include <ATen/core/Tensor.h>

#include "quant_gemv.h"

namespace lmserve {

// Whether torch's brgemm runs bf16 on this CPU (AMX-BF16 or AVX512-BF16).
bool split_bf16_available();

// The weight dequantized and split into bf16 halves, in the blocked VNNI layout the GEMM reads:
// [ceil(out / 64), 2 * in, 64] bf16 (4 bytes a weight). Built once per matrix by callers that
// keep it; the GEMM itself only reads it.
at::Tensor split_weight(const QuantMatrix& w, int64_t out, const at::TensorOptions& opts);

// x [T, w.in] fp32 (rows contiguous) -> [T, out] fp32, y = x W^T (+ bias), W given as
// split_weight(w).
at::Tensor split_bf16_gemm(const QuantMatrix& w, const at::Tensor& x, const float* bias,
                           int64_t out, const at::Tensor& split);

}  // namespace lmserve
