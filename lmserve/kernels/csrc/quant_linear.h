// Low-bit weight x fp32 activation linear on CPU (quant_linear.cpp): the GEMV for few rows, tiles
// dequantized into BLAS for many. Bound for Python in quant_linear_bind.cpp and called directly
// by the fused decode stack.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace lmserve {

// x [M, in] fp32 -> [M, out] fp32; M <= gemv_max_m takes the GEMV.
at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& mins,
                        const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size,
                        int64_t gemv_max_m, bool bf16_gemm);

// All rows of the weight dequantized to fp32 (tests and debugging).
at::Tensor dequantize(const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& mins, int64_t bits, int64_t group_size);

}  // namespace lmserve
