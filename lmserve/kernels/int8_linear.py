"""W8A8 linear on CPU: int8 weights with one scale per output channel, activations quantized to
int8 per token at run time (SmoothQuant's dynamic per-token scheme), int32 accumulation.

    y[t, o] = (sum_i xq[t, i] * wq[o, i]) * sx[t] * sw[o],  sx[t] = max_i |x[t, i]| / 127

torch._int_mm does the int8 x int8 -> int32 product where this torch has it for CPU; elsewhere
the same integers are multiplied in float64, which holds their sums exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True, eq=False)
class Int8Weight:
    qweight: torch.Tensor      # int8 [out, in]
    scales: torch.Tensor       # float32 [out]

    def __post_init__(self):
        q, s = self.qweight, self.scales
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"Int8Weight: qweight must be a 2-D int8 tensor, got {q.dtype} "
                             f"{list(q.shape)}")
        if s.dtype != torch.float32 or tuple(s.shape) != (q.shape[0],):
            raise ValueError(f"Int8Weight: scales must be float32 [{q.shape[0]}], got {s.dtype} "
                             f"{list(s.shape)}")

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)

    @property
    def nbytes(self) -> int:
        return self.qweight.numel() + self.scales.numel() * 4

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]

    def rows(self, start: int, end: int) -> Int8Weight:
        return Int8Weight(self.qweight[start:end], self.scales[start:end])

    @staticmethod
    def cat_rows(weights: list[Int8Weight]) -> Int8Weight:
        return Int8Weight(torch.cat([w.qweight for w in weights]).contiguous(),
                          torch.cat([w.scales for w in weights]))

    @classmethod
    def quantize(cls, w: torch.Tensor) -> Int8Weight:
        """Symmetric per-output-channel int8 of a float [out, in] weight."""
        w = w.detach().float()
        scales = (w.abs().amax(1) / 127.0).clamp(min=1e-8)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scales)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [T, in] -> (int8 [T, in], float32 [T, 1] scales)."""
    sx = (x.abs().amax(1, keepdim=True) / 127.0).clamp(min=1e-8)
    return torch.round(x / sx).clamp(-127, 127).to(torch.int8), sx


def _int_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    try:
        return torch._int_mm(a, b_t.t())
    except (RuntimeError, AttributeError):
        return (a.double() @ b_t.double().t()).to(torch.int32)


def int8_linear(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 [..., in] -> fp32 [..., out]."""
    if x.shape[-1] != w.in_features:
        raise ValueError(f"int8_linear: x has {x.shape[-1]} features but the weight expects "
                         f"{w.in_features}")
    x2 = x.reshape(-1, w.in_features).float()
    xq, sx = quantize_per_token(x2)
    y = _int_mm(xq, w.qweight).float() * sx * w.scales
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*x.shape[:-1], w.out_features)
