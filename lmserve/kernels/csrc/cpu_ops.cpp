// Fused element-wise ops of a decoder layer, for fp32 on CPU.
// At decode time a layer's matmuls read only a few hundred KB of low-bit weights, so the
// dozen small torch ops around them (norm, rotary, SiLU, each a dispatch plus temporaries)
// cost as much as the matmuls; each function here is one pass over the rows instead.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "cpu_ops.h"
#include "fast_exp.h"

namespace lmserve::ops {
namespace {

// Elements per task: a pass over fewer than this (a decode batch) takes microseconds, less than
// waking a second thread, and far less than waiting for one the OS has descheduled.
constexpr int64_t kTaskElems = 1 << 16;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(cols, 1)); }

void check_fp32_rows(const at::Tensor& t, const char* op, const char* name, int64_t cols) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kFloat, op, ": ", name,
                    " must be a float32 CPU tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == cols && t.stride(1) == 1, op, ": ", name,
                    " must be [rows, ", cols, "] with contiguous rows, got ", t.sizes());
}

}  // namespace

// residual' = x + residual (or x when there is none); out = rms_norm(residual') * weight.
// Sum of squares in double: the result then does not depend on the summation order.
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x,
                                                const std::optional<at::Tensor>& residual,
                                                const at::Tensor& weight, double eps) {
  const int64_t n = weight.numel();
  check_fp32_rows(x, "add_rms_norm", "x", n);
  TORCH_CHECK_VALUE(weight.is_contiguous() && weight.scalar_type() == at::kFloat,
                    "add_rms_norm: weight must be a contiguous float32 tensor");
  const int64_t rows = x.size(0);
  at::Tensor sum = residual ? at::empty({rows, n}, x.options()) : x;
  if (residual) check_fp32_rows(*residual, "add_rms_norm", "residual", n);
  at::Tensor out = at::empty({rows, n}, x.options());
  const float* w = weight.data_ptr<float>();
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x.data_ptr<float>() + r * x.stride(0);
      float* sr = sum.data_ptr<float>() + r * sum.stride(0);
      if (residual) {
        const float* rr = residual->data_ptr<float>() + r * residual->stride(0);
        for (int64_t i = 0; i < n; ++i) sr[i] = xr[i] + rr[i];
      }
      double ss = 0.0;
      for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(sr[i]) * sr[i];
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / n) + static_cast<float>(eps));
      float* o = out.data_ptr<float>() + r * n;
      for (int64_t i = 0; i < n; ++i) o[i] = w[i] * (sr[i] * inv);
    }
  });
  return {out, sum};
}

// Rotates heads [0, heads) of each row of x in place (rotate-half / NeoX layout), where row t
// holds heads * head_dim values starting at x[t]. cos/sin: [rows, head_dim] with the two
// halves equal, as RotaryEmbedding stores them.
void rotary_inplace(at::Tensor& x, int64_t heads, int64_t head_dim, const at::Tensor& cos,
                    const at::Tensor& sin) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 &&
                        x.stride(1) == 1 && x.size(1) >= heads * head_dim,
                    "rotary_inplace: x must be a float32 [rows, >= heads * head_dim] tensor "
                    "with contiguous rows, got ", x.sizes());
  check_fp32_rows(cos, "rotary_inplace", "cos", head_dim);
  check_fp32_rows(sin, "rotary_inplace", "sin", head_dim);
  TORCH_CHECK_VALUE(cos.size(0) == x.size(0) && sin.size(0) == x.size(0),
                    "rotary_inplace: cos/sin need one row per row of x");
  const int64_t half = head_dim / 2;
  at::parallel_for(0, x.size(0), row_grain(heads * head_dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cos.data_ptr<float>() + t * cos.stride(0);
      const float* s = sin.data_ptr<float>() + t * sin.stride(0);
      float* row = x.data_ptr<float>() + t * x.stride(0);
      for (int64_t h = 0; h < heads; ++h) {
        float* a = row + h * head_dim;
        float* b = a + half;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = a[i], x2 = b[i];
          // same two products and one sum per output as x * cos + rotate_half(x) * sin
          a[i] = x1 * c[i] + (-x2) * s[i];
          b[i] = x2 * c[half + i] + x1 * s[half + i];
        }
      }
    }
  });
}

// [rows, 2n] packed [gate | up] -> [rows, n] silu(gate) * up.
at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  TORCH_CHECK_VALUE(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0,
                    "silu_and_mul: gate_up must be [rows, 2 * n], got ", gate_up.sizes());
  const int64_t n = gate_up.size(1) / 2;
  check_fp32_rows(gate_up, "silu_and_mul", "gate_up", 2 * n);
  at::Tensor out = at::empty({gate_up.size(0), n}, gate_up.options());
  at::parallel_for(0, gate_up.size(0), row_grain(2 * n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* g = gate_up.data_ptr<float>() + r * gate_up.stride(0);
      const float* u = g + n;
      float* o = out.data_ptr<float>() + r * n;
      const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        const __m256 gi = _mm256_loadu_ps(g + i);
        const __m256 e = fast_exp8(_mm256_xor_ps(gi, sign));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(gi, _mm256_add_ps(one, e)),
                                              _mm256_loadu_ps(u + i)));
      }
      for (; i < n; ++i) o[i] = g[i] / (1.0f + fast_exp(-g[i])) * u[i];
    }
  });
  return out;
}

}  // namespace lmserve::ops
