"""Byte layouts of low-bit weights: the kernel's 4-bit packing and the formats we import.

Kernel 4-bit layout ("word-interleaved", read by csrc/quant_gemv.cpp): a row is a run of 64-element
chunks of 32 bytes seen as eight little-endian uint32 words, where element k*8 + j is nibble k of
word j; when in % 64 == 32 the last 32 elements form a chunk of four words with element k*4 + j in
nibble k of word j. One 256-bit load and one AND per nibble then yield 8 consecutive weights in
lane order, which is what makes the AVX2 GEMV cheap enough to stay memory-bound.
"""
from __future__ import annotations

import numpy as np
import torch

# AutoAWQ's GEMM packing puts output column order[i] of each group of 8 in nibble i.
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Nibble that holds output column j: the inverse permutation of AWQ_PACK_ORDER.
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)

# ggml block sizes in bytes for 32 weights, see ggml-common.h.
GGML_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def _chunks(in_features: int) -> list[tuple[int, int]]:
    """(start, lanes) per chunk: full chunks of 64 have 8 lanes, a trailing 32 has 4."""
    return [(start, 8 if in_features - start >= 64 else 4) for start in range(0, in_features, 64)]


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in] values 0..15 -> uint8 [out, in // 2] in the kernel layout."""
    out, in_features = q.shape
    full = in_features // 64 * 64
    parts = []
    if full:    # all full chunks in one pass: loading a model packs ~10^8 weights
        c = q[:, :full].reshape(out, full // 64, 4, 2, 8)    # [out, chunk, b, lo/hi, lane j]
        byte = c[:, :, :, 0, :] | (c[:, :, :, 1, :] << 4)     # byte b of word j
        parts.append(byte.transpose(2, 3).reshape(out, full // 2))
    if full < in_features:
        c = q[:, full:].reshape(out, 4, 2, 4)
        byte = c[:, :, 0, :] | (c[:, :, 1, :] << 4)
        parts.append(byte.transpose(1, 2).reshape(out, 16))
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: uint8 [out, in // 2] -> uint8 [out, in] values 0..15."""
    out, in_features = packed.shape[0], packed.shape[1] * 2
    parts = []
    for start, lanes in _chunks(in_features):
        byte = packed[:, start // 2:start // 2 + 4 * lanes].reshape(out, lanes, 4).transpose(1, 2)
        nib = torch.stack([byte & 0xF, byte >> 4], dim=2)    # [out, b, lo/hi, j]
        parts.append(nib.reshape(out, 8 * lanes))
    return torch.cat(parts, dim=1)


def parse_ggml_blocks(qtype: str, data: torch.Tensor, out: int, in_features: int, codes: bool = True):
    """ggml Q4_0/Q4_1/Q8_0 rows -> (q, scales fp16, mins fp16/fp32 or None, bits).

    q is uint8 0..15 for 4-bit and int8 for 8-bit, both [out, in] in natural element order;
    None for 4-bit when `codes` is False (the caller unpacks the nibbles itself).
    """
    n_blocks = in_features // 32
    blocks = data.reshape(out, n_blocks, GGML_BLOCK_BYTES[qtype])
    d = _halves(blocks, 0, out, n_blocks)
    if qtype == "Q8_0":
        q = np.ascontiguousarray(blocks.numpy()[:, :, 2:]).view(np.int8).reshape(out, in_features)
        return torch.from_numpy(q), d, None, 8
    first = 4 if qtype == "Q4_1" else 2
    q = None
    if codes:   # low nibbles are elements 0..15 of the block, high nibbles 16..31
        qs = blocks[:, :, first:first + 16]
        q = torch.cat([qs & 0xF, qs >> 4], dim=2).reshape(out, in_features)
    if qtype == "Q4_1":
        return q, d, _halves(blocks, 2, out, n_blocks), 4
    # Q4_0: w = (q - 8) d = q d + (-8 d); -8 d is exact in fp16 unless it overflows.
    mins = d.float() * -8.0
    half = mins.half()
    return q, d.contiguous(), (half if torch.isfinite(half).all() else mins), 4


def _halves(blocks: torch.Tensor, offset: int, out: int, n_blocks: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of every block, [out, n_blocks]. numpy, because torch
    copies 2-byte strided slices of a uint8 tensor element by element (3 s for one model)."""
    field = np.ascontiguousarray(blocks.numpy()[:, :, offset:offset + 2])
    return torch.from_numpy(field.view(np.float16).reshape(out, n_blocks))


def ggml_q4_to_kernel(qtype: str, data: torch.Tensor, out: int, in_features: int):
    """ggml Q4_0/Q4_1 rows straight into the kernel layout: (packed, scales, mins).

    Equal to pack_nibbles(parse_ggml_blocks(...)[0]) but one vectorized pass over the bytes
    (loading the default model went from ~9 s to well under one). A 64-element chunk is two ggml
    blocks; byte b of word j holds chunk elements 16b + j (low) and 16b + 8 + j (high), i.e. for
    b = 0 the low nibbles of block bytes j and 8 + j, for b = 1 their high nibbles, then the same
    for the second block. Rows whose length is an odd number of blocks take the general path.
    """
    n_blocks = in_features // 32
    q, scales, mins, _ = parse_ggml_blocks(qtype, data, out, in_features, codes=n_blocks % 2 == 1)
    if q is not None:
        return pack_nibbles(q), scales, mins
    first = 4 if qtype == "Q4_1" else 2
    qs = data.reshape(out, n_blocks, GGML_BLOCK_BYTES[qtype])[:, :, first:first + 16].numpy()
    x, y = qs[:, :, :8], qs[:, :, 8:]
    low = (x & 0xF) | (y << 4)                 # uint8 arithmetic: y << 4 drops y's high nibble
    high = (x >> 4) | (y & 0xF0)
    words = np.stack([low[:, 0::2], high[:, 0::2], low[:, 1::2], high[:, 1::2]], axis=-1)
    return torch.from_numpy(words.reshape(out, in_features // 2)), scales, mins


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """AutoAWQ GEMM tensors -> (q uint8 [out, in], zeros uint8 [out, in // g], scales [out, in // g])."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)

    def unpack(packed: torch.Tensor) -> torch.Tensor:        # int32 [r, c] -> uint8 [r, c * 8]
        nib = (packed.unsqueeze(-1) >> shifts) & 0xF            # [r, c, nibble]
        nib = nib[:, :, list(AWQ_UNPACK_ORDER)]                # -> [r, c, column within 8]
        return nib.reshape(packed.shape[0], -1).to(torch.uint8)

    return unpack(qweight).t().contiguous(), unpack(qzeros).t().contiguous(), scales.t().contiguous()
