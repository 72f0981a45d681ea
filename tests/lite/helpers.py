"""Tiny random Llama directories with the default model's tokenizer, for the quantization tests."""
from __future__ import annotations

import os

import torch

TINY_QUANT = dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=True)

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 +
        "Perplexity measures how well a model predicts text it has not seen. " * 3 +
        "Quantization stores weights with fewer bits to save memory and bandwidth. " * 3) * 6


def tiny_llama(seed: int = 0, outliers: bool = False, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_QUANT, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            if outliers and name.endswith("input_layernorm.weight"):
                p[:4] *= 20.0      # a few activation channels much larger than the rest, as in LLMs
            if outliers and name.endswith("post_attention_layernorm.weight"):
                p[:4] *= 20.0
    return model


def save_tiny(folder, tokenizer, seed: int = 0, outliers: bool = False, **overrides) -> str:
    model = tiny_llama(seed, outliers, **overrides)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_text(folder, name: str = "text.txt") -> str:
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(TEXT)
    return path
