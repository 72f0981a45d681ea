"""Fused element-wise decoder ops for fp32 on CPU: add + RMSNorm, rotary in place, SiLU-and-mul.

At batch-1 decode with low-bit weights the matmuls of a layer take ~0.25 ms, and the dozen small
torch ops around them took as long again (measured: RMSNorm 26 us, rotary of q and k 53 us, each a
chain of dispatches and temporaries). csrc/cpu_ops.cpp does each in one pass. Every op has its
torch definition here, used for other dtypes and wherever the extension cannot be built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_extension import CPUExtension

_EXT = CPUExtension("lmserve_cpu_ops", ("cpu_ops_bind.cpp", "cpu_ops.cpp"), reference="torch element-wise ops")


def add_rms_norm_ref(x, residual, weight, eps):
    """(rms_norm(x + residual) * weight, x + residual), the norm computed in fp32."""
    summed = x if residual is None else x + residual
    xf = summed.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(summed.dtype), summed


def add_rms_norm(x, residual, weight, eps):
    ext = _EXT.get() if _fp32_rows(x) and weight.dtype == torch.float32 else None
    if ext is None or (residual is not None and not _fp32_rows(residual)):
        return add_rms_norm_ref(x, residual, weight, eps)
    return ext.add_rms_norm(x, residual, weight, eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos/sin: [T, 1, D]."""
    return x * cos + rotate_half(x) * sin


def rotary_qk_inplace(qkv: torch.Tensor, q_heads: int, kv_heads: int, head_dim: int,
                      cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Rotate the q and k heads at the front of each packed [q | k | v] row of qkv in place.

    cos/sin: [T, 1, D]. Returns False (and leaves qkv alone) when the caller must use rotary_ref.
    """
    if not (_fp32_rows(qkv) and cos.dtype == torch.float32):
        return False
    ext = _EXT.get()
    if ext is None:
        return False
    ext.rotary_inplace(qkv, q_heads + kv_heads, head_dim, cos.view(cos.shape[0], -1),
                       sin.view(sin.shape[0], -1))
    return True


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    ext = _EXT.get() if _fp32_rows(gate_up) else None
    return silu_and_mul_ref(gate_up) if ext is None else ext.silu_and_mul(gate_up)


def _fp32_rows(t: torch.Tensor) -> bool:
    # runs ~180 times per decode step: cheap attribute tests only (no torch.device objects)
    return (t.dtype is torch.float32 and t.is_cpu and t.dim() == 2 and t.stride(1) == 1
            and not t.requires_grad)
