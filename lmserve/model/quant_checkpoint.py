"""Quantized HF checkpoints -> canonical names with low-bit weights (QuantWeight / Int8Weight).

Formats, chosen by config.json's quantization_config.quant_method:
  awq          AutoAWQ GEMM (version gemm, 4-bit, zero_point): <linear>.qweight/.qzeros/.scales
  gptq         AutoGPTQ (desc_act false, 4 or 8-bit, sym or not): <linear>.qweight/.qzeros/
               .scales/.g_idx; qzeros hold z - 1 unless checkpoint_format is "gptq_v2"
  lmserve-w8a8 SmoothQuant W8A8 (lite smooth_quant): <linear>.weight int8 [out, in] and
               <linear>.weight_scale float [out]; activations quantized per token at run time
Optional "lmserve_embedding": {"bits", "group_size"} quantizes the (float) embedding table and
output head at load time with round-to-nearest, so they take low-bit memory too while the file
stays readable by tools that expect them in float.
"""
from __future__ import annotations

from typing import Iterator

import torch

from lmserve.kernels.int8_linear import Int8Weight
from lmserve.kernels.quant_weight import QuantWeight
from lmserve.model.canonical import EMBED, LM_HEAD

QUANT_METHODS = ("awq", "gptq", "lmserve-w8a8")
_PARTS = {"awq": ("qweight", "qzeros", "scales"), "gptq": ("qweight", "qzeros", "scales", "g_idx"),
          "lmserve-w8a8": ("weight", "weight_scale")}


def check_quant_config(q: dict, source: str) -> str:
    method = str(q.get("quant_method", "")).lower()
    if method not in QUANT_METHODS:
        raise ValueError(f"{source}: quantization_config.quant_method {method!r} is not supported; "
                         f"supported: {', '.join(QUANT_METHODS)} (and GGUF files)")
    if method == "awq":
        version = str(q.get("version", q.get("format", "gemm"))).lower()
        if version != "gemm" or q.get("bits", 4) != 4 or not q.get("zero_point", True):
            raise ValueError(f"{source}: AWQ checkpoints must be version gemm, 4-bit, zero_point "
                             f"true; got version={version}, bits={q.get('bits')}, "
                             f"zero_point={q.get('zero_point')}")
    if method == "gptq":
        if q.get("desc_act"):
            raise ValueError(f"{source}: GPTQ checkpoints with desc_act=true (act-order) are not "
                             f"supported; re-quantize with desc_act=false")
        if q.get("bits") not in (4, 8):
            raise ValueError(f"{source}: GPTQ bits must be 4 or 8, got {q.get('bits')}")
    if method != "lmserve-w8a8" and q.get("group_size") not in (32, 64, 128):
        raise ValueError(f"{source}: quantization_config.group_size must be 32, 64 or 128, "
                         f"got {q.get('group_size')}")
    emb = q.get("lmserve_embedding")
    if emb is not None and (emb.get("bits") not in (4, 8) or emb.get("group_size") not in (32, 64, 128)):
        raise ValueError(f"{source}: lmserve_embedding needs bits 4|8 and group_size 32|64|128, "
                         f"got {emb}")
    return method


def assemble_quantized(pairs, q: dict, source: str) -> Iterator[tuple[str, object]]:
    """Gather each linear's parts (they may arrive in any order) into one low-bit weight."""
    method = check_quant_config(q, source)
    parts_needed = _PARTS[method]
    pending: dict[str, dict[str, torch.Tensor]] = {}
    emb = q.get("lmserve_embedding")
    for name, tensor in pairs:
        prefix, _, part = name.rpartition(".")
        is_layer = name.startswith("model.layers.") and not name.endswith("layernorm.weight")
        if is_layer and _is_part(method, part, tensor):
            got = pending.setdefault(prefix, {})
            got[part] = tensor
            if len(got) == len(parts_needed):
                yield prefix + ".weight", _build(method, got, q, f"{source}: {prefix}")
                del pending[prefix]
        elif emb is not None and name in (EMBED, LM_HEAD):
            yield name, QuantWeight.quantize(tensor.float(), emb["bits"], emb["group_size"])
        else:
            yield name, tensor
    if pending:
        prefix, got = next(iter(pending.items()))
        raise ValueError(f"{source}: {prefix} has only {sorted(got)} of the {method} tensors "
                         f"{list(parts_needed)}")


def _is_part(method: str, part: str, tensor: torch.Tensor) -> bool:
    if method == "lmserve-w8a8":      # a float `.weight` there is an unquantized layer's
        return part == "weight_scale" or (part == "weight" and tensor.dtype == torch.int8)
    return part in _PARTS[method]


def _build(method: str, t: dict, q: dict, where: str):
    if method == "awq":
        return QuantWeight.from_awq(t["qweight"], t["qzeros"], t["scales"], q["group_size"])
    if method == "gptq":
        return _from_gptq(t, q, where)
    return Int8Weight(t["weight"].contiguous(), t["weight_scale"].float().reshape(-1).contiguous())


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [r, c] -> int64 [r, c * 32 / bits]: value j of each word from bits j*bits up."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    v = (packed.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return v.reshape(packed.shape[0], -1)


def _from_gptq(t: dict, q: dict, where: str) -> QuantWeight:
    bits, gs = q["bits"], q["group_size"]
    qweight, qzeros, scales = t["qweight"], t["qzeros"], t["scales"]
    per = 32 // bits
    in_features, out = qweight.shape[0] * per, qweight.shape[1]
    if in_features % gs or tuple(scales.shape) != (in_features // gs, out):
        raise ValueError(f"{where}: GPTQ scales {list(scales.shape)} do not fit qweight "
                         f"{list(qweight.shape)} with group_size {gs}")
    expected_g = torch.arange(in_features) // gs
    if not torch.equal(t["g_idx"].to(torch.int64).reshape(-1), expected_g):
        raise ValueError(f"{where}: g_idx is not the identity grouping (act-order checkpoints are "
                         f"not supported)")
    codes = _unpack_rows(qweight.t().contiguous(), bits)            # [out, in]
    z = _unpack_rows(qzeros, bits)[:, :out].float()                 # [groups, out]
    if str(q.get("checkpoint_format", "gptq")).lower() != "gptq_v2":
        z = z + 1                     # the original format stores z - 1
    s = scales.t().contiguous()
    if s.dtype not in (torch.float16, torch.float32):
        s = s.float()
    zt = z.t()
    if bits == 4:
        return QuantWeight.from_q(codes.to(torch.uint8), s, -zt * s.float(), 4, gs)
    return QuantWeight.from_q((codes - 128).to(torch.int8), s, (128 - zt) * s.float(), 8, gs)

