// Low-bit linear on CPU: checks the tensors, then picks the regime by the number of activation rows.
// Few rows (decode): the AVX2 GEMV reads each weight row once for all rows of x.
// Many rows (prefill): dequantize a tile of weight rows into a reused fp32 buffer and let
// torch's BLAS do the GEMM, so no full fp32 copy of the weight ever exists.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "quant_gemv.h"
#include "quant_linear.h"
#include "split_bf16_gemm.h"

namespace {

using lmserve::QuantMatrix;

// Below this many weight bytes a task is not worth waking a second thread for.
constexpr int64_t kMinTaskBytes = 16 * 1024;
// fp32 weight tile for the GEMM path, per thread. Measured on the 2-core Xeon (L2 2 MiB per core),
// all SmolLM2 linears, 2 threads: 256 KB tiles ran M = 4096 at 194-213 GFLOP/s and M = 64 at
// 170; 2 MB tiles 280-286 and 188-194, about torch's own fp32 GEMM on the dense weight (each tile
// is one MKL call, which repacks all of x: fewer, larger tiles repack it less). 4 MB was worse.
constexpr int64_t kTileBytes = 2 * 1024 * 1024;
// bf16 tiles: 1 MB of fp32 before conversion (3072x576 at M = 512: 2.70 ms with 256 KB, 2.25 with
// 1 MB; larger was slower at M = 64).
constexpr int64_t kTileBytesBf16 = 1024 * 1024;

void check_rows(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "quant_linear: ",
                    name, " must have shape [", rows, ", ", cols, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.stride(1) == 1,
                    "quant_linear: ", name, " must be a CPU tensor with contiguous rows");
}

QuantMatrix describe(const at::Tensor& qweight, const at::Tensor& scales,
                     const std::optional<at::Tensor>& mins, int64_t bits, int64_t group) {
  TORCH_CHECK_VALUE(bits == 4 || bits == 8, "quant_linear: bits must be 4 or 8, got ", bits);
  TORCH_CHECK_VALUE(group == 32 || group == 64 || group == 128,
                    "quant_linear: group_size must be 32, 64 or 128, got ", group);
  TORCH_CHECK_VALUE(qweight.dim() == 2, "quant_linear: qweight must be 2-D");
  TORCH_CHECK_VALUE(qweight.element_size() == 1, "quant_linear: qweight must be uint8/int8");
  const int64_t out = qweight.size(0), in = qweight.size(1) * 8 / bits;
  TORCH_CHECK_VALUE(in % group == 0, "quant_linear: in_features ", in,
                    " is not a multiple of group_size ", group);
  check_rows(qweight, "qweight", out, qweight.size(1));
  QuantMatrix w{};
  w.q = static_cast<const uint8_t*>(qweight.data_ptr());
  w.q_stride = qweight.stride(0);
  w.bits = static_cast<int>(bits);
  w.group = static_cast<int>(group);
  w.in = in;
  const auto is_float = [](const at::Tensor& t) {
    return t.scalar_type() == at::kHalf || t.scalar_type() == at::kFloat;
  };
  check_rows(scales, "scales", out, in / group);
  TORCH_CHECK_VALUE(is_float(scales), "quant_linear: scales must be float16 or float32");
  w.scales = scales.data_ptr();
  w.scale_stride = scales.stride(0);
  w.scales_half = scales.scalar_type() == at::kHalf;
  if (mins) {
    check_rows(*mins, "mins", out, in / group);
    TORCH_CHECK_VALUE(is_float(*mins), "quant_linear: mins must be float16 or float32");
    w.mins = mins->data_ptr();
    w.min_stride = mins->stride(0);
    w.mins_half = mins->scalar_type() == at::kHalf;
  }
  return w;
}

at::Tensor gemv(const QuantMatrix& w, const at::Tensor& x, const float* bias, int64_t out) {
  const int64_t M = x.size(0);
  // at::empty is 64-byte aligned; a std::vector at 16 mod 32 split every other 256-bit x load
  // across cache lines (~15% slower at M = 4).
  at::Tensor prep_t = at::empty({lmserve::prepared_x_size(w, M)}, x.options());
  float* prep = prep_t.data_ptr<float>();
  lmserve::prepare_x(w, x.data_ptr<float>(), x.stride(0), M, prep);
  at::Tensor y = at::empty({M, out}, x.options());
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(4, kMinTaskBytes / w.q_stride);
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    lmserve::gemv_rows(w, prep, M, bias, yp, out, begin, end);
  });
  return y;
}

// Each thread dequantizes its own tiles into its own buffer and multiplies them with torch's
// BLAS, which runs single-threaded inside the parallel region; the tile stays in that core's
// L2 between the two steps instead of going through memory.
// bf16: the tile and x go to bfloat16 and the product runs in bf16 (AMX on CPUs that have it,
// ~7x fp32's FLOP rate there); the result is rounded to bf16 before it lands in the fp32 output.
at::Tensor tiled_gemm(const QuantMatrix& w, const at::Tensor& x,
                      const std::optional<at::Tensor>& bias, int64_t out, bool bf16) {
  at::Tensor y = at::empty({x.size(0), out}, x.options());
  const at::Tensor xb = bf16 ? x.to(at::kBFloat16) : at::Tensor();
  const int64_t tile = std::max<int64_t>(16, (bf16 ? kTileBytesBf16 : kTileBytes) / (w.in * 4));
  // Worker threads do not inherit the caller's thread-local state; without it, writing into y
  // (an inference tensor when called under torch.inference_mode) from a worker is refused.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, out, tile, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor buf = at::empty({std::min(tile, end - begin), w.in}, x.options());
    float* d = buf.data_ptr<float>();
    for (int64_t r0 = begin; r0 < end; r0 += tile) {
      const int64_t n = std::min(tile, end - r0);
      lmserve::dequant_rows(w, r0, r0 + n, d, w.in);
      at::Tensor ys = y.narrow(1, r0, n), wt = buf.narrow(0, 0, n).t();
      if (bf16) {
        ys.copy_(at::mm(xb, wt.to(at::kBFloat16)));
        if (bias) ys.add_(bias->narrow(0, r0, n));
      } else if (bias) {
        at::addmm_out(ys, bias->narrow(0, r0, n), x, wt);
      } else {
        at::mm_out(ys, x, wt);
      }
    }
  });
  return y;
}

}  // namespace

namespace lmserve {

// x [M, in] fp32 -> [M, out] fp32. gemv_max_m: the largest M that takes the GEMV path.
at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& mins,
                        const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size,
                        int64_t gemv_max_m, int64_t gemm_mode,
                        const std::optional<at::Tensor>& split) {
  const QuantMatrix w = describe(qweight, scales, mins, bits, group_size);
  const int64_t out = qweight.size(0);
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == w.in, "quant_linear: x must be [M, ", w.in,
                    "], got ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.device().is_cpu(),
                    "quant_linear: x must be a float32 CPU tensor, got ", x.scalar_type());
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out && bias->is_contiguous() &&
                          bias->scalar_type() == at::kFloat,
                      "quant_linear: bias must be a contiguous float32 [", out, "] tensor");
  }
  TORCH_CHECK_VALUE(gemm_mode >= kGemmFloat32 && gemm_mode <= kGemmBf16x3,
                    "quant_linear: gemm_mode must be 0 (float32), 1 (bfloat16) or 2 (bf16x3), got ",
                    gemm_mode);
  if (x.size(0) <= gemv_max_m)
    return gemv(w, xc, bias ? bias->data_ptr<float>() : nullptr, out);
  if (gemm_mode == kGemmBf16x3) {   // without the caller's halves, this call splits the weight
    const float* b = bias ? bias->data_ptr<float>() : nullptr;
    return split_bf16_gemm(w, xc, b, out, split ? *split : split_weight(w, out, scales.options()));
  }
  return tiled_gemm(w, xc, bias, out, gemm_mode == kGemmBf16);
}

at::Tensor split_weight(const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& mins, int64_t bits, int64_t group_size) {
  const QuantMatrix w = describe(qweight, scales, mins, bits, group_size);
  return split_weight(w, qweight.size(0), scales.options());
}

// Dequantized rows [row_begin, row_end) as an fp32 tensor (tests and debugging).
at::Tensor dequantize(const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& mins, int64_t bits, int64_t group_size) {
  const QuantMatrix w = describe(qweight, scales, mins, bits, group_size);
  const int64_t out = qweight.size(0);
  at::Tensor dst = at::empty({out, w.in}, scales.options().dtype(at::kFloat));
  float* d = dst.data_ptr<float>();
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    lmserve::dequant_rows(w, begin, end, d + begin * w.in, w.in);
  });
  return dst;
}

}  // namespace lmserve
