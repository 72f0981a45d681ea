"""ggml block formats -> float32.

The formats our default model uses (F32, F16, BF16, Q8_0, Q4_0, Q4_1) are decoded here; the results
are bit-identical to `gguf.quants.dequantize` (same float32 operations in the same order, see the
tests) but allocate one output buffer instead of several temporaries. Every other type the installed
gguf package can decode (K-quants, IQ-quants...) goes through it.

Why numpy and not torch: these are memory-bound passes over small tensors. On our 2-core machines,
torch's two intra-op threads turn a 0.3 s pass over the default model into 2-10 s whenever another
process holds a core (each parallel region waits for the descheduled thread); numpy's single thread
does not care.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

_Q = GGMLQuantizationType
_OWN_BLOCK_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def supported_types() -> list[str]:
    """Names of every ggml type this installation can turn into float32."""
    names = {"F32", "F16", "BF16", *_OWN_BLOCK_TYPES}
    for qtype in GGMLQuantizationType:
        if hasattr(getattr(gguf_quants, qtype.name, None), "dequantize_blocks"):
            names.add(qtype.name)
    return sorted(names)


def dequantize(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> np.ndarray:
    """Raw uint8 bytes of one tensor (any shape covering it exactly) -> new float32 array of `shape`.

    Always a copy: the input usually aliases a memory-mapped file.
    """
    flat = raw.reshape(-1)
    if qtype == _Q.F32:
        return flat.view(np.float32).reshape(shape).copy()
    if qtype == _Q.F16:
        return flat.view(np.float16).astype(np.float32).reshape(shape)
    if qtype == _Q.BF16:
        # bfloat16 is the top half of a float32
        return (flat.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if qtype.name in _OWN_BLOCK_TYPES:
        return dequantize_blocks(flat, qtype.name).reshape(shape)
    if qtype.name not in supported_types():
        raise ValueError(f"ggml tensor type {qtype.name} cannot be dequantized by the installed gguf "
                         f"package; supported types: {', '.join(supported_types())}")
    values = gguf_quants.dequantize(flat, qtype)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(shape)


def dequantize_blocks(data: np.ndarray, qtype: str) -> np.ndarray:
    """uint8 bytes of whole Q4_0/Q4_1/Q8_0 blocks -> flat float32 values."""
    if qtype not in _OWN_BLOCK_TYPES:
        raise ValueError(f"dequantize_blocks handles {', '.join(_OWN_BLOCK_TYPES)}, got {qtype}")
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    blocks = data.reshape(-1, type_size)
    out = np.empty((blocks.shape[0], block), dtype=np.float32)
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)          # [n, 1]
    if qtype == "Q8_0":
        out[:] = blocks[:, 2:].view(np.int8)
        out *= scale
    elif qtype == "Q4_0":
        _unpack_nibbles(blocks[:, 2:], out)
        out -= np.float32(8.0)
        out *= scale
    else:  # Q4_1
        minimum = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        _unpack_nibbles(blocks[:, 4:], out)
        out *= scale
        out += minimum
    return out.reshape(-1)


def _unpack_nibbles(qs: np.ndarray, out: np.ndarray) -> None:
    # ggml puts element j in the low nibble of byte j and element j + 16 in its high nibble
    half = qs.shape[1]
    out[:, :half] = qs & 0x0F
    out[:, half:] = qs >> 4
