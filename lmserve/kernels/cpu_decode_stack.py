"""All decoder layers of a CPU decode step in one C++ call (csrc/decode_stack.cpp).

At batch 1 a SmolLM2 layer is ~0.3 ms of kernels and ~0.06 ms of Python between them (module
calls, dispatch checks, views), ~2 ms of a ~13 ms step over 30 layers. The stack runs the same
kernels in the same order on the same tensors, so its hidden states are bit-identical to the
module path's; it only removes the Python. It is built by the model runner for models it serves
(fp32 on CPU, tensor parallel size 1, float or low-bit GGUF/AWQ/GPTQ/RTN weights, a float or
int8/int4 KV cache, the per-op CPU extensions available) and used for pure decode steps;
everything else, and `--eager-mode`, runs module by module.
"""
from __future__ import annotations

import logging

import torch

from . import cpu_ops, cpu_paged_attention, cpu_paged_attention_quant, cpu_quant_linear
from .cpu_extension import CPUExtension
from .quant_weight import QuantWeight

logger = logging.getLogger(__name__)

_EXT = CPUExtension("lmserve_decode_stack",
                    ("decode_stack.cpp", "quant_linear.cpp", "quant_gemv.cpp", "split_bf16_gemm.cpp",
                     "paged_attention_cpu.cpp", "paged_attention_kvq_cpu.cpp", "cpu_ops.cpp"),
                    reference="module-by-module decode")
_PROJECTIONS = (("qkv", "qkv_proj", False), ("o", "o_proj", True),
                ("gate_up", "gate_up_proj", False), ("down", "down_proj", True))


def unsupported_reason(model, kv_bits: int = 0) -> str | None:
    """Why the stack cannot serve this model with this KV cache (0: float, 8/4: int8/int4), so the
    module path must, or None."""
    if model.dtype != torch.float32:
        return f"dtype {model.dtype} (the stack runs fp32)"
    if model.parallel.size > 1:
        return "tensor parallel (the stack has no all-reduce)"
    if model.cfg.head_dim % (16 if kv_bits == 4 else 8):
        return f"head_dim {model.cfg.head_dim} is not a multiple of the attention kernel's width"
    for layer in model.layers:
        for _, attr, _ in _PROJECTIONS:
            w = getattr(layer, attr).weight
            if isinstance(w, QuantWeight):
                if w.qweight.device.type != "cpu":
                    return "weights not on CPU"
            elif not (isinstance(w, torch.Tensor) and w.device.type == "cpu"
                      and w.dtype == torch.float32):
                return f"{type(w).__name__} weights (W8A8 and others run module by module)"
    # the stack must run what the modules would: the same kernels, not their torch references
    attention = cpu_paged_attention_quant if kv_bits else cpu_paged_attention
    for module in (cpu_ops, attention, cpu_quant_linear):
        if module._EXT.get() is None:
            return f"{module.__name__} has no compiled kernel here"
    return None


def build_decode_stack(model, kv_bits: int = 0):
    """A DecodeStack bound to the model's weights (no copies), or None with the reason logged."""
    why = unsupported_reason(model, kv_bits)
    ext = _EXT.get() if why is None else None
    if ext is None:
        logger.info("CPU decode runs module by module: %s", why or "the decode stack did not build")
        return None
    layer0 = model.layers[0]
    stack = ext.DecodeStack(layer0.heads, layer0.kv_heads, layer0.head_dim, model.cfg.rms_norm_eps,
                            layer0.attn.scale)
    for layer in model.layers:
        stack.add_layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
        for name, attr, bias_after in _PROJECTIONS:
            lin = getattr(layer, attr)
            w = lin.weight
            quant = isinstance(w, QuantWeight)
            # biases are held in the model's dtype, fp32 here (unsupported_reason checked it)
            stack.set_linear(name, None if quant else w, w.qweight if quant else None,
                             w.scales if quant else None, w.mins if quant else None,
                             w.bits if quant else 0, w.group_size if quant else 0, lin.bias,
                             bias_after, cpu_quant_linear.GEMM_MODES[lin.cpu_gemm_dtype],
                             lin.cpu_split_weight, cpu_quant_linear.GEMV_MAX_M)
    return stack


def load_extension():
    """The compiled module, or None when this machine cannot build or run it (warned once)."""
    return _EXT.get()
