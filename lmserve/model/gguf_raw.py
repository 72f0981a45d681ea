"""A linear weight kept in llama.cpp's own block format, for kernels that read ggml blocks directly.

The loader yields one of these instead of a float tensor when asked (`keep_gguf_quantized=True`), so a
Q4_1 file can be served at 4 bits without a round trip through float32 and a re-quantization.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# (elements per block, bytes per block) of the block formats we hand out raw; the values are ggml's
# and match gguf.GGML_QUANT_SIZES. Kept here so consumers need not import gguf to size a row.
RAW_BLOCK_SIZES: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),   # fp16 scale d, 16 bytes of nibbles; x = (q - 8) * d
    "Q4_1": (32, 20),   # fp16 scale d, fp16 min m, 16 bytes of nibbles; x = q * d + m
    "Q8_0": (32, 34),   # fp16 scale d, 32 int8; x = q * d
}


@dataclass(slots=True)
class GGUFRawWeight:
    """Raw ggml blocks of one [out_features, in_features] weight, one row of blocks per output row.

    Rows are whole (a block never spans two rows), so the rows may be permuted like any tensor's;
    the loader uses that to put q/k rows back in Hugging Face order.
    """
    qtype: str                 # "Q4_0" | "Q4_1" | "Q8_0"
    data: torch.Tensor         # uint8 [out_features, bytes_per_row]
    shape: tuple[int, int]     # (out_features, in_features) of the dequantized weight

    def __post_init__(self):
        if self.qtype not in RAW_BLOCK_SIZES:
            raise ValueError(f"GGUFRawWeight: qtype must be one of {sorted(RAW_BLOCK_SIZES)}, "
                             f"got {self.qtype!r}")
        if self.data.dtype != torch.uint8 or self.data.dim() != 2:
            raise ValueError(f"GGUFRawWeight: data must be a 2-D uint8 tensor, got "
                             f"{self.data.dtype} of shape {tuple(self.data.shape)}")
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != 2:
            raise ValueError(f"GGUFRawWeight: shape must be (out_features, in_features), got {self.shape}")
        block, nbytes = RAW_BLOCK_SIZES[self.qtype]
        out_features, in_features = self.shape
        if in_features % block:
            raise ValueError(f"GGUFRawWeight: in_features ({in_features}) must be a multiple of the "
                             f"{self.qtype} block size {block}")
        expected = (out_features, in_features // block * nbytes)
        if tuple(self.data.shape) != expected:
            raise ValueError(f"GGUFRawWeight: a {self.qtype} weight of shape {self.shape} needs data of "
                             f"shape {expected}, got {tuple(self.data.shape)}")

    @property
    def bytes_per_row(self) -> int:
        return int(self.data.shape[1])

    def dequantize(self) -> torch.Tensor:
        """The float32 weight; for tests and fallbacks, not for the hot path."""
        from lmserve.model.gguf_dequant import dequantize_blocks
        return torch.from_numpy(dequantize_blocks(self.data.numpy(), self.qtype)).reshape(self.shape)
