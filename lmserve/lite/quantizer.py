"""Group-wise integer quantization with integer zero points, the convention of AWQ and GPTQ files:

    w ~= (q - z) * s,  q and z in [0, 2^bits - 1], s float16, one (s, z) per `group_size` inputs.

4-bit is asymmetric (z from the group's min, as AutoAWQ's zero_point=True); 8-bit is symmetric
(z = 128, AutoGPTQ's default sym=True), which is accurate at 8 bits and keeps GPTQ's stored z - 1
representable. Scales are rounded to float16 before the codes are chosen, so the codes are the best
ones for the scale actually stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.kernels.quant_weight import QuantWeight

GROUP_SIZES = (32, 64, 128)
W_BITS = (4, 8)


def check_group_size(in_features: int, group_size: int, name: str) -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"--w-group-size must be one of {', '.join(map(str, GROUP_SIZES))}, "
                         f"got {group_size}")
    if in_features % group_size:
        fits = [g for g in GROUP_SIZES if in_features % g == 0]
        raise ValueError(f"--w-group-size {group_size} does not divide the {in_features} input "
                         f"features of {name}; group sizes that do: "
                         f"{', '.join(map(str, fits)) or 'none'}")


@dataclass(slots=True)
class GroupQuant:
    q: torch.Tensor          # uint8 [out, in]
    zeros: torch.Tensor      # uint8 [out, in // group_size]
    scales: torch.Tensor     # float16 [out, in // group_size]
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        z = self.zeros.float().repeat_interleave(self.group_size, 1)
        s = self.scales.float().repeat_interleave(self.group_size, 1)
        return (self.q.float() - z) * s

    def to_quant_weight(self) -> QuantWeight:
        """The engine's in-memory form: w = code * s + min with min = (offset - z) * s in fp32."""
        s = self.scales.float()
        if self.bits == 4:
            return QuantWeight.from_q(self.q, self.scales, -self.zeros.float() * s, 4, self.group_size)
        codes = (self.q.to(torch.int16) - 128).to(torch.int8)
        return QuantWeight.from_q(codes, self.scales, (128 - self.zeros.float()) * s, 8,
                                  self.group_size)


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out, in_features = w.shape
    return w.float().reshape(out, in_features // group_size, group_size)


def quantize_groups(w: torch.Tensor, bits: int, group_size: int,
                    clip: torch.Tensor | None = None) -> GroupQuant:
    """w: float [out, in]. clip: optional [out, groups] fraction of each group's range to keep."""
    if bits not in W_BITS:
        raise ValueError(f"--w-bits must be 4 or 8, got {bits}")
    check_group_size(w.shape[1], group_size, f"a weight of shape {list(w.shape)}")
    g = _grouped(w, group_size)
    s, z = group_params(g, bits, clip)
    q = quantize_codes(g, s[..., None], z[..., None], bits)
    return GroupQuant(q.reshape(w.shape).to(torch.uint8), z.to(torch.uint8), s.half(), bits,
                      group_size)


def group_params(g: torch.Tensor, bits: int, clip: torch.Tensor | None = None,
                 min_zero: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """g: [..., group_size] one group per last-dim row -> (scale, zero point) per group, fp32
    (the scale already rounded to float16). min_zero 1 keeps z - 1 representable (GPTQ's
    original format stores z - 1 in 4 bits): an all-positive group then spans [-s, 14 s]."""
    max_q = (1 << bits) - 1
    if bits == 8:
        absmax = g.abs().amax(-1)
        if clip is not None:
            absmax = absmax * clip
        s = (absmax / 127.0).clamp(min=1e-8).half().float()
        return s, torch.full_like(s, 128.0)
    hi, lo = g.amax(-1), g.amin(-1)
    if clip is not None:
        hi, lo = hi * clip, lo * clip
    hi, lo = hi.clamp(min=0), lo.clamp(max=0)            # 0 stays exactly representable
    s = ((hi - lo) / max_q).clamp(min=1e-8).half().float()
    z = torch.round(-lo / s).clamp(0, max_q)
    if min_zero:
        low = z < min_zero
        s = torch.where(low, (hi / (max_q - min_zero)).clamp(min=1e-8).half().float(), s)
        z = z.clamp(min=min_zero)
    return s, z


def quantize_codes(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int) -> torch.Tensor:
    """Float codes in [0, 2^bits - 1] of x for scale s and zero point z (broadcast)."""
    return (torch.round(x / s) + z).clamp(0, (1 << bits) - 1)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int,
                  clip: torch.Tensor | None = None) -> torch.Tensor:
    """The float weight the quantized one stands for (quantize then dequantize), fp32."""
    return quantize_groups(w, bits, group_size, clip).dequantize()
