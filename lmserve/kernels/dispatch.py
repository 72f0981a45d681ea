"""Which kernel runs an op: the Triton kernel for CUDA tensors, the CPU path otherwise.

The nn layers call these instead of a particular implementation. The Triton modules are imported
on first CUDA use only, so CPU runs never import triton.
"""
from __future__ import annotations

import torch

from . import cpu_ops
from .quant_weight import QuantWeight
from .triton_support import use_triton


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    if use_triton(x) and x.dim() == 2 and x.stride(1) == 1 and (
            residual is None or residual.stride(1) == 1):
        from .triton_rms_norm import add_rms_norm_triton
        return add_rms_norm_triton(x, residual, weight, eps)
    return cpu_ops.add_rms_norm(x, residual, weight, eps)


def rotary_qk_inplace(qkv: torch.Tensor, q_heads: int, kv_heads: int, head_dim: int,
                      cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Rotate q and k in place in packed qkv rows; False when the caller must use rotary_ref."""
    if use_triton(qkv) and qkv.dim() == 2 and qkv.stride(1) == 1:
        from .triton_rotary import rotary_qk_inplace_triton
        rotary_qk_inplace_triton(qkv, q_heads, kv_heads, head_dim, cos, sin)
        return True
    return cpu_ops.rotary_qk_inplace(qkv, q_heads, kv_heads, head_dim, cos, sin)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate_up) and gate_up.dim() == 2 and gate_up.stride(1) == 1:
        from .triton_silu_and_mul import silu_and_mul_triton
        return silu_and_mul_triton(gate_up)
    return cpu_ops.silu_and_mul(gate_up)


def quant_linear(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None,
                 cpu_gemm_dtype: str = "float32", split: torch.Tensor | None = None) -> torch.Tensor:
    """Low-bit matmul: in x's dtype on CUDA, fp32 on CPU (above decode size as cpu_gemm_dtype
    says; see cpu_quant_linear)."""
    if use_triton(x, w.qweight):
        from .triton_quant_linear import quant_linear_triton
        return quant_linear_triton(x, w, bias)
    from .cpu_quant_linear import quant_linear as quant_linear_cpu
    return quant_linear_cpu(x, w, bias, cpu_gemm_dtype, split)
