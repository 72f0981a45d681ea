"""Rotary embedding (rotate-half layout) in place on packed [q | k | v] rows, as a Triton kernel.

Reference: cpu_ops.rotary_ref. One program per (token, head) of the q and k heads; v is untouched.
The rotation is computed in fp32 and rounded once, so in fp16/bf16 it can differ from the
reference (which rounds after each multiply) by an ulp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_support import next_power_of_2


@triton.jit
def _rotary_kernel(qkv_ptr, cos_ptr, sin_ptr, row_stride, cos_stride, HALF: tl.constexpr,
                   BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs = tl.arange(0, BLOCK_HALF)
    mask = offs < HALF
    base = qkv_ptr + token * row_stride + head * (2 * HALF)
    x1 = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    trig = token * cos_stride
    c1 = tl.load(cos_ptr + trig + offs, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + trig + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + trig + offs, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + trig + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    out_ty = qkv_ptr.dtype.element_ty
    tl.store(base + offs, (x1 * c1 - x2 * s1).to(out_ty), mask=mask)
    tl.store(base + HALF + offs, (x2 * c2 + x1 * s2).to(out_ty), mask=mask)


def rotary_qk_inplace_triton(qkv: torch.Tensor, q_heads: int, kv_heads: int, head_dim: int,
                             cos: torch.Tensor, sin: torch.Tensor) -> None:
    """qkv: [T, (q_heads + 2 kv_heads) * head_dim] with contiguous rows; cos/sin: [T, 1, head_dim]."""
    tokens = qkv.shape[0]
    if qkv.stride(1) != 1 or head_dim % 2:
        raise ValueError("rotary_qk_inplace_triton: qkv needs contiguous rows and an even head_dim")
    cos, sin = cos.reshape(tokens, head_dim), sin.reshape(tokens, head_dim)
    if cos.stride() != sin.stride() or cos.stride(1) != 1:
        cos, sin = cos.contiguous(), sin.contiguous()
    if tokens:
        _rotary_kernel[(tokens, q_heads + kv_heads)](
            qkv, cos, sin, qkv.stride(0), cos.stride(0), HALF=head_dim // 2,
            BLOCK_HALF=next_power_of_2(head_dim // 2))
