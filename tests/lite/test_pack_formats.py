"""Our AWQ files follow AutoAWQ's GEMM layout, and we read AutoAWQ- and AutoGPTQ-layout files.

The reference packers/unpackers here are written from the formats' documented layouts with plain
loops, independently of lmserve/lite/pack.py and lmserve/kernels/quant_layout.py.
"""
from __future__ import annotations

import json

import torch

from lmserve.kernels.quant_weight import QuantWeight
from lmserve.lite.pack import pack_awq, pack_gptq
from lmserve.lite.quantizer import quantize_groups
from tests.lite.helpers import tiny_llama

# AutoAWQ GEMM: within each run of 8 output columns, nibble i (bits 4i..4i+3) of the int32 holds
# column AWQ_ORDER[i].
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _u32(x: int) -> int:
    return x & 0xFFFFFFFF


def ref_unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    rows, cols = packed.shape
    out = torch.zeros(rows, cols * 8, dtype=torch.int64)
    for r in range(rows):
        for c in range(cols):
            word = _u32(int(packed[r, c]))
            for i in range(8):
                out[r, c * 8 + AWQ_ORDER[i]] = (word >> (4 * i)) & 0xF
    return out


def ref_pack_awq(values: torch.Tensor) -> torch.Tensor:
    rows, cols = values.shape
    out = torch.zeros(rows, cols // 8, dtype=torch.int32)
    for r in range(rows):
        for c in range(cols // 8):
            word = 0
            for i in range(8):
                word |= int(values[r, c * 8 + AWQ_ORDER[i]]) << (4 * i)
            out[r, c] = word - (1 << 32) if word >= 1 << 31 else word
    return out


def ref_pack_gptq_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack consecutive rows: row r * (32 / bits) + j of a column goes to bits j * bits."""
    per = 32 // bits
    rows, cols = values.shape
    out = torch.zeros(rows // per, cols, dtype=torch.int32)
    for r in range(rows // per):
        for c in range(cols):
            word = 0
            for j in range(per):
                word |= (int(values[r * per + j, c]) & ((1 << bits) - 1)) << (bits * j)
            out[r, c] = word - (1 << 32) if word >= 1 << 31 else word
    return out


def test_our_awq_tensors_unpack_with_the_autoawq_layout():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    gq = quantize_groups(w, 4, 32)
    t = pack_awq(gq)
    assert t["qweight"].dtype == torch.int32 and tuple(t["qweight"].shape) == (64, 2)
    assert tuple(t["qzeros"].shape) == (2, 2) and tuple(t["scales"].shape) == (2, 16)
    assert t["scales"].dtype == torch.float16
    q = ref_unpack_awq(t["qweight"])                     # [in, out]
    z = ref_unpack_awq(t["qzeros"])                      # [groups, out]
    assert torch.equal(q, gq.q.t().long()) and torch.equal(z, gq.zeros.t().long())
    w_hat = (q - z.repeat_interleave(32, 0)).float() * t["scales"].float().repeat_interleave(32, 0)
    assert torch.allclose(w_hat.t(), gq.dequantize(), atol=1e-6)
    # and the engine's in-memory form of the file is the same weight
    assert torch.allclose(QuantWeight.from_awq(t["qweight"], t["qzeros"], t["scales"], 32).dequantize(),
                          gq.dequantize(), atol=1e-6)


def test_transformers_accepts_our_awq_and_gptq_configs():
    from transformers import AwqConfig, GPTQConfig
    from lmserve.lite.recipes import quant_config
    awq = AwqConfig.from_dict(quant_config(4, 64, 4))
    assert (awq.bits, awq.group_size, awq.zero_point) == (4, 64, True)
    parsed = awq.to_dict()     # transformers 5 keeps it as "format", 4.x as "version"
    assert "gemm" in str(parsed.get("format", parsed.get("version"))).lower()
    gptq = GPTQConfig.from_dict(quant_config(8, 64, None))
    assert (gptq.bits, gptq.group_size, gptq.desc_act, gptq.sym) == (8, 64, False, True)


def test_gptq_packing_matches_the_reference_layout():
    torch.manual_seed(1)
    gq = quantize_groups(torch.randn(8, 64), 8, 32)
    t = pack_gptq(gq)
    assert torch.equal(t["qweight"], ref_pack_gptq_rows(gq.q.t(), 8))
    # qzeros pack consecutive output columns: [out, groups] packed along out, then transposed
    assert torch.equal(t["qzeros"], ref_pack_gptq_rows(gq.zeros.long() - 1, 8).t())
    assert torch.equal(t["g_idx"], torch.arange(64, dtype=torch.int32) // 32)


def _quantized_checkpoint(folder, tokenizer, fmt: str, bits: int = 4, sym: bool = False):
    """A tiny Llama quantized and packed by the reference packers. -> (dir, HF float model with
    the dequantized weights, for reference logits)."""
    torch.manual_seed(3)
    model = tiny_llama(seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    gs, max_q = 32, (1 << bits) - 1
    tensors = {}
    for name in list(state):
        if not name.startswith("model.layers.") or "norm" in name:
            continue
        w = state.pop(name)                               # [out, in]
        g = w.reshape(w.shape[0], -1, gs)
        if sym:
            s = (g.abs().amax(-1) / (max_q / 2)).half().float()
            z = torch.full_like(s, (max_q + 1) / 2)
        else:
            lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
            s = ((hi - lo) / max_q).half().float()
            z = torch.round(-lo / s).clamp(0, max_q)
        q = (torch.round(g / s[..., None]) + z[..., None]).clamp(0, max_q).reshape(w.shape)
        prefix = name[:-len(".weight")]
        if fmt == "awq":
            tensors[prefix + ".qweight"] = ref_pack_awq(q.t().long())
            tensors[prefix + ".qzeros"] = ref_pack_awq(z.t().long())
        else:                                             # GPTQ: stores z - 1
            tensors[prefix + ".qweight"] = ref_pack_gptq_rows(q.t().long(), bits)
            tensors[prefix + ".qzeros"] = ref_pack_gptq_rows(z.long() - 1, bits).t().contiguous()
            tensors[prefix + ".g_idx"] = torch.arange(w.shape[1], dtype=torch.int32) // gs
        tensors[prefix + ".scales"] = s.t().contiguous().half()
        deq = ((q - z.repeat_interleave(gs, 1)) * s.repeat_interleave(gs, 1))
        model.state_dict()[name].copy_(deq)
    tensors.update({k: v.half() for k, v in state.items()})
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = model.config.to_dict()
    if fmt == "awq":
        config["quantization_config"] = {"quant_method": "awq", "version": "gemm", "bits": 4,
                                         "group_size": gs, "zero_point": True}
    else:
        config["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": gs,
                                         "desc_act": False, "sym": sym}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    with torch.no_grad():   # the float model sees the same fp16-rounded embedding/norms
        for k, v in state.items():
            model.state_dict()[k].copy_(v.half().float())
    return str(folder), model


def _compare_logits(path, reference):
    from lmserve.eval.forward import DirectModel
    ids = torch.tensor([1, 5, 17, 42, 3, 88, 9, 60, 2, 71])
    ours = DirectModel.load(path, 16)
    logits = ours.model.compute_logits(ours.hidden_states(ids))
    with torch.no_grad():
        ref = reference(ids[None]).logits[0]
    assert torch.allclose(logits, ref, atol=2e-3, rtol=1e-3), (logits - ref).abs().max()


def test_we_read_an_autoawq_layout_checkpoint(tmp_path, tokenizer):
    path, reference = _quantized_checkpoint(tmp_path / "awq", tokenizer, "awq")
    _compare_logits(path, reference)


def test_we_read_gptq_checkpoints_asymmetric_4bit_and_symmetric_8bit(tmp_path, tokenizer):
    path, reference = _quantized_checkpoint(tmp_path / "g4", tokenizer, "gptq", bits=4)
    _compare_logits(path, reference)
    path, reference = _quantized_checkpoint(tmp_path / "g8", tokenizer, "gptq", bits=8, sym=True)
    _compare_logits(path, reference)


def test_gptq_act_order_is_refused(tmp_path, tokenizer):
    import pytest
    from lmserve.model.loader import load_model
    path, _ = _quantized_checkpoint(tmp_path / "g", tokenizer, "gptq", bits=4)
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    config["quantization_config"]["desc_act"] = True
    (tmp_path / "g" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="desc_act=true"):
        load_model(path)
