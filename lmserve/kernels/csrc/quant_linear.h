// Low-bit weight x fp32 activation linear on CPU (quant_linear.cpp): the GEMV for few rows, tiles
// dequantized into BLAS for many. Bound for Python in quant_linear_bind.cpp and called directly
// by the fused decode stack.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace lmserve {

// How a call above gemv_max_m rows multiplies: fp32 tiles through torch's BLAS (exact fp32),
// bf16 tiles (x, the weight and the result rounded to bf16), or the bf16x3 split GEMM
// (split_bf16_gemm.h: fp32 accurate to ~2^-16).
constexpr int64_t kGemmFloat32 = 0, kGemmBf16 = 1, kGemmBf16x3 = 2;

// x [M, in] fp32 -> [M, out] fp32; M <= gemv_max_m takes the GEMV.
at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& mins,
                        const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size,
                        int64_t gemv_max_m, int64_t gemm_mode,
                        const std::optional<at::Tensor>& split = std::nullopt);

// The weight dequantized and split into bf16 halves for kGemmBf16x3 (split_bf16_gemm.h); passed
// back as `split`, it spares every call splitting the whole weight again.
at::Tensor split_weight(const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& mins, int64_t bits, int64_t group_size);

// All rows of the weight dequantized to fp32 (tests and debugging).
at::Tensor dequantize(const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& mins, int64_t bits, int64_t group_size);

}  // namespace lmserve
