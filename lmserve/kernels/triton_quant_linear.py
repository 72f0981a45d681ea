"""y = x @ dequant(W).T for low-bit QuantWeight (W4A16 / W8A16) on CUDA, as Triton kernels.

Reference: cpu_quant_linear.quant_linear_ref. The weight stays in QuantWeight's layout (4-bit codes
in quant_layout's word-interleaved nibble order, or int8; per-group scales and mins [out, in/group])
and is dequantized tile by tile in registers: w = q * scale + min in fp32, then rounded to the
activation dtype for the dot. Kernels by shape (gemlite's split):
- M == 1 (batch-1 decode): a GEMV, one program per (BLOCK_N output rows, split of K); splitting K
  gives a few hundred programs even for narrow layers, since the cost is reading every weight once.
- M <= _SMALL_M (batched decode): the tiled kernel with a 16-row M tile, also split along K.
- larger M (prefill): the tiled kernel with 64-row tiles and no split.
Split-K partial sums land in an fp32 buffer that torch sums; one split writes the output directly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .quant_weight import QuantWeight
from .triton_support import dot_in_fp32

_SMALL_M = 16


@triton.jit
def _dequant_tile(qw_ptr, scales_ptr, mins_ptr, n, k, n_mask, k_mask, in_features, qw_stride,
                  s_stride, BITS: tl.constexpr, GROUP: tl.constexpr, HAS_MINS: tl.constexpr):
    """fp32 weights [len(n), len(k)] of output rows n and input columns k."""
    mask = n_mask[:, None] & k_mask[None, :]
    if BITS == 4:
        # quant_layout: chunks of 64 inputs (a trailing 32 when in % 64 == 32) as 32-bit words;
        # input chunk + k*lanes + j is nibble k of word j, byte j*4 + k//2, high nibble if k odd
        chunk = (k // 64) * 64
        lanes = tl.where(in_features - chunk >= 64, 8, 4)
        e = k - chunk
        nib = e // lanes
        byte = chunk // 2 + (e % lanes) * 4 + nib // 2
        packed = tl.load(qw_ptr + n[:, None].to(tl.int64) * qw_stride + byte[None, :], mask=mask,
                         other=0)
        q = ((packed >> ((nib % 2) * 4)[None, :]) & 0xF).to(tl.float32)
    else:
        q = tl.load(qw_ptr + n[:, None].to(tl.int64) * qw_stride + k[None, :], mask=mask,
                    other=0).to(tl.float32)
    g = n[:, None].to(tl.int64) * s_stride + (k // GROUP)[None, :]
    w = q * tl.load(scales_ptr + g, mask=mask, other=0.0).to(tl.float32)
    if HAS_MINS:
        w += tl.load(mins_ptr + g, mask=mask, other=0.0).to(tl.float32)
    return w


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, scales_ptr, mins_ptr, bias_ptr, out_ptr, N, K, qw_stride, s_stride,
                 k_per_split, BITS: tl.constexpr, GROUP: tl.constexpr, HAS_MINS: tl.constexpr,
                 HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    k_start = tl.program_id(1) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < k_end
        x = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
        w = _dequant_tile(qw_ptr, scales_ptr, mins_ptr, n, k, n_mask, k_mask, K, qw_stride,
                          s_stride, BITS, GROUP, HAS_MINS)
        # the weights are rounded to the activation dtype, as the tiled kernel's dot sees them
        w = w.to(x_ptr.dtype.element_ty).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    if SPLIT:
        tl.store(out_ptr + tl.program_id(1) * N + n, acc, mask=n_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, scales_ptr, mins_ptr, bias_ptr, out_ptr, M, N, K, x_stride,
                 qw_stride, s_stride, k_per_split, BITS: tl.constexpr, GROUP: tl.constexpr,
                 HAS_MINS: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                 DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = m < M, n < N
    k_start = tl.program_id(2) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < k_end
        x = tl.load(x_ptr + m[:, None].to(tl.int64) * x_stride + k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = _dequant_tile(qw_ptr, scales_ptr, mins_ptr, n, k, n_mask, k_mask, K, qw_stride,
                          s_stride, BITS, GROUP, HAS_MINS).to(x.dtype)
        if DOT_FP32:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    out_mask = m_mask[:, None] & n_mask[None, :]
    offs = m[:, None].to(tl.int64) * N + n[None, :]
    if SPLIT:
        tl.store(out_ptr + tl.program_id(2).to(tl.int64) * M * N + offs, acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _num_splits(tiles: int, k: int, block_k: int, device: torch.device) -> int:
    """Enough K splits that tiles * splits covers the GPU about four times over."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    k_tiles = triton.cdiv(k, block_k)
    return max(1, min(k_tiles, (4 * sms) // max(tiles, 1)))


def quant_linear_triton(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None,
                        split_k: int | None = None) -> torch.Tensor:
    """[..., in] in fp16/bf16/fp32 -> [..., out] in x's dtype. split_k overrides the heuristic."""
    if x.shape[-1] != w.in_features:
        raise ValueError(f"quant_linear_triton: x has {x.shape[-1]} features but the weight "
                         f"expects {w.in_features}")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    m, k, n = x2.shape[0], w.in_features, w.out_features
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out.reshape(*x.shape[:-1], n)
    mins = w.mins if w.mins is not None else w.scales
    meta = dict(BITS=w.bits, GROUP=w.group_size, HAS_MINS=w.mins is not None,
                HAS_BIAS=bias is not None)
    if m == 1:
        block_n, block_k = 32, 128
        tiles = (triton.cdiv(n, block_n), 1)
    elif m <= _SMALL_M:
        block_m, block_n, block_k = 16, 64, 64
        tiles = (1, triton.cdiv(n, block_n))
    else:
        block_m, block_n, block_k = 64, 64, 32
        tiles = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        split_k = 1 if split_k is None else split_k
    splits = split_k or _num_splits(tiles[0] * tiles[1], k, block_k, x.device)
    k_per_split = triton.cdiv(triton.cdiv(k, block_k), splits) * block_k
    splits = triton.cdiv(k, k_per_split)
    target = out if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32,
                                                 device=x.device)
    args = (w.qweight, w.scales, mins, bias if bias is not None else w.scales, target)
    if m == 1:
        _gemv_kernel[(tiles[0], splits)](
            x2, *args, n, k, w.qweight.stride(0), w.scales.stride(0), k_per_split,
            SPLIT=splits > 1, BLOCK_N=block_n, BLOCK_K=block_k, **meta)
    else:
        _gemm_kernel[(*tiles, splits)](
            x2, *args, m, n, k, x2.stride(0), w.qweight.stride(0), w.scales.stride(0),
            k_per_split, SPLIT=splits > 1, DOT_FP32=dot_in_fp32(x.dtype, x.device),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, **meta)
    if splits > 1:
        summed = target.sum(0)
        if bias is not None:
            summed += bias.float()
        out.copy_(summed)
    return out.reshape(*x.shape[:-1], n)
