// Low-bit weight x fp32 activation kernels for AVX2/FMA/F16C CPUs.
// No torch headers here on purpose: this translation unit compiles in about a second, so the
// JIT build time is dominated by the thin binding file alone.
#pragma once
#include <cstdint>

namespace lmserve {

// One quantized weight matrix, w[o, i] = q[o, i] * scale[o, i / group] + min[o, i / group].
// 4-bit rows hold unsigned nibbles in the "word-interleaved" layout (see quant_gemv.cpp);
// 8-bit rows hold signed int8 in natural order. scales/mins are fp16 or fp32, mins may be null.
struct QuantMatrix {
  const uint8_t* q;
  int64_t q_stride;        // bytes between rows
  const void* scales;
  int64_t scale_stride;    // elements between rows
  bool scales_half;
  const void* mins;        // nullptr: every min is 0
  int64_t min_stride;
  bool mins_half;
  int bits;                // 4 or 8
  int group;               // 32, 64 or 128
  int64_t in;              // input features, a multiple of `group`
};

// Floats prepare_x writes for M rows of x: the rearranged x, then the per-group sums.
int64_t prepared_x_size(const QuantMatrix& w, int64_t M);

// Rearranges x [M, in] (row stride ldx) into `prep` (prepared_x_size floats), the form the GEMV
// reads: rows in blocks of up to 4, the 8-lane slices of a block's rows side by side, each
// pre-multiplied by the power of two that undoes its nibble position (exact), followed by the
// per-group sums of x that the min term needs.
void prepare_x(const QuantMatrix& w, const float* x, int64_t ldx, int64_t M, float* prep);

// y[m, o] = sum_i x[m, i] * w[o, i] (+ bias[o]) for o in [row_begin, row_end), all m < M.
// Every weight row is read from memory once, however large M is.
void gemv_rows(const QuantMatrix& w, const float* prep, int64_t M, const float* bias, float* y,
               int64_t ldy, int64_t row_begin, int64_t row_end);

// dst[r - row_begin, :] = w[r, :] in fp32 for r in [row_begin, row_end); dst row stride ld.
void dequant_rows(const QuantMatrix& w, int64_t row_begin, int64_t row_end, float* dst,
                  int64_t ld);

}  // namespace lmserve
