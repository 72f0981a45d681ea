"""ggml block formats -> float32 torch tensors.

The formats our default model uses (F32, F16, BF16, Q8_0, Q4_0, Q4_1) are decoded here with torch,
which is multi-threaded and ~4x faster than gguf's numpy code on the 135M model; the results are
bit-identical to `gguf.quants.dequantize` (same float32 operations in the same order, see the tests).
Every other type the installed gguf package can decode (K-quants, IQ-quants...) goes through it.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

_Q = GGMLQuantizationType
_FLOAT_VIEWS = {_Q.F32: torch.float32, _Q.F16: torch.float16, _Q.BF16: torch.bfloat16}
_TORCH_DECODED = {"Q4_0", "Q4_1", "Q8_0"}


def supported_types() -> list[str]:
    """Names of every ggml type this installation can turn into float32."""
    names = {t.name for t in _FLOAT_VIEWS} | _TORCH_DECODED
    for qtype in GGMLQuantizationType:
        if getattr(gguf_quants, qtype.name, None) is not None and hasattr(
                getattr(gguf_quants, qtype.name), "dequantize_blocks"):
            names.add(qtype.name)
    return sorted(names)


def dequantize(raw: np.ndarray | torch.Tensor, qtype: GGMLQuantizationType,
               shape: tuple[int, ...]) -> torch.Tensor:
    """Raw bytes of one tensor (any shape of uint8 covering it exactly) -> float32 of `shape`."""
    data = torch.from_numpy(raw) if isinstance(raw, np.ndarray) else raw
    if qtype in _FLOAT_VIEWS:
        # copy=True: an F32 tensor would otherwise alias the file's memory map, and a consumer
        # scaling it in place would change what the next pass over the weights reads
        return data.reshape(-1).view(_FLOAT_VIEWS[qtype]).to(torch.float32, copy=True).reshape(shape)
    if qtype.name in _TORCH_DECODED:
        return dequantize_blocks(data, qtype.name).reshape(shape)
    if qtype.name not in supported_types():
        raise ValueError(f"ggml tensor type {qtype.name} cannot be dequantized by the installed gguf "
                         f"package; supported types: {', '.join(supported_types())}")
    values = gguf_quants.dequantize(data.numpy().reshape(-1), qtype)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)


def dequantize_blocks(data: torch.Tensor, qtype: str) -> torch.Tensor:
    """uint8 bytes of whole Q4_0/Q4_1/Q8_0 blocks -> flat float32 values.

    Written to allocate as little as possible: on our VMs a fresh page costs ~8 us to fault in, so
    temporaries, not arithmetic, dominate (one output buffer, filled and then scaled in place).
    """
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    blocks = data.reshape(-1, type_size)
    out = torch.empty(blocks.shape[0], block, dtype=torch.float32)
    scale = blocks[:, 0:2].contiguous().view(torch.float16).to(torch.float32)     # [n, 1]
    if qtype == "Q8_0":
        out.copy_(blocks[:, 2:].contiguous().view(torch.int8))
        return out.mul_(scale).reshape(-1)
    if qtype == "Q4_0":
        _unpack_nibbles(blocks[:, 2:], out)
        return out.sub_(8.0).mul_(scale).reshape(-1)
    if qtype == "Q4_1":
        minimum = blocks[:, 2:4].contiguous().view(torch.float16).to(torch.float32)
        _unpack_nibbles(blocks[:, 4:], out)
        return out.mul_(scale).add_(minimum).reshape(-1)
    raise ValueError(f"dequantize_blocks handles Q4_0, Q4_1 and Q8_0, got {qtype}")


def _unpack_nibbles(qs: torch.Tensor, out: torch.Tensor) -> None:
    # ggml puts element j in the low nibble of byte j and element j + 16 in its high nibble
    half = qs.shape[1]
    out[:, :half].copy_(qs & 0x0F)
    out[:, half:].copy_(qs >> 4)
