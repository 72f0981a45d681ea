"""The canonical weight names and shapes every loader produces: Hugging Face Llama's.

One list, derived from a ModelConfig, serves three purposes: the dummy loader generates exactly it,
the real loaders are checked against it (nothing missing, nothing unexpected), and the decoder can
allocate parameters from it before any tensor arrives.
"""
from __future__ import annotations

from lmserve.model.config import ModelConfig

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


def layer_prefix(layer: int) -> str:
    return f"model.layers.{layer}."


def canonical_weights(config: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of the model, in the order a checkpoint usually stores them."""
    h, inter = config.hidden_size, config.intermediate_size
    q, kv = config.q_size, config.kv_size
    out: list[tuple[str, tuple[int, ...]]] = [(EMBED, (config.vocab_size, h))]
    for i in range(config.num_layers):
        p = layer_prefix(i)
        out.append((p + "input_layernorm.weight", (h,)))
        for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out.append((f"{p}self_attn.{proj}.weight", (rows, h)))
            if config.qkv_bias:
                out.append((f"{p}self_attn.{proj}.bias", (rows,)))
        out.append((p + "self_attn.o_proj.weight", (h, q)))
        if config.o_bias:
            out.append((p + "self_attn.o_proj.bias", (h,)))
        out.append((p + "post_attention_layernorm.weight", (h,)))
        out.append((p + "mlp.gate_proj.weight", (inter, h)))
        out.append((p + "mlp.up_proj.weight", (inter, h)))
        out.append((p + "mlp.down_proj.weight", (h, inter)))
    out.append((FINAL_NORM, (h,)))
    if not config.tie_word_embeddings:
        out.append((LM_HEAD, (config.vocab_size, h)))
    return out


def is_norm_weight(name: str) -> bool:
    return name.endswith("layernorm.weight") or name == FINAL_NORM


def count_parameters(config: ModelConfig) -> int:
    total = 0
    for _, shape in canonical_weights(config):
        n = 1
        for s in shape:
            n *= s
        total += n
    return total
