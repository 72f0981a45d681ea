"""Paged-attention decode (one query token per sequence) over the block table, as Triton kernels.

Reference: paged_attention.paged_decode_attention_ref. One program per (sequence, query head,
split): a split walks PARTITION tokens of the context in tiles of BLOCK_N, gathering each token's
K/V row through the block table, with an online softmax. A short context is one split that writes
the output directly; a long one is cut into splits whose partial results (unnormalised sum, running
max, running denominator) a second kernel merges (flash-decoding), so a few long sequences still
occupy the whole GPU. GQA/MQA: query head h reads KV head h // (heads // kv_heads).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_support import next_power_of_2

PARTITION = 512     # tokens per split; contexts up to this length take the single-kernel path
_BLOCK_N = 32


@triton.jit
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
                         out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, scale,
                         q_stride_b, q_stride_h, bt_stride, num_splits,
                         GROUP: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, CACHE_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
                         PARTITION: tl.constexpr, SPLIT: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    split = tl.program_id(2)
    heads = tl.num_programs(1)
    kv_head = head // GROUP
    context_len = tl.load(context_lens_ptr + seq).to(tl.int32)
    start = split * PARTITION
    end = tl.minimum(start + PARTITION, context_len)

    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + seq * q_stride_b + head * q_stride_h + d, mask=d_mask, other=0.0)
    q = q.to(tl.float32) * scale
    run_max = tl.full([], float("-inf"), tl.float32)
    run_sum = tl.full([], 0.0, tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for tile in range(start, end, BLOCK_N):
        pos = tile + tl.arange(0, BLOCK_N)
        valid = pos < end
        block = tl.load(block_tables_ptr + seq * bt_stride + pos // CACHE_BLOCK, mask=valid, other=0)
        slot = block.to(tl.int64) * CACHE_BLOCK + pos % CACHE_BLOCK
        row = (slot * KV_HEADS + kv_head) * HEAD_DIM
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        scores = tl.where(valid, scores, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(scores, axis=0))
        p = tl.exp(scores - new_max)
        rescale = tl.exp(run_max - new_max)
        v = tl.load(v_cache_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * rescale + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        run_sum = run_sum * rescale + tl.sum(p, axis=0)
        run_max = new_max

    out_row = seq * heads + head
    if SPLIT:
        part = out_row * num_splits + split
        tl.store(part_acc_ptr + part * HEAD_DIM + d, acc, mask=d_mask)
        tl.store(part_max_ptr + part, run_max)
        tl.store(part_sum_ptr + part, run_sum)
    else:
        out = acc / run_sum
        tl.store(out_ptr + out_row * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def _merge_splits_kernel(part_acc_ptr, part_max_ptr, part_sum_ptr, out_ptr, num_splits,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    out_row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    s_mask = s < num_splits
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    base = out_row * num_splits
    maxes = tl.load(part_max_ptr + base + s, mask=s_mask, other=float("-inf"))
    sums = tl.load(part_sum_ptr + base + s, mask=s_mask, other=0.0)
    global_max = tl.max(maxes, axis=0)
    # splits past the end of a short sequence hold max -inf, sum 0: their weight is exp(-inf) = 0
    weight = tl.where(s_mask & (maxes > float("-inf")), tl.exp(maxes - global_max), 0.0)
    accs = tl.load(part_acc_ptr + (base + s)[:, None] * HEAD_DIM + d[None, :],
                   mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    total = tl.sum(sums * weight, axis=0)
    out = tl.sum(accs * weight[:, None], axis=0) / total
    tl.store(out_ptr + out_row * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def paged_decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  block_tables: torch.Tensor, context_lens: torch.Tensor,
                                  scale: float, partition: int | None = None) -> torch.Tensor:
    """q: [B, heads, D] -> [B, heads, D]. Splits when the block table can hold more than
    `partition` (default PARTITION) tokens: known on the host from the table's width, so no
    device sync is needed."""
    batch, heads, head_dim = q.shape
    partition = partition or PARTITION
    _, cache_block, kv_heads, _ = k_cache.shape
    if q.stride(2) != 1 or heads % kv_heads or partition % _BLOCK_N:
        raise ValueError(f"paged_decode_attention_triton: need contiguous q head rows, heads "
                         f"({heads}) a multiple of kv heads ({kv_heads}) and a partition that is "
                         f"a multiple of {_BLOCK_N} (got {partition})")
    out = torch.empty((batch, heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    max_len = block_tables.shape[1] * cache_block
    num_splits = max(1, triton.cdiv(max_len, partition))
    split = num_splits > 1
    block_d = next_power_of_2(head_dim)
    if split:
        part_acc = torch.empty((batch * heads * num_splits, head_dim), dtype=torch.float32,
                               device=q.device)
        part_max = torch.empty((batch * heads * num_splits,), dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_acc = part_max = part_sum = out     # unused by the single-split kernel
    _decode_split_kernel[(batch, heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_acc, part_max, part_sum,
        scale, q.stride(0), q.stride(1), block_tables.stride(0), num_splits,
        GROUP=heads // kv_heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        CACHE_BLOCK=cache_block, BLOCK_N=_BLOCK_N, PARTITION=partition, SPLIT=split)
    if split:
        _merge_splits_kernel[(batch * heads,)](
            part_acc, part_max, part_sum, out, num_splits, HEAD_DIM=head_dim, BLOCK_D=block_d,
            BLOCK_S=next_power_of_2(num_splits))
    return out
