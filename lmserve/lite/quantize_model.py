"""Whole-model weight quantization over canonical float tensors: AWQ (with calibration statistics)
or plain round-to-nearest. The result maps each linear's canonical weight name to a GroupQuant and
every other tensor (norms with AWQ scales folded in, embedding, head) to a float tensor.
"""
from __future__ import annotations

import logging

import torch

from lmserve.lite.awq import (AwqSettings, input_gram, output_error, scaled_gram, search_clip,
                             search_clip_full, search_scale)
from lmserve.lite.block_loss import block_scale
from lmserve.lite.gptq import gptq_quantize
from lmserve.lite.quantizer import GroupQuant, check_group_size, fake_quantize, quantize_groups
from lmserve.model.config import ModelConfig

logger = logging.getLogger(__name__)

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# (calibration input, where its scale is folded, the linears that read that input)
SCALE_GROUPS = (
    ("qkv", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("o", "self_attn.v_proj", ("self_attn.o_proj",)),
    ("gate_up", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("down", "mlp.up_proj", ("mlp.down_proj",)),
)
_NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


def _sink_weight(key: str, st: AwqSettings) -> float:
    """The first token's extra weight applies to the attention block's inputs (q/k/v and o):
    through attention, its keys and values reach every later token. Weighting the MLP inputs
    too made perplexity worse on held-out ShareGPT text (docs/quantization.md)."""
    return st.sink_weight if key in ("qkv", "o") else 1.0


def check_model_group_size(cfg: ModelConfig, group_size: int) -> None:
    """Fail before any work when a linear's input size is not a multiple of the group size."""
    for name, size in (("q/k/v/gate/up_proj (hidden_size)", cfg.hidden_size),
                       ("o_proj (num_heads * head_dim)", cfg.q_size),
                       ("down_proj (intermediate_size)", cfg.intermediate_size)):
        check_group_size(size, group_size, name)


def float_weights(loaded) -> dict[str, torch.Tensor]:
    """Every canonical tensor of the model as fp32 (a GGUF's blocks dequantized)."""
    out = {}
    for name, t in loaded.weights():
        if not isinstance(t, torch.Tensor):
            t = t.dequantize()
        out[name] = t.float()
    return out


def _fold_into_producer(weights: dict, prefix: str, producer: str, s: torch.Tensor) -> None:
    """Divide the producer's outputs by s so the consumers' inputs arrive divided by s."""
    w = weights[prefix + producer + ".weight"]
    if w.dim() == 1:                                 # an RMSNorm weight
        weights[prefix + producer + ".weight"] = w / s
        return
    weights[prefix + producer + ".weight"] = w / s[:, None]
    bias = prefix + producer + ".bias"
    if bias in weights:
        weights[bias] = weights[bias] / s


def awq_layer(weights: dict, layer: int, stats: dict, cfg: ModelConfig,
              st: AwqSettings) -> tuple[dict[str, GroupQuant], dict[str, float]]:
    """Scale-search, fold, clip-search and quantize one layer's linears (weights is updated).
    -> (quantized linears by canonical weight name, {input: error AWQ / error RTN})."""
    prefix = f"model.layers.{layer}."
    grams, report = {}, {}
    for key, producer, consumers in SCALE_GROUPS:
        st_in = stats[key]
        gram = input_gram(st_in, _sink_weight(key, st))
        w = torch.cat([weights[prefix + c + ".weight"] for c in consumers])
        gqa = None
        if key == "o" and cfg.num_heads != cfg.num_kv_heads:
            gqa = (cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)
        if st.loss == "block" and key in ("qkv", "gate_up"):
            if "block" not in stats:
                raise ValueError("--loss block needs stored calibration activations; they are "
                                 "kept by the layer walk of lite/sequential.py, not --calib-stats")
            s, err, rtn = block_scale(key, weights, prefix, st_in["absmean"], stats["block"], cfg, st)
        else:
            s, err, rtn = search_scale(w, st_in["absmean"], gram, st, gqa)
        report[key] = err / rtn if rtn > 0 else 1.0
        s_producer = s.reshape(gqa)[:, 0].reshape(-1) if gqa else s
        _fold_into_producer(weights, prefix, producer, s_producer)
        for c in consumers:
            weights[prefix + c + ".weight"] = weights[prefix + c + ".weight"] * s
            grams[c] = scaled_gram(gram, s)
    out = {}
    for c in LINEARS:
        w = weights[prefix + c + ".weight"]
        clip = None
        if st.clip_search and c not in _NO_CLIP:
            clip = (search_clip_full if st.clip_gram == "full" else search_clip)(w, grams[c], st)
        if st.rounding == "gptq":
            out[prefix + c + ".weight"] = gptq_quantize(w, grams[c], st.w_bits, st.w_group_size,
                                                        st.damp, clip)
        else:
            out[prefix + c + ".weight"] = quantize_groups(w, st.w_bits, st.w_group_size, clip)
    return out, report


def gptq_layer(weights: dict, layer: int, stats: dict, cfg: ModelConfig,
               st: AwqSettings, min_zero: int = 0) -> tuple[dict[str, GroupQuant], dict[str, float]]:
    """GPTQ rounding of one layer's linears, no scales: the linears that read one input share its
    Gram matrix, so they are rounded together (rows are independent in GPTQ).
    -> (quantized linears, {input: output error GPTQ / error RTN})."""
    prefix = f"model.layers.{layer}."
    out, report = {}, {}
    for key, _, consumers in SCALE_GROUPS:
        gram = input_gram(stats[key], _sink_weight(key, st))
        names = [prefix + c + ".weight" for c in consumers]
        w = torch.cat([weights[n] for n in names])
        gq = gptq_quantize(w, gram, st.w_bits, st.w_group_size, st.damp, min_zero=min_zero)
        rtn = output_error(fake_quantize(w, st.w_bits, st.w_group_size) - w, gram)
        report[key] = output_error(gq.dequantize() - w, gram) / rtn if rtn > 0 else 1.0
        start = 0
        for n in names:
            rows = weights[n].shape[0]
            out[n] = GroupQuant(gq.q[start:start + rows], gq.zeros[start:start + rows],
                                gq.scales[start:start + rows], gq.bits, gq.group_size)
            start += rows
    return out, report


def quantize_awq(weights: dict, stats: dict, cfg: ModelConfig, st: AwqSettings,
                 progress: bool = True, layer_fn=awq_layer) -> dict:
    """stats: float-model statistics of every layer (`lite calibrate`). layer_fn: awq_layer or
    gptq_layer. (The sequential form, where each layer's statistics come from the model whose
    earlier layers are already quantized, is lite/sequential.py.)"""
    from tqdm import tqdm
    check_model_group_size(cfg, st.w_group_size)
    result = dict(weights)
    bar = tqdm(range(cfg.num_layers), desc="awq", unit="layer", disable=not progress)
    ratios = []
    for i in bar:
        quantized, report = layer_fn(result, i, stats["layers"][i], cfg, st)
        result.update(quantized)
        ratios.append(report)
        bar.set_postfix({k: f"{v:.2f}" for k, v in report.items()})
    for i, r in enumerate(ratios):
        logger.info("layer %d: AWQ/RTN output error %s", i, {k: round(v, 3) for k, v in r.items()})
    return result


def quantize_rtn(weights: dict, cfg: ModelConfig, bits: int, group_size: int) -> dict:
    check_model_group_size(cfg, group_size)
    result = dict(weights)
    for i in range(cfg.num_layers):
        for c in LINEARS:
            name = f"model.layers.{i}.{c}.weight"
            result[name] = quantize_groups(weights[name], bits, group_size)
    return result
