"""Integer codes -> the int32 tensors of AutoAWQ (GEMM) and AutoGPTQ checkpoints.

AutoAWQ GEMM, 4-bit: qweight int32 [in, out / 8], qzeros int32 [in / g, out / 8], scales fp16
[in / g, out]; the 8 values of one int32 are 8 consecutive output columns, column
AWQ_PACK_ORDER[i] of the 8 in bits 4i..4i+3.
AutoGPTQ: qweight int32 [in * bits / 32, out] packs consecutive *input* rows, value j of a word in
bits j*bits..; qzeros int32 [in / g, out * bits / 32] packs consecutive output columns the same
way and stores z - 1 (the original format's offset, undone by its readers); g_idx int32 [in].
"""
from __future__ import annotations

import torch

from lmserve.kernels.quant_layout import AWQ_PACK_ORDER
from lmserve.lite.quantizer import GroupQuant


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding unsigned 32-bit words -> int32 with the same bits."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def _pack_last_dim(values: torch.Tensor, bits: int, order=None) -> torch.Tensor:
    """[..., n] small unsigned ints -> int32 [..., n * bits / 32]; value order[j] of each run in
    bit field j (natural order when order is None)."""
    per = 32 // bits
    v = values.to(torch.int64).reshape(*values.shape[:-1], -1, per)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return _to_int32((v << shifts).sum(-1))


def pack_awq(gq: GroupQuant) -> dict[str, torch.Tensor]:
    if gq.bits != 4:
        raise ValueError(f"the AutoAWQ GEMM format holds 4-bit weights only, got {gq.bits}-bit")
    if gq.q.shape[0] % 8:
        raise ValueError(f"AutoAWQ packing needs out_features divisible by 8, got {gq.q.shape[0]}")
    return {"qweight": _pack_last_dim(gq.q.t(), 4, AWQ_PACK_ORDER),
            "qzeros": _pack_last_dim(gq.zeros.t(), 4, AWQ_PACK_ORDER),
            "scales": gq.scales.t().contiguous().half()}


def pack_gptq(gq: GroupQuant) -> dict[str, torch.Tensor]:
    per = 32 // gq.bits
    out, in_features = gq.q.shape
    if in_features % per or out % per:
        raise ValueError(f"GPTQ packing of {gq.bits}-bit values needs in and out features "
                         f"divisible by {per}, got {(out, in_features)}")
    if int(gq.zeros.min()) < 1:
        raise ValueError("GPTQ's format stores z - 1 and cannot hold a zero point of 0")
    qweight = _pack_last_dim(gq.q, gq.bits).t().contiguous()
    qzeros = _pack_last_dim(gq.zeros.t().to(torch.int64) - 1, gq.bits)
    g_idx = torch.arange(in_features, dtype=torch.int32) // gq.group_size
    return {"qweight": qweight, "qzeros": qzeros, "scales": gq.scales.t().contiguous().half(),
            "g_idx": g_idx}
