// The "bf16x3" GEMM of a low-bit weight: fp32 accuracy to about 2^-16 at bf16 matrix-unit speed.
//
// Every fp32 value v is split into two bf16 halves, v = hi + lo + r with |r| <= 2^-17 |v|
// (hi = bf16(v), lo = bf16(v - hi)), and the product is taken as
//     W x = W_hi x_hi + W_lo x_hi + W_hi x_lo      (the W_lo x_lo term, ~2^-16, is dropped)
// with the products accumulated in fp32 by torch's brgemm (oneDNN's micro-kernel: AMX tiles on
// CPUs that have them). Three bf16 passes on AMX cost less than one fp32 pass on AVX-512
// (measured on the 2-core Xeon: ~1.5 TFLOP/s bf16 against ~0.3 fp32), and the result keeps
// ~16 significant bits per product instead of bf16's 8.
//
// brgemm's A is x, split per row into [x_hi | x_hi | x_lo]; its B is the weight, kept split in
// the VNNI layout brgemm reads (pairs of consecutive k interleaved), in blocks of 64 output
// columns with K rows of W_hi then K rows of W_lo: split_weight builds that once per matrix. The
// first call multiplies [x_hi | x_hi] by [W_hi; W_lo], the second adds x_lo times the W_hi rows,
// and C lands straight in y.
#include "split_bf16_gemm.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>

namespace {

using lmserve::QuantMatrix;
namespace cpublas = at::native::cpublas;

constexpr int64_t kCols = 64;       // output columns per weight block (brgemm's N)
constexpr int64_t kTokens = 64;     // rows of x per brgemm call (its M)
constexpr int64_t kSuperCols = 256; // columns of weight blocks kept in L2 while x streams past
constexpr int64_t kSplitRowsAt = 256; // from this many rows of x, threads split rows, not columns

inline uint32_t bits_of(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

inline float float_of(uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// Round to nearest even, as bf16 bits. Integer arithmetic, so the loops below vectorize with
// plain AVX2 (no AVX512-BF16 conversion instructions needed at compile time).
inline uint16_t to_bf16(float v) {
  const uint32_t u = bits_of(v);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// One row of n fp32 values -> its hi halves in hi[0, n), its lo halves in lo[0, n).
void split_row(const float* v, int64_t n, uint16_t* hi, uint16_t* lo) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = to_bf16(v[i]);
    hi[i] = h;
    lo[i] = to_bf16(v[i] - float_of(static_cast<uint32_t>(h) << 16));
  }
}

// x [T, K] fp32 -> [rows, 3K] bf16 rows [x_hi | x_hi | x_lo], rows = T rounded up to whole
// blocks of kTokens; the padding rows are zero.
at::Tensor split_x(const float* x, int64_t ldx, int64_t T, int64_t K, const at::TensorOptions& opts) {
  const int64_t rows = (T + kTokens - 1) / kTokens * kTokens;
  at::Tensor xs = at::empty({rows, 3 * K}, opts.dtype(at::kBFloat16));
  if (rows > T) xs.narrow(0, T, rows - T).zero_();
  auto* xp = reinterpret_cast<uint16_t*>(xs.data_ptr<at::BFloat16>());
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      uint16_t* row = xp + t * 3 * K;
      split_row(x + t * ldx, K, row, row + 2 * K);
      std::memcpy(row + K, row, K * sizeof(uint16_t));
    }
  });
  return xs;
}

}  // namespace

namespace lmserve {

bool split_bf16_available() { return cpublas::could_pack(at::kBFloat16); }

at::Tensor split_weight(const QuantMatrix& w, int64_t out, const at::TensorOptions& opts) {
  const int64_t K = w.in, blocks = (out + kCols - 1) / kCols;
  TORCH_CHECK_VALUE(K % 2 == 0, "the bf16x3 GEMM needs an even in_features, got ", K);
  // 32-bit words [block, pair p (K of them: K/2 of W_hi, then K/2 of W_lo), column]; the padding
  // columns of a short last block stay zero
  at::Tensor split = at::zeros({blocks, K, kCols}, opts.dtype(at::kInt));
  auto* sp = reinterpret_cast<uint32_t*>(split.data_ptr<int32_t>());
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> dq(K);
    std::vector<uint16_t> halves(2 * K);
    for (int64_t o = begin; o < end; ++o) {
      dequant_rows(w, o, o + 1, dq.data(), K);
      split_row(dq.data(), K, halves.data(), halves.data() + K);
      uint32_t* col = sp + (o / kCols) * K * kCols + o % kCols;
      for (int64_t p = 0; p < K; ++p) std::memcpy(col + p * kCols, halves.data() + 2 * p, 4);
    }
  });
  return split.view(at::kBFloat16).view({blocks, 2 * K, kCols});
}

at::Tensor split_bf16_gemm(const QuantMatrix& w, const at::Tensor& x, const float* bias,
                           int64_t out, const at::Tensor& split) {
  TORCH_CHECK_VALUE(split_bf16_available(),
                    "the bf16x3 GEMM needs a CPU with bf16 matrix instructions (AMX-BF16 or "
                    "AVX512-BF16); use --cpu-gemm-dtype float32");
  const int64_t T = x.size(0), K = w.in, blocks = (out + kCols - 1) / kCols;
  TORCH_CHECK_VALUE(split.scalar_type() == at::kBFloat16 && split.is_contiguous() &&
                        split.dim() == 3 && split.size(0) == blocks && split.size(1) == 2 * K &&
                        split.size(2) == kCols,
                    "quant_linear: split must be split_weight's contiguous bf16 [", blocks, ", ",
                    2 * K, ", ", kCols, "] tensor, got ", split.sizes());
  const at::Tensor xs = split_x(x.data_ptr<float>(), x.stride(0), T, K, x.options());
  at::Tensor y = at::empty({T, out}, x.options());
  float* yp = y.data_ptr<float>();
  if (bias) {    // the first product adds onto the bias instead of overwriting
    for (int64_t t = 0; t < T; ++t) std::memcpy(yp + t * out, bias, out * sizeof(float));
  }
  const at::BFloat16* xp = xs.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = split.data_ptr<at::BFloat16>();
  const int64_t super_blocks = kSuperCols / kCols;
  // columns [b_begin, b_end) of rows [t_begin, t_end): weight blocks a super-block at a time (in
  // L2), x's rows streaming past each
  const auto run = [&](int64_t b_begin, int64_t b_end, int64_t t_begin, int64_t t_end) {
    std::vector<float> tail(kTokens * kCols);
    for (int64_t s0 = b_begin; s0 < b_end; s0 += super_blocks) {
      const int64_t s1 = std::min(b_end, s0 + super_blocks);
      for (int64_t t0 = t_begin; t0 < t_end; t0 += kTokens) {
        const int64_t m = std::min(kTokens, t_end - t0);
        const at::BFloat16* a = xp + t0 * 3 * K;
        for (int64_t b = s0; b < s1; ++b) {
          const int64_t n = std::min(kCols, out - b * kCols);
          const at::BFloat16* wb = wp + b * 2 * K * kCols;
          // A short block still runs all kTokens rows (x's padding rows are zero) into a scratch
          // C: brgemm generates a kernel per shape, and one per leftover row count would cost
          // more in code generation than the padding costs in products.
          const bool whole = m == kTokens;
          float* c = whole ? yp + t0 * out + b * kCols : tail.data();
          const int64_t ldc = whole ? out : kCols;
          if (!whole && bias) {
            for (int64_t i = 0; i < kTokens; ++i)
              std::memcpy(c + i * kCols, bias + b * kCols, n * sizeof(float));
          }
          // [x_hi | x_hi] [W_hi; W_lo], then + x_lo W_hi (the block's first K rows)
          cpublas::brgemm(kTokens, n, 2 * K, 3 * K, kCols, ldc, bias != nullptr, a, wb, c, true);
          cpublas::brgemm(kTokens, n, K, 3 * K, kCols, ldc, true, a + 2 * K, wb, c, true);
          if (!whole) {
            for (int64_t i = 0; i < m; ++i)
              std::memcpy(yp + (t0 + i) * out + b * kCols, c + i * kCols, n * sizeof(float));
          }
        }
      }
    }
    cpublas::brgemm_release(true);
  };
  // Few rows: threads split the columns. Many: they split the rows, which balances a matrix of
  // few column blocks (576 outputs are 9 blocks) and keeps each thread's x rows to itself.
  if (T < kSplitRowsAt) {
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) { run(begin, end, 0, T); });
  } else {
    at::parallel_for(0, (T + kTokens - 1) / kTokens, 1, [&](int64_t begin, int64_t end) {
      run(0, blocks, begin * kTokens, std::min(T, end * kTokens));
    });
  }
  return y;
}

}  // namespace lmserve
