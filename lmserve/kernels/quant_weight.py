"""Group-wise asymmetric low-bit linear weights kept in low-bit form in memory.

w[o, i] = q[o, i] * scales[o, i // g] + mins[o, i // g], evaluated in fp32. 4-bit q are unsigned
nibbles packed in the kernel's word-interleaved layout (quant_layout.py); 8-bit q are signed int8
in natural order. Every import path (ggml Q4_0/Q4_1/Q8_0, AutoAWQ, round-to-nearest) maps onto this
one form, so one kernel serves them all and the dequantized value is exactly the source format's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import quant_layout

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
_SCALE_DTYPES = (torch.float16, torch.float32)
_DEVICES = ("cpu", "cuda")     # CPU: the C++ kernel; CUDA: the Triton kernel (triton_quant_linear)


@dataclass(slots=True, eq=False)
class QuantWeight:
    qweight: torch.Tensor        # 4-bit: uint8 [out, in // 2] kernel layout; 8-bit: int8 [out, in]
    scales: torch.Tensor         # float16 or float32 [out, in // group_size]
    mins: torch.Tensor | None    # like scales; None means every min is 0 (Q8_0)
    bits: int
    group_size: int

    def __post_init__(self):
        if self.bits not in BITS:
            raise ValueError(f"QuantWeight: bits must be 4 or 8, got {self.bits}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"QuantWeight: group_size must be one of {GROUP_SIZES}, "
                             f"got {self.group_size}")
        want = torch.uint8 if self.bits == 4 else torch.int8
        q = self.qweight
        if q.dtype != want or q.dim() != 2 or q.device.type not in _DEVICES or q.stride(1) != 1:
            raise ValueError(f"QuantWeight: {self.bits}-bit qweight must be a 2-D CPU or CUDA {want} "
                             f"tensor with contiguous rows, got {q.dtype} {tuple(q.shape)}")
        in_features = self.in_features
        if in_features % self.group_size:
            raise ValueError(f"QuantWeight: in_features {in_features} is not a multiple of "
                             f"group_size {self.group_size}")
        groups = (q.shape[0], in_features // self.group_size)
        for name in ("scales", "mins"):
            t = getattr(self, name)
            if t is None and name == "mins":
                continue
            if t.dtype not in _SCALE_DTYPES or tuple(t.shape) != groups or t.stride(1) != 1:
                raise ValueError(f"QuantWeight: {name} must be float16/float32 {list(groups)} "
                                 f"with contiguous rows, got {t.dtype} {list(t.shape)}")
            if t.device != q.device:
                raise ValueError(f"QuantWeight: {name} is on {t.device} but qweight on {q.device}")

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1] * 8 // self.bits

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        tensors = [self.qweight, self.scales] + ([self.mins] if self.mins is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def from_q(cls, q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None,
               bits: int, group_size: int) -> QuantWeight:
        """From integer codes in natural order: uint8 0..15 (4-bit) or int8 (8-bit), [out, in]."""
        if bits == 4:
            if q.dim() != 2 or q.shape[1] % 32:
                raise ValueError(f"QuantWeight: 4-bit codes must be [out, in] with in a multiple "
                                 f"of 32, got {list(q.shape)}")
            q = quant_layout.pack_nibbles(q.to(torch.uint8))
        return cls(q.contiguous(), scales.contiguous(),
                   None if mins is None else mins.contiguous(), bits, group_size)

    @classmethod
    def from_gguf_blocks(cls, qtype: str, data, shape) -> QuantWeight:
        """ggml Q4_0/Q4_1/Q8_0 bytes; shape is (out, in) in torch order (GGUF lists it reversed).

        data: uint8 [out, bytes_per_row] (any shape with that many bytes), a torch tensor or a
        numpy array such as gguf's read-only memmap (copied, since the layout changes anyway).
        """
        if not isinstance(data, torch.Tensor):
            data = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True))
        if qtype not in quant_layout.GGML_BLOCK_BYTES:
            raise ValueError(f"QuantWeight.from_gguf_blocks: unsupported ggml type {qtype!r}; "
                             f"supported: {sorted(quant_layout.GGML_BLOCK_BYTES)}")
        out, in_features = (int(s) for s in shape)
        if in_features % 32:
            raise ValueError(f"QuantWeight.from_gguf_blocks: {qtype} needs in_features divisible "
                             f"by the block size 32, got shape {(out, in_features)}")
        row_bytes = in_features // 32 * quant_layout.GGML_BLOCK_BYTES[qtype]
        if data.dtype != torch.uint8 or data.numel() != out * row_bytes:
            raise ValueError(f"QuantWeight.from_gguf_blocks: {qtype} {(out, in_features)} needs "
                             f"{out} x {row_bytes} uint8 bytes, got {data.dtype} "
                             f"{list(data.shape)}")
        if qtype == "Q8_0":
            q, scales, mins, bits = quant_layout.parse_ggml_blocks(qtype, data.contiguous(), out, in_features)
            return cls.from_q(q, scales, mins, bits, 32)
        packed, scales, mins = quant_layout.ggml_q4_to_kernel(qtype, data.contiguous(), out, in_features)
        return cls(packed, scales, mins, 4, 32)

    @classmethod
    def from_awq(cls, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 group_size: int) -> QuantWeight:
        """AutoAWQ GEMM checkpoint tensors: w = (q - z) * s, i.e. min = -z * s (kept in fp32,
        where it is exact; in fp16 it would round)."""
        in_features, out = qweight.shape[0], qweight.shape[1] * 8
        if group_size not in GROUP_SIZES or in_features % group_size:
            raise ValueError(f"QuantWeight.from_awq: group_size {group_size} must be one of "
                             f"{GROUP_SIZES} and divide in_features {in_features}")
        groups = in_features // group_size
        if (qweight.dtype != torch.int32 or tuple(qzeros.shape) != (groups, out // 8)
                or tuple(scales.shape) != (groups, out)):
            raise ValueError(f"QuantWeight.from_awq: expected int32 qweight [in, out/8], qzeros "
                             f"[{groups}, {out // 8}], scales [{groups}, {out}]; got "
                             f"{list(qweight.shape)} {qweight.dtype}, {list(qzeros.shape)}, "
                             f"{list(scales.shape)}")
        q, z, s = quant_layout.unpack_awq(qweight, qzeros, scales)
        mins = -(z.float() * s.float())
        return cls.from_q(q, s if s.dtype in _SCALE_DTYPES else s.float(), mins, 4, group_size)

    @classmethod
    def quantize(cls, w: torch.Tensor, bits: int, group_size: int,
                 scale_dtype: torch.dtype = torch.float16) -> QuantWeight:
        """Round-to-nearest asymmetric quantization of a float [out, in] weight."""
        if bits not in BITS or group_size not in GROUP_SIZES:
            raise ValueError(f"QuantWeight.quantize: bits must be 4 or 8 and group_size one of "
                             f"{GROUP_SIZES}, got bits={bits}, group_size={group_size}")
        if w.dim() != 2 or w.shape[1] % group_size:
            raise ValueError(f"QuantWeight.quantize: in_features {w.shape[-1]} is not a multiple "
                             f"of group_size {group_size} (weight shape {list(w.shape)})")
        out, in_features = w.shape
        wg = w.detach().float().reshape(out, in_features // group_size, group_size)
        lo, hi = wg.amin(-1), wg.amax(-1)
        levels = (1 << bits) - 1
        qmin = 0 if bits == 4 else -128          # 8-bit codes are signed, so min is the q=0 value
        scales = ((hi - lo) / levels).to(scale_dtype)
        mins = (lo - qmin * scales.float()).to(scale_dtype)
        s, m = scales.float().unsqueeze(-1), mins.float().unsqueeze(-1)
        # Quantize against the stored (possibly fp16-rounded) scale and min, so dequantize()
        # reproduces the best codes for the values actually kept.
        q = torch.where(s > 0, torch.round((wg - m) / torch.where(s > 0, s, 1.0)), 0.0)
        q = q.clamp(qmin, qmin + levels).reshape(out, in_features)
        return cls.from_q(q.to(torch.uint8 if bits == 4 else torch.int8), scales, mins,
                          bits, group_size)

    # ---- views and conversions ----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def to(self, device) -> QuantWeight:
        """The same weight on another device (the layout does not change)."""
        mins = None if self.mins is None else self.mins.to(device)
        return QuantWeight(self.qweight.to(device), self.scales.to(device), mins, self.bits,
                           self.group_size)

    def codes(self) -> torch.Tensor:
        """Integer codes in natural element order, [out, in]."""
        return quant_layout.unpack_nibbles(self.qweight) if self.bits == 4 else self.qweight

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in]: q * scale + min with the same two roundings as the source formats."""
        def per_element(t: torch.Tensor) -> torch.Tensor:
            return t.float().repeat_interleave(self.group_size, dim=1)
        w = self.codes().float() * per_element(self.scales)
        return w if self.mins is None else w + per_element(self.mins)

    def take_rows(self, index: torch.Tensor) -> torch.Tensor:
        """fp32 [*index.shape, in] of the rows at `index`, dequantizing only those rows (an
        embedding lookup that keeps the table low-bit)."""
        flat = index.reshape(-1)
        mins = None if self.mins is None else self.mins[flat]
        picked = QuantWeight(self.qweight[flat], self.scales[flat], mins, self.bits, self.group_size)
        return picked.dequantize().reshape(*index.shape, self.in_features)

    def rows(self, start: int, end: int) -> QuantWeight:
        """Output rows [start, end) as views (no copy): one of fused q/k/v, or a TP shard."""
        if not 0 <= start < end <= self.out_features:
            raise ValueError(f"QuantWeight.rows: need 0 <= start < end <= {self.out_features}, "
                             f"got [{start}, {end})")
        mins = None if self.mins is None else self.mins[start:end]
        return QuantWeight(self.qweight[start:end], self.scales[start:end], mins,
                           self.bits, self.group_size)

    def cols(self, start: int, end: int) -> QuantWeight:
        """Input columns [start, end) as a new weight with its own memory: a row-parallel TP shard.

        The bounds must fall on group boundaries, since a group shares one scale and min; a split
        inside a group (e.g. AWQ g128 over 576 columns at tp 3) cannot be served and is refused.
        """
        g = self.group_size
        if not 0 <= start < end <= self.in_features:
            raise ValueError(f"QuantWeight.cols: need 0 <= start < end <= {self.in_features}, "
                             f"got [{start}, {end})")
        if start % g or end % g:
            raise ValueError(f"QuantWeight.cols: columns [{start}, {end}) do not fall on whole "
                             f"groups of {g}; choose a --tp whose share of the {self.in_features} "
                             f"input features is a multiple of the group size {g}")
        # 4-bit codes are re-packed: the kernel layout's chunks depend on the row width
        q = self.codes()[:, start:end]
        mins = None if self.mins is None else self.mins[:, start // g:end // g].clone()
        return QuantWeight.from_q(q.clone(), self.scales[:, start // g:end // g].clone(), mins,
                                  self.bits, g)

    def clone(self) -> QuantWeight:
        """A copy owning its memory, so that a slice taken with `rows` frees its source."""
        return QuantWeight(self.qweight.clone(), self.scales.clone(),
                           None if self.mins is None else self.mins.clone(), self.bits,
                           self.group_size)

    @staticmethod
    def cat_rows(weights: list[QuantWeight]) -> QuantWeight:
        """Stack weights along the output dimension (fusing q/k/v or gate/up) into one copy."""
        if not weights:
            raise ValueError("QuantWeight.cat_rows: need at least one weight")
        first = weights[0]
        for w in weights[1:]:
            if (w.bits, w.group_size, w.in_features) != (first.bits, first.group_size,
                                                         first.in_features):
                raise ValueError(f"QuantWeight.cat_rows: cannot fuse bits/group/in "
                                 f"{(w.bits, w.group_size, w.in_features)} with "
                                 f"{(first.bits, first.group_size, first.in_features)}")

        def common(tensors: list[torch.Tensor]) -> torch.dtype:
            dtypes = {t.dtype for t in tensors}
            return dtypes.pop() if len(dtypes) == 1 else torch.float32

        scales = [w.scales for w in weights]
        scales = torch.cat([s.to(common(scales)) for s in scales])
        mins = None
        if any(w.mins is not None for w in weights):
            present = [w.mins for w in weights if w.mins is not None]
            dtype = common(present)
            mins = torch.cat([torch.zeros(w.scales.shape, dtype=dtype) if w.mins is None
                              else w.mins.to(dtype) for w in weights])
        return QuantWeight(torch.cat([w.qweight for w in weights]), scales, mins,
                           first.bits, first.group_size)
