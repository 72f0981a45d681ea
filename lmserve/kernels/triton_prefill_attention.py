"""Prefill attention over a paged KV cache with a causal mask, as a Triton kernel.

Reference: paged_attention.paged_prefill_attention_ref. The q_len query rows are the last q_len
tokens of a context of context_len tokens already in the cache (a whole prompt, a chunk of a
chunked prefill, or the tail after a prefix-cache hit). One program per (tile of BLOCK_M query
rows, query head) runs a flash-attention loop over the cached K/V, gathered through the block
table, and stops at the tile's last causal position.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_support import dot_in_fp32, next_power_of_2

_BLOCK_M = 16
_BLOCK_N = 32


@triton.jit
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, out_ptr, scale, q_len,
                    context_len, q_stride_t, q_stride_h, o_stride_t, o_stride_h,
                    GROUP: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr, CACHE_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr):
    tile_m = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    q_pos = context_len - q_len + rows
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + rows[:, None].to(tl.int64) * q_stride_t + head * q_stride_h + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # keys after the tile's last query position are masked for every row: do not visit them
    end = tl.minimum(context_len, context_len - q_len + (tile_m + 1) * BLOCK_M)
    for tile in range(0, end, BLOCK_N):
        pos = tile + tl.arange(0, BLOCK_N)
        valid = pos < end
        block = tl.load(block_table_ptr + pos // CACHE_BLOCK, mask=valid, other=0)
        slot = block.to(tl.int64) * CACHE_BLOCK + pos % CACHE_BLOCK
        kv_row = (slot * KV_HEADS + kv_head) * HEAD_DIM
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + kv_row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        else:
            scores = tl.dot(q, tl.trans(k)) * scale
        causal = valid[None, :] & (pos[None, :] <= q_pos[:, None])
        scores = tl.where(causal, scores, float("-inf"))
        # position 0 is in the first tile and visible to every row, so run_max is finite after it
        new_max = tl.maximum(run_max, tl.max(scores, axis=1))
        p = tl.exp(scores - new_max[:, None])
        rescale = tl.exp(run_max - new_max)
        run_sum = run_sum * rescale + tl.sum(p, axis=1)
        if DOT_FP32:
            acc = acc * rescale[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
        run_max = new_max

    out = acc / run_sum[:, None]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * o_stride_t + head * o_stride_h + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


def paged_prefill_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                   block_table: torch.Tensor, context_len: int,
                                   scale: float) -> torch.Tensor:
    """q: [q_len, heads, D] (the last q_len of context_len tokens) -> [q_len, heads, D]."""
    q_len, heads, head_dim = q.shape
    _, cache_block, kv_heads, _ = k_cache.shape
    if q.stride(2) != 1 or heads % kv_heads or not 0 < q_len <= context_len:
        raise ValueError(f"paged_prefill_attention_triton: need contiguous q head rows, heads "
                         f"({heads}) a multiple of kv heads ({kv_heads}) and "
                         f"0 < q_len ({q_len}) <= context_len ({context_len})")
    if q.dtype != k_cache.dtype:
        raise ValueError(f"paged_prefill_attention_triton: q is {q.dtype} but the cache is "
                         f"{k_cache.dtype}")
    out = torch.empty((q_len, heads, head_dim), dtype=q.dtype, device=q.device)
    # tl.dot needs every dimension >= 16 on the GPU: smaller head dims are padded and masked
    grid = (triton.cdiv(q_len, _BLOCK_M), heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_table, out, scale, q_len, context_len, q.stride(0), q.stride(1),
        out.stride(0), out.stride(1), GROUP=heads // kv_heads, KV_HEADS=kv_heads,
        HEAD_DIM=head_dim, BLOCK_D=max(16, next_power_of_2(head_dim)), CACHE_BLOCK=cache_block,
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, DOT_FP32=dot_in_fp32(q.dtype, q.device))
    return out
