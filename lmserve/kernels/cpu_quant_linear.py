"""y = x @ dequant(W).T for low-bit weights on CPU, with the weights kept low-bit in memory.

Two regimes, picked per call by the number of activation rows M:
- M <= GEMV_MAX_M (decode): a hand-written AVX2/FMA GEMV (csrc/quant_gemv.cpp) reads every
  weight byte once for all M rows; batch-1 decode is memory-bound, so bytes read is the cost.
- larger M (prefill): tiles of weight rows are dequantized into a reused fp32 buffer and
  multiplied by torch's BLAS; no full fp32 copy of the weight is ever held. `gemm_dtype` picks how:
  float32 (exact fp32), bfloat16 (rounded to bf16) or bf16x3 (csrc/split_bf16_gemm.cpp: each
  fp32 value split into two bf16 halves, three bf16 products in fp32, accurate to ~2^-16).
The extension is JIT-compiled on first use and cached; where it cannot be built or run (no
compiler, not x86 with AVX2/FMA/F16C) quant_linear_ref serves instead, after one warning.
"""
from __future__ import annotations

import torch

from .cpu_extension import CPUExtension
# Re-exported: other kernels import the CPU check from here.
from .cpu_extension import unsupported_reason as _unsupported_reason  # noqa: F401
from .quant_weight import QuantWeight

# Largest M that takes the GEMV path. Measured on Zen 3, all SmolLM2-135M linears, one thread:
# Q4_1 M=20 GEMV 128 ms vs tiled 138 ms, M=24 154 vs 153, M=32 205 vs 182 (docs/benchmarks.md).
GEMV_MAX_M = 20
# --cpu-gemm-dtype -> the kernel's gemm_mode (quant_linear.h)
GEMM_MODES = {"float32": 0, "bfloat16": 1, "bf16x3": 2}

_EXT = CPUExtension("lmserve_quant_gemv", ("quant_linear_bind.cpp", "quant_linear.cpp", "quant_gemv.cpp",
                                              "split_bf16_gemm.cpp"),
                    reference="torch reference quant_linear_ref")


def quant_linear_ref(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """The definition: fp32 x @ dequant(W).T (+ bias), materializing the fp32 weight."""
    _check_x(x, w)
    return torch.nn.functional.linear(x.float(), w.dequantize(),
                                      None if bias is None else bias.float())


def quant_linear(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None,
                 gemm_dtype: str = "float32", split: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 [..., in] -> fp32 [..., out] with the weight in low-bit form.

    Other float dtypes of x are computed in fp32. Inference only: no autograd graph is built.
    gemm_dtype: how calls above GEMV_MAX_M rows multiply: float32 (exact), bfloat16 (fast on CPUs
    with AMX-BF16; x, the dequantized tile and the result are rounded to bf16) or bf16x3 (AMX-BF16
    as well, accurate to ~2^-16 per product). Decode-sized calls are unaffected.
    split: split_weight(w), kept by the caller, for bf16x3 (else each call splits all of w again).
    """
    ext = _EXT.get()
    if ext is None:
        return quant_linear_ref(x, w, bias)
    if bias is not None and bias.dtype != torch.float32:
        bias = bias.float()
    if x.dim() != 2:
        _check_x(x, w)
        y = ext.quant_linear(x.reshape(-1, x.shape[-1]).float(), w.qweight, w.scales, w.mins,
                             bias, w.bits, w.group_size, GEMV_MAX_M, GEMM_MODES[gemm_dtype], split)
        return y.reshape(*x.shape[:-1], y.shape[-1])
    if x.dtype != torch.float32 or x.shape[1] != w.in_features:
        _check_x(x, w)
        x = x.float()
    return ext.quant_linear(x, w.qweight, w.scales, w.mins, bias, w.bits, w.group_size,
                            GEMV_MAX_M, GEMM_MODES[gemm_dtype], split)


def _check_x(x: torch.Tensor, w: QuantWeight) -> None:
    if x.dim() < 1 or x.shape[-1] != w.in_features:
        raise ValueError(f"quant_linear: x has {x.shape[-1] if x.dim() else 0} features "
                         f"(shape {list(x.shape)}) but the weight expects {w.in_features}")
    if not x.is_floating_point() or x.device.type != "cpu":
        raise ValueError(f"quant_linear: x must be a floating-point CPU tensor, got "
                         f"{x.dtype} on {x.device}")


def load_extension():
    """The compiled module, or None when this machine cannot build or run it (warned once)."""
    return _EXT.get()


def split_weight(w: QuantWeight) -> torch.Tensor:
    """w dequantized and split into bf16 halves, in the blocked VNNI layout the bf16x3 GEMM reads
    ([ceil(out / 64), 2 * in, 64], 4 bytes a weight): without it every call splits w again."""
    return _EXT.get().split_weight(w.qweight, w.scales, w.mins, w.bits, w.group_size)


def split_bf16_unavailable_reason() -> str | None:
    """Why --cpu-gemm-dtype bf16x3 cannot run here, or None when it can."""
    ext = _EXT.get()
    if ext is None:
        return "the CPU low-bit kernels are not available on this machine"
    if not ext.split_bf16_available():
        return "this CPU has no bf16 matrix instructions (AMX-BF16 or AVX512-BF16)"
    return None
