"""KV-cache quantization, int8 and int4: online, per token and per KV head, asymmetric. Torch reference.

One layer's quantized cache (QuantKVCache) holds, for K and for V:
  data        uint8   [num_blocks, block_size, kv_heads, D]       int8: one value per byte
              uint8   [num_blocks, block_size, kv_heads, D // 2]  int4: byte j holds element j in its
                                                                  low nibble and j + D/2 in its high one
  scale_zero  float16 [num_blocks, block_size, kv_heads, 2]       x ~= q * scale + zero

`zero` is the row's minimum, so q = round((x - zero) / scale) in [0, 2^bits - 1]; x is quantized
against the float16-rounded scale and zero it will be dequantized with. The int4 nibble layout is
split by halves (not interleaved) so that 8 consecutive bytes give 8 consecutive elements of each
half with one mask or one shift in the CPU kernel.

Rotation (our addition; LMDeploy does not rotate): before quantizing, each K and V row may be
multiplied by an orthogonal matrix R (a normalized Hadamard matrix when head_dim is a power of two).
Rotation spreads an outlier channel over all channels, which int4's 16 levels need; since
(q R).(k R) = q.k and sum_t p_t v_t R = (sum_t p_t v_t) R, attention can run in the rotated basis
(rotate q, un-rotate the output) or on un-rotated dequantized rows, with the same result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_SCALE_DTYPE = torch.float16
_BITS = (4, 8)


def check_bits(bits: int) -> None:
    if bits not in _BITS:
        raise ValueError(f"--quant-policy must be 4 or 8 for a quantized KV cache, got {bits}")


def packed_dim(head_dim: int, bits: int) -> int:
    check_bits(bits)
    if bits == 4 and head_dim % 2:
        raise ValueError(f"int4 KV cache needs an even head_dim, got {head_dim}")
    return head_dim if bits == 8 else head_dim // 2


def bytes_per_token_head(head_dim: int, bits: int) -> int:
    """Cache bytes of one token of one KV head, for K or for V: data plus float16 scale and zero."""
    return packed_dim(head_dim, bits) + 2 * torch.finfo(_SCALE_DTYPE).bits // 8


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 values < 16, [..., D] -> [..., D/2]: element j low nibble, j + D/2 high nibble."""
    half = q.shape[-1] // 2
    return q[..., :half] | (q[..., half:] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1)


def quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] float -> (data uint8 [..., packed D], scale_zero float16 [..., 2])."""
    check_bits(bits)
    qmax = (1 << bits) - 1
    x = x.float()
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale_zero = torch.cat([(hi - lo) / qmax, lo], dim=-1).to(_SCALE_DTYPE)
    scale, zero = scale_zero.float().split(1, dim=-1)
    # a constant row has scale 0: every q is 0 and dequantizes to the stored minimum
    q = torch.round((x - zero) / torch.where(scale > 0, scale, 1.0)).clamp_(0, qmax).to(torch.uint8)
    return (pack_int4(q) if bits == 4 else q), scale_zero


def dequantize(data: torch.Tensor, scale_zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of quantize: float32 [..., D]."""
    q = unpack_int4(data) if bits == 4 else data
    scale, zero = scale_zero.float().split(1, dim=-1)
    return q.float() * scale + zero


def hadamard(d: int) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix [d, d] (d a power of two): symmetric and orthogonal."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(d)


def rotation_matrix(d: int) -> torch.Tensor:
    """An orthogonal [d, d] float32 matrix: Hadamard for powers of two, else a fixed random one."""
    if d & (d - 1) == 0:
        return hadamard(d)
    gen = torch.Generator().manual_seed(d)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


@dataclass(slots=True)
class QuantKVCache:
    """One layer's int8/int4 K/V cache; `rotation` [D, D] or None (rows stored as x @ rotation)."""
    k: torch.Tensor
    v: torch.Tensor
    k_scale_zero: torch.Tensor
    v_scale_zero: torch.Tensor
    bits: int
    head_dim: int
    rotation: torch.Tensor | None = None

    @classmethod
    def allocate(cls, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, bits: int,
                 rotate: bool, zeros=None) -> QuantKVCache:
        """`zeros(shape, dtype)` makes the tensors (default torch.zeros): the engine passes its
        lazily committed CPU allocator."""
        zeros = zeros or (lambda shape, dtype: torch.zeros(shape, dtype=dtype))
        data = (num_blocks, block_size, kv_heads, packed_dim(head_dim, bits))
        sz = (num_blocks, block_size, kv_heads, 2)
        k = zeros(data, torch.uint8)
        rotation = rotation_matrix(head_dim).to(k.device) if rotate else None
        return cls(k, zeros(data, torch.uint8), zeros(sz, _SCALE_DTYPE), zeros(sz, _SCALE_DTYPE),
                   bits, head_dim, rotation)

    @property
    def num_blocks(self) -> int:
        return self.k.shape[0]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation.to(x.dtype)

    def unrotate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation.T.to(x.dtype)

    def store(self, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Quantize new k/v [T, kv_heads, D] into their slots."""
        for x, data, sz in ((k, self.k, self.k_scale_zero), (v, self.v, self.v_scale_zero)):
            q, scale_zero = quantize(self.rotate(x.float()), self.bits)
            data.view(-1, *data.shape[2:]).index_copy_(0, slot_mapping, q)
            sz.view(-1, *sz.shape[2:]).index_copy_(0, slot_mapping, scale_zero)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """What a row reads back after `store`: quantized, dequantized, un-rotated; x's dtype."""
        q, scale_zero = quantize(self.rotate(x.float()), self.bits)
        return self.unrotate(dequantize(q, scale_zero, self.bits)).to(x.dtype)

    def dequantize_blocks(self, block_ids: torch.Tensor, dtype=torch.float32):
        """Float K and V [n, block_size, kv_heads, D] of the given blocks, un-rotated."""
        k = dequantize(self.k[block_ids], self.k_scale_zero[block_ids], self.bits)
        v = dequantize(self.v[block_ids], self.v_scale_zero[block_ids], self.bits)
        return self.unrotate(k).to(dtype), self.unrotate(v).to(dtype)
