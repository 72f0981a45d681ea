// Fused element-wise decoder ops for fp32 on CPU (cpu_ops.cpp); bound for Python in
// cpu_ops_bind.cpp and called directly by the fused decode stack (decode_stack.cpp).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace lmserve::ops {

// residual' = x + residual (or x when there is none); returns (rms_norm(residual') * weight, residual').
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x,
                                                const std::optional<at::Tensor>& residual,
                                                const at::Tensor& weight, double eps);
// Rotates heads [0, heads) of each row of x in place (rotate-half layout).
void rotary_inplace(at::Tensor& x, int64_t heads, int64_t head_dim, const at::Tensor& cos,
                    const at::Tensor& sin);
// [rows, 2n] packed [gate | up] -> [rows, n] silu(gate) * up.
at::Tensor silu_and_mul(const at::Tensor& gate_up);

}  // namespace lmserve::ops
