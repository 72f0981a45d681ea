"""Per-family knowledge: which HF `architectures` we accept, how each family's config.json reads as a
ModelConfig, and how its tensor names map onto canonical HF-Llama names (see canonical.py).

Families are looked up by `architectures[0]` (as LMDeploy and vLLM do); `model_type` is only used
when a config has no `architectures` (configs saved from a bare transformers Config object).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from lmserve.model.config import ModelConfig
from lmserve.model.family_weights import (map_baichuan2, map_internlm2, map_llama_like)

logger = logging.getLogger(__name__)

ROPE_TYPES = ("linear", "dynamic", "llama3", "yarn")
TensorMap = Callable[[str, torch.Tensor, ModelConfig], list[tuple[str, torch.Tensor]]]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    parse_config: Callable[[dict[str, Any]], ModelConfig]
    map_tensor: TensorMap       # one checkpoint tensor -> zero or more canonical tensors


def _required(cfg: dict, key: str) -> Any:
    if cfg.get(key) is None:
        raise ValueError(f"config.json has no {key!r}, which a {cfg.get('model_type', 'Llama-family')} "
                         f"model needs")
    return cfg[key]


def _rope(cfg: dict) -> tuple[float, dict | None]:
    """rope_theta and the scaling dict, from transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling` keys. Scaling stays as HF gives it, with `type` renamed to
    `rope_type` the way transformers itself upgrades old configs."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = params["rope_theta"]
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else None
    if scaling:
        legacy = scaling.pop("type", None)
        scaling.setdefault("rope_type", legacy)
        if scaling["rope_type"] in (None, "default"):
            scaling = None
        elif scaling["rope_type"] not in ROPE_TYPES:
            raise ValueError(f"rope scaling type {scaling['rope_type']!r} is not supported; "
                             f"supported: {', '.join(ROPE_TYPES)}")
    return float(theta), scaling


def _eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _build(cfg: dict, family: str, **overrides: Any) -> ModelConfig:
    heads = _required(cfg, "num_attention_heads")
    hidden = _required(cfg, "hidden_size")
    theta, scaling = _rope(cfg)
    fields: dict[str, Any] = dict(
        family=family, vocab_size=_required(cfg, "vocab_size"), hidden_size=hidden,
        intermediate_size=_required(cfg, "intermediate_size"),
        num_layers=_required(cfg, "num_hidden_layers"), num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=cfg.get("max_position_embeddings") or 4096,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_ids=_eos_list(cfg.get("eos_token_id")),
        torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32").replace("torch.", ""),
        quantization=cfg.get("quantization_config"))
    fields.update(overrides)
    return ModelConfig(**fields)


def _warn_sliding_window(cfg: dict, family: str) -> None:
    window = cfg.get("sliding_window")
    used = cfg.get("use_sliding_window", family == "mistral")
    if used and window and window < (cfg.get("max_position_embeddings") or 0):
        logger.warning("%s config asks for sliding-window attention (window %d); lmserve attends to "
                       "the full context, which matches only up to %d tokens", family, window, window)


def parse_llama(cfg: dict) -> ModelConfig:
    if cfg.get("mlp_bias"):
        raise ValueError("config.json sets mlp_bias=true; Llama models with MLP biases are not supported")
    bias = bool(cfg.get("attention_bias", False))
    return _build(cfg, "llama", qkv_bias=bias, o_bias=bias)


def parse_mistral(cfg: dict) -> ModelConfig:
    _warn_sliding_window(cfg, "mistral")
    return _build(cfg, "mistral")


def parse_qwen2(cfg: dict) -> ModelConfig:
    _warn_sliding_window(cfg, "qwen2")
    return _build(cfg, "qwen2", qkv_bias=True)


def parse_internlm(cfg: dict) -> ModelConfig:
    # InternLM-7B/20B keep rope settings in a `rotary` dict: {"base", "type": origin|dynamic,
    # "scaling_factor"}; its dynamic NTK is the same formula as HF's "dynamic".
    bias = bool(cfg.get("bias", True))
    rotary = cfg.get("rotary")
    if isinstance(rotary, dict) and not cfg.get("rope_scaling") and "rope_parameters" not in cfg:
        scaling = None
        if rotary.get("type", "origin") == "dynamic":
            scaling = {"rope_type": "dynamic", "factor": float(rotary.get("scaling_factor", 1.0))}
        elif rotary.get("type", "origin") != "origin":
            raise ValueError(f"InternLM rotary type {rotary.get('type')!r} is not supported "
                             f"(origin, dynamic are)")
        return _build(cfg, "internlm", qkv_bias=bias, o_bias=bias,
                      rope_theta=float(rotary.get("base", 10000.0)), rope_scaling=scaling)
    return _build(cfg, "internlm", qkv_bias=bias, o_bias=bias)


def parse_internlm2(cfg: dict) -> ModelConfig:
    bias = bool(cfg.get("bias", False))
    return _build(cfg, "internlm2", qkv_bias=bias, o_bias=bias)


def parse_baichuan2(cfg: dict) -> ModelConfig:
    # BaichuanForCausalLM is also Baichuan(2)-13B, which uses ALiBi instead of rotary embeddings and
    # so is not a Llama-family model; vLLM tells them apart by shape, and so do we.
    if cfg.get("hidden_size") == 5120 and cfg.get("num_hidden_layers") == 40:
        raise ValueError("Baichuan-13B / Baichuan2-13B use ALiBi position encoding, which lmserve does "
                         "not support; Baichuan2-7B (rotary) is supported")
    max_pos = cfg.get("max_position_embeddings") or cfg.get("model_max_length") or 4096
    return _build(cfg, "baichuan2", max_position_embeddings=max_pos, rope_theta=10000.0,
                  rope_scaling=None, tie_word_embeddings=False)


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("LlamaForCausalLM",), ("llama",), parse_llama, map_llama_like),
    Family("mistral", ("MistralForCausalLM",), ("mistral",), parse_mistral, map_llama_like),
    Family("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), parse_qwen2, map_llama_like),
    Family("internlm", ("InternLMForCausalLM",), ("internlm",), parse_internlm, map_llama_like),
    Family("internlm2", ("InternLM2ForCausalLM",), ("internlm2",), parse_internlm2, map_internlm2),
    Family("baichuan2", ("BaichuanForCausalLM",), ("baichuan",), parse_baichuan2, map_baichuan2),
)


def supported_architectures() -> list[str]:
    return [a for f in FAMILIES for a in f.architectures]


def family_for(hf_config: dict, source: str = "config.json") -> Family:
    architectures = hf_config.get("architectures") or []
    for family in FAMILIES:
        if architectures and architectures[0] in family.architectures:
            return family
        if not architectures and hf_config.get("model_type") in family.model_types:
            return family
    what = f"architecture {architectures[0]!r}" if architectures else \
        f"model_type {hf_config.get('model_type')!r}"
    raise ValueError(f"{source}: {what} is not supported; supported architectures: "
                     f"{', '.join(supported_architectures())}")


def config_from_hf(hf_config: dict, source: str = "config.json") -> tuple[Family, ModelConfig]:
    family = family_for(hf_config, source)
    try:
        return family, family.parse_config(hf_config)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
