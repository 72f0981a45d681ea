"""Checkpoint tensor names of each family -> canonical HF-Llama names (see canonical.py).

Each mapper takes one checkpoint tensor and returns the canonical tensors it holds: none (buffers
such as rotary inv_freq), one (a rename), or several (packed q/k/v split apart). Working one tensor
at a time is what lets the loaders stream without holding a model twice.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from lmserve.model.canonical import LM_HEAD
from lmserve.model.config import ModelConfig

Pairs = list[tuple[str, torch.Tensor]]
_PACKED_SUFFIXES = ("weight", "bias")


def _skipped(name: str, config: ModelConfig) -> bool:
    # rotary inv_freq is a buffer some old checkpoints saved; a tied head duplicates the embedding
    return name.endswith("rotary_emb.inv_freq") or (name == LM_HEAD and config.tie_word_embeddings)


def map_llama_like(name: str, tensor: torch.Tensor, config: ModelConfig) -> Pairs:
    """Llama, Mistral, Qwen2 and InternLM(1) already use the canonical names."""
    return [] if _skipped(name, config) else [(name, tensor)]


_INTERNLM2_RENAMES = [(re.compile(p), r) for p, r in (
    (r"^model\.tok_embeddings\.(\w+)$", r"model.embed_tokens.\1"),
    (r"^output\.(\w+)$", r"lm_head.\1"),
    (r"^model\.norm\.(\w+)$", r"model.norm.\1"),
    (r"^model\.layers\.(\d+)\.attention_norm\.(\w+)$", r"model.layers.\1.input_layernorm.\2"),
    (r"^model\.layers\.(\d+)\.ffn_norm\.(\w+)$", r"model.layers.\1.post_attention_layernorm.\2"),
    (r"^model\.layers\.(\d+)\.attention\.wo\.(\w+)$", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"^model\.layers\.(\d+)\.feed_forward\.w1\.(\w+)$", r"model.layers.\1.mlp.gate_proj.\2"),
    (r"^model\.layers\.(\d+)\.feed_forward\.w3\.(\w+)$", r"model.layers.\1.mlp.up_proj.\2"),
    (r"^model\.layers\.(\d+)\.feed_forward\.w2\.(\w+)$", r"model.layers.\1.mlp.down_proj.\2"),
)]
_INTERNLM2_WQKV = re.compile(r"^model\.layers\.(\d+)\.attention\.wqkv\.(\w+)$")


def map_internlm2(name: str, tensor: torch.Tensor, config: ModelConfig) -> Pairs:
    if _skipped(name, config):
        return []
    m = _INTERNLM2_WQKV.match(name)
    if m:
        return _split_internlm2_wqkv(m.group(1), m.group(2), tensor, config)
    for pattern, replacement in _INTERNLM2_RENAMES:
        if pattern.match(name):
            new = pattern.sub(replacement, name)
            return [] if _skipped(new, config) else [(new, tensor)]
    raise ValueError(f"InternLM2 checkpoint tensor {name!r} has no counterpart in a Llama model")


def _split_internlm2_wqkv(layer: str, suffix: str, tensor: torch.Tensor, config: ModelConfig) -> Pairs:
    """wqkv rows are grouped per kv head: [kv_heads, q_per_kv + 2, head_dim] (the q rows of that
    group's query heads, then its k rows, then its v rows), as modeling_internlm2.py unpacks them."""
    _check_packable(suffix, "InternLM2 wqkv")
    kv, d = config.num_kv_heads, config.head_dim
    groups = config.num_heads // kv
    rest = tensor.shape[1:]
    if tensor.shape[0] != kv * (groups + 2) * d:
        raise ValueError(f"InternLM2 layer {layer} wqkv has {tensor.shape[0]} rows, the config implies "
                         f"{kv * (groups + 2) * d}")
    packed = tensor.reshape(kv, groups + 2, d, *rest)
    prefix = f"model.layers.{layer}.self_attn."
    return [(prefix + f"q_proj.{suffix}", packed[:, :groups].reshape(-1, *rest).contiguous()),
            (prefix + f"k_proj.{suffix}", packed[:, groups].reshape(-1, *rest).contiguous()),
            (prefix + f"v_proj.{suffix}", packed[:, groups + 1].reshape(-1, *rest).contiguous())]


_BAICHUAN_W_PACK = re.compile(r"^model\.layers\.(\d+)\.self_attn\.W_pack\.(\w+)$")


def map_baichuan2(name: str, tensor: torch.Tensor, config: ModelConfig) -> Pairs:
    if _skipped(name, config):
        return []
    m = _BAICHUAN_W_PACK.match(name)
    if m:
        # W_pack is q, k and v rows concatenated (Baichuan2-7B has no GQA: each is hidden_size rows)
        _check_packable(m.group(2), "Baichuan W_pack")
        sizes = [config.q_size, config.kv_size, config.kv_size]
        if tensor.shape[0] != sum(sizes):
            raise ValueError(f"Baichuan layer {m.group(1)} W_pack has {tensor.shape[0]} rows, the "
                             f"config implies {sum(sizes)}")
        prefix = f"model.layers.{m.group(1)}.self_attn."
        return [(prefix + f"{p}_proj.{m.group(2)}", t.contiguous())
                for p, t in zip("qkv", torch.split(tensor, sizes, dim=0))]
    if name == LM_HEAD:
        # Baichuan2's NormHead divides each vocabulary row by its L2 norm before use (at the first
        # forward in eval mode); doing it here gives a plain lm_head with identical logits. The
        # operation is idempotent, so checkpoints saved after normalization load unchanged.
        return [(name, F.normalize(tensor.float(), dim=-1).to(tensor.dtype))]
    return [(name, tensor)]


def _check_packable(suffix: str, what: str) -> None:
    if suffix not in _PACKED_SUFFIXES:
        raise ValueError(f"{what} tensor '.{suffix}' cannot be split: quantized (AWQ/GPTQ) packed "
                         f"q/k/v weights are not supported for this family")
