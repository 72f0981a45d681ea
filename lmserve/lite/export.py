"""Write a quantized model as a Hugging Face directory: config.json (with quantization_config),
model.safetensors, tokenizer files with the chat template, generation_config.json.

Float tensors are written as float16. From a GGUF source a Llama config.json is built from the
model description; from an HF source its own config.json is kept and extended.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import torch

from lmserve.model.canonical import LM_HEAD
from lmserve.model.config import ModelConfig

# Families whose checkpoints use the canonical (HF-Llama) tensor names, so a file we write under
# those names is read back by their own config.
_CANONICAL_FAMILIES = ("llama", "mistral", "qwen2", "internlm")
_MODEL_TYPES = {"llama": ("llama", "LlamaForCausalLM"), "mistral": ("mistral", "MistralForCausalLM"),
                "qwen2": ("qwen2", "Qwen2ForCausalLM")}


def hf_config_dict(loaded) -> dict:
    cfg: ModelConfig = loaded.config
    if cfg.family not in _CANONICAL_FAMILIES:
        raise ValueError(f"writing a quantized {cfg.family} model is not supported (its checkpoints "
                         f"name tensors differently); supported: {', '.join(_CANONICAL_FAMILIES)}")
    source = os.path.join(loaded.model_path, "config.json")
    if os.path.isdir(loaded.model_path) and os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    model_type, arch = _MODEL_TYPES.get(cfg.family, ("llama", "LlamaForCausalLM"))
    out = {"architectures": [arch], "model_type": model_type, "hidden_act": "silu",
           "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
           "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
           "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
           "head_dim": cfg.head_dim, "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
           "rope_scaling": cfg.rope_scaling, "max_position_embeddings": cfg.max_position_embeddings,
           "tie_word_embeddings": cfg.tie_word_embeddings, "bos_token_id": cfg.bos_token_id,
           "eos_token_id": cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1 else cfg.eos_token_ids}
    if model_type == "llama":
        out["attention_bias"] = cfg.qkv_bias
    return out


def write_model(out_dir: str, loaded, tensors: dict, quantization_config: dict,
                pack: Callable[[object], dict[str, torch.Tensor]]) -> str:
    """tensors: canonical name -> float tensor, or a quantized linear that `pack` turns into its
    checkpoint tensors (named `<linear>.<key>`). Returns the path of the safetensors file."""
    from safetensors.torch import save_file
    config = hf_config_dict(loaded)
    os.makedirs(out_dir, exist_ok=True)
    state = {}
    for name, value in tensors.items():
        if name == LM_HEAD and loaded.config.tie_word_embeddings:
            continue
        if isinstance(value, torch.Tensor):
            state[name] = value.to(torch.float16).contiguous()
            continue
        prefix = name.rsplit(".", 1)[0]
        for key, t in pack(value).items():
            state[f"{prefix}.{key}"] = t.contiguous()
    path = os.path.join(out_dir, "model.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    config["quantization_config"] = quantization_config
    config["torch_dtype"] = "float16"
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    _write_tokenizer(out_dir, loaded)
    _write_generation_config(out_dir, loaded)
    return path


def _write_tokenizer(out_dir: str, loaded) -> None:
    tok = loaded.tokenizer
    if loaded.chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = loaded.chat_template
    tok.save_pretrained(out_dir)


def _write_generation_config(out_dir: str, loaded) -> None:
    source = os.path.join(loaded.model_path, "generation_config.json")
    target = os.path.join(out_dir, "generation_config.json")
    if os.path.isdir(loaded.model_path) and os.path.isfile(source):
        shutil.copyfile(source, target)
        return
    cfg = loaded.config
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_ids,
           **loaded.generation_defaults}
    with open(target, "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=2)
