"""Write this step's new K/V rows into their paged-cache slots, as a Triton kernel.

Reference: paged_attention.store_kv_ref. Cache layout [num_blocks, block_size, kv_heads, head_dim],
so a slot's kv_heads * head_dim values are contiguous and one program copies a whole token's K and
V. A negative slot means "no slot" (padding rows of a captured CUDA graph) and is skipped.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_support import next_power_of_2


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, k_stride, v_stride,
                     ROW: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        offs = tl.arange(0, BLOCK)
        mask = offs < ROW
        # k/v may be views into the packed qkv projection: a token's heads are contiguous, but
        # rows are qkv-wide apart
        k = tl.load(k_ptr + token * k_stride + offs, mask=mask)
        v = tl.load(v_ptr + token * v_stride + offs, mask=mask)
        ty = k_cache_ptr.dtype.element_ty
        tl.store(k_cache_ptr + slot * ROW + offs, k.to(ty), mask=mask)
        tl.store(v_cache_ptr + slot * ROW + offs, v.to(ty), mask=mask)


def store_kv_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """k, v: [T, kv_heads, head_dim] (head and element strides contiguous); slots: [T]."""
    tokens, kv_heads, head_dim = k.shape
    for t in (k, v):
        if t.stride(2) != 1 or t.stride(1) != head_dim:
            raise ValueError("store_kv_triton: k and v need contiguous [kv_heads, head_dim] rows")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("store_kv_triton: the KV caches must be contiguous")
    row = kv_heads * head_dim
    if tokens:
        _store_kv_kernel[(tokens,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0),
                                    ROW=row, BLOCK=next_power_of_2(row))
