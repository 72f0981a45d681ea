"""Helpers for the loader tests: tiny random HF models, checkpoint writers, logits comparisons."""
from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

from lmserve.model.config import ModelConfig

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5)
CLASSES = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
           "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
INPUT_IDS = torch.tensor([[1, 5, 17, 42, 3, 88, 9, 60, 2, 71]])


def tiny_model(kind: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    config_cls, model_cls = CLASSES[kind]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # HF initializes norms to 1 and biases to 0; random values make a misplaced or missing
            # norm or bias change the logits, so the logits tests can see it
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return model


def canonical_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def streamed(loaded) -> dict[str, torch.Tensor]:
    return dict(loaded.weights())


def hf_model_from(config: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A transformers model built only from our ModelConfig and canonical tensors."""
    if config.o_bias != config.qkv_bias and config.family != "qwen2":
        raise AssertionError("HF Llama has one attention_bias flag for q, k, v and o")
    kind = "qwen2" if config.family == "qwen2" else "llama"
    config_cls, model_cls = CLASSES[kind]
    kwargs = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                  intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                  num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                  head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
                  rope_theta=config.rope_theta,
                  rope_scaling=dict(config.rope_scaling) if config.rope_scaling else None,  # HF mutates it
                  max_position_embeddings=config.max_position_embeddings,
                  tie_word_embeddings=config.tie_word_embeddings)
    if kind == "llama":
        kwargs["attention_bias"] = config.qkv_bias
    model = model_cls(config_cls(**kwargs)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert not unexpected and set(missing) <= allowed, (missing, unexpected)
    return model


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    return model(INPUT_IDS).logits


def write_checkpoint(folder, config: dict, tensors: dict[str, torch.Tensor],
                     tokenizer_dir=None, generation: dict | None = None) -> str:
    """A model directory in some family's on-disk layout: config.json + model.safetensors."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))
    if generation is not None:
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump(generation, f)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, folder)
    return str(folder)


def copy_tokenizer(src, dst) -> None:
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))


def save_bin(state: dict[str, torch.Tensor], folder, shards: int = 1) -> None:
    """pytorch_model*.bin as transformers < 5 wrote them (v5 only writes safetensors)."""
    names = list(state)
    if shards == 1:
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))
        return
    weight_map = {}
    per = -(-len(names) // shards)
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i * per:(i + 1) * per]}
        torch.save(part, os.path.join(folder, file))
        weight_map.update({n: file for n in part})
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def llama_config_dict(model: torch.nn.Module, **extra) -> dict:
    """The HF-Llama-style hyper-parameters of a tiny model, for hand-written family configs."""
    c = model.config
    return {"hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "vocab_size": c.vocab_size,
            "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, **extra}
