"""SmoothQuant W8A8: migrate activation outliers into the weights, then int8 weights per output
channel and int8 activations per token (dynamic, at run time; kernels/int8_linear.py).

Per input channel j of a linear group, s_j = max|x_j|^a / max|w_j|^(1 - a) (a = --smooth-alpha);
the producer (RMSNorm weight, or v_proj / up_proj rows) is divided by s and the consumers' columns
multiplied by it, an exact rewrite in float that flattens the activation channels the per-token
int8 scale would otherwise be dominated by. The same four places as AWQ are smoothed
(lite/quantize_model.SCALE_GROUPS); under GQA the o_proj scale is shared by the query heads of a
KV head so that it folds into v_proj.

Saved format (quant_method "lmserve-w8a8", read by model/quant_checkpoint.py): each linear as
`<name>.weight` int8 [out, in] and `<name>.weight_scale` float32 [out]; all other tensors float16.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.kernels.int8_linear import Int8Weight
from lmserve.lite.awq import tie_heads
from lmserve.lite.quantize_model import LINEARS, SCALE_GROUPS, _fold_into_producer
from lmserve.model.config import ModelConfig

QUANT_CONFIG = {"quant_method": "lmserve-w8a8", "bits": 8, "weights": "int8 per output channel, symmetric",
                "activations": "int8 per token, dynamic, symmetric"}


@dataclass(slots=True)
class SmoothSettings:
    alpha: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--smooth-alpha must be in [0, 1], got {self.alpha}")


def smooth_scales(x_absmax: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    w_absmax = w.abs().amax(0).clamp(min=1e-5)
    s = x_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)
    return s.clamp(min=1e-5)


def smooth_quantize(weights: dict, stats: dict, cfg: ModelConfig, st: SmoothSettings) -> dict:
    """canonical fp32 tensors + calibration statistics -> the same dict with every decoder linear
    an Int8Weight and the smoothing folded into norms / producers."""
    result = dict(weights)
    for i in range(cfg.num_layers):
        prefix = f"model.layers.{i}."
        for key, producer, consumers in SCALE_GROUPS:
            w = torch.cat([result[prefix + c + ".weight"] for c in consumers])
            s = smooth_scales(stats["layers"][i][key]["absmax"], w, st.alpha)
            s_producer = s
            if key == "o" and cfg.num_heads != cfg.num_kv_heads:
                gqa = (cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)
                s = tie_heads(s, gqa)
                s_producer = s.reshape(gqa)[:, 0].reshape(-1)
            _fold_into_producer(result, prefix, producer, s_producer)
            for c in consumers:
                result[prefix + c + ".weight"] = result[prefix + c + ".weight"] * s
        for c in LINEARS:
            name = prefix + c + ".weight"
            result[name] = Int8Weight.quantize(result[name])
    return result


def pack_w8a8(w: Int8Weight) -> dict[str, torch.Tensor]:
    return {"weight": w.qweight, "weight_scale": w.scales}
