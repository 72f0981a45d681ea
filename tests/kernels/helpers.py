"""Builders of real on-disk byte layouts (ggml blocks, AutoAWQ packing) for the kernel tests."""
from __future__ import annotations

import numpy as np
import torch

from lmserve.kernels.quant_layout import AWQ_PACK_ORDER


def random_ggml_bytes(qtype: str, out: int, in_features: int, seed: int = 0) -> np.ndarray:
    """Rows of ggml blocks with random codes and fp16 scales, written field by field."""
    rng = np.random.default_rng(seed)
    blocks = out * (in_features // 32)
    d = (rng.random(blocks, dtype=np.float32) * 0.02 + 1e-3).astype(np.float16)
    fields = [d.view(np.uint8).reshape(blocks, 2)]
    if qtype == "Q4_1":
        m = (rng.standard_normal(blocks).astype(np.float32) * 0.1).astype(np.float16)
        fields.append(m.view(np.uint8).reshape(blocks, 2))
    if qtype == "Q8_0":
        fields.append(rng.integers(-128, 128, (blocks, 32), dtype=np.int8).view(np.uint8))
    else:
        fields.append(rng.integers(0, 256, (blocks, 16), dtype=np.uint8))
    return np.concatenate(fields, axis=1).reshape(out, -1)


def awq_pack(codes: torch.Tensor) -> torch.Tensor:
    """[rows, cols] 0..15 -> int32 [rows, cols / 8] the way AutoAWQ's GEMM packer does."""
    packed = torch.zeros(codes.shape[0], codes.shape[1] // 8, dtype=torch.int32)
    for i, col in enumerate(AWQ_PACK_ORDER):
        packed |= codes[:, col::8].to(torch.int32) << (4 * i)
    return packed
