"""Hugging Face directories of Llama, Mistral and Qwen2, in every on-disk layout, round-trip exactly."""
from __future__ import annotations

import json
import os

import pytest
import torch
from loader_testing import (canonical_state, copy_tokenizer, hf_model_from, logits, save_bin,
                            streamed, tiny_model)

from lmserve.model.loader import load_model

LAYOUTS = ("safetensors", "sharded-safetensors", "bin", "sharded-bin")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from lmserve.model.loader import default_tokenizer
    folder = tmp_path_factory.mktemp("tokenizer")
    default_tokenizer().save_pretrained(folder)
    return folder


def save(model, folder, layout: str, tokenizer_dir) -> str:
    if layout.endswith("bin"):
        model.save_pretrained(folder)     # config.json + generation_config.json
        for f in os.listdir(folder):
            if f.endswith((".safetensors", ".index.json")):
                os.remove(os.path.join(folder, f))
        save_bin(canonical_state(model), folder, shards=3 if layout.startswith("sharded") else 1)
    else:
        shard = "20KB" if layout.startswith("sharded") else "10GB"
        model.save_pretrained(folder, max_shard_size=shard)
    copy_tokenizer(tokenizer_dir, folder)
    return str(folder)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_checkpoint_round_trips_exactly(kind, layout, tmp_path, tokenizer_dir):
    original = tiny_model(kind, tie_word_embeddings=(kind == "qwen2"))
    path = save(original, tmp_path / kind, layout, tokenizer_dir)
    files = os.listdir(path)
    if layout == "sharded-safetensors":
        assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) > 2
    if layout == "sharded-bin":
        assert "pytorch_model.bin.index.json" in files

    loaded = load_model(path)
    assert loaded.config.family == kind
    assert loaded.config.qkv_bias == (kind == "qwen2") and not loaded.config.o_bias
    assert loaded.config.tie_word_embeddings == (kind == "qwen2")
    assert (loaded.config.num_heads, loaded.config.num_kv_heads, loaded.config.head_dim) == (4, 2, 8)
    state = streamed(loaded)
    expected = canonical_state(original)
    assert list(state) == list(expected) or set(state) == set(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    assert torch.equal(logits(hf_model_from(loaded.config, state)), logits(original))
    assert loaded.model_name == kind and loaded.tokenizer("hi").input_ids == [6004]


def test_checkpoint_dtype_is_kept(tmp_path, tokenizer_dir):
    original = tiny_model("llama").to(torch.bfloat16)
    loaded = load_model(save(original, tmp_path / "bf16", "safetensors", tokenizer_dir))
    assert loaded.config.torch_dtype == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for _, t in loaded.weights())


def test_generation_config_is_honoured(tmp_path, tokenizer_dir):
    original = tiny_model("llama")
    original.generation_config.eos_token_id = [2, 7]
    original.generation_config.do_sample = True
    original.generation_config.temperature = 0.6
    original.generation_config.top_p = 0.9
    original.generation_config.top_k = 20
    original.generation_config.repetition_penalty = 1.05
    path = save(original, tmp_path / "gen", "safetensors", tokenizer_dir)
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["eos_token_id"] == 2
    loaded = load_model(path)
    assert loaded.config.eos_token_ids == [2, 7]        # the union, config.json's first
    assert loaded.generation_defaults == {"do_sample": True, "temperature": 0.6, "top_p": 0.9,
                                          "top_k": 20, "repetition_penalty": 1.05}


def test_rope_scaling_is_kept_as_hf_gives_it(tmp_path, tokenizer_dir):
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    original = tiny_model("llama", rope_scaling=dict(llama3), rope_theta=500000.0)  # HF mutates it
    loaded = load_model(save(original, tmp_path / "llama3", "safetensors", tokenizer_dir))
    assert loaded.config.rope_theta == 500000.0 and loaded.config.rope_scaling == llama3
    assert torch.equal(logits(hf_model_from(loaded.config, streamed(loaded))), logits(original))


def test_chat_template_and_legacy_rope_keys_from_config_files(tmp_path, tokenizer_dir):
    original = tiny_model("llama")
    path = save(original, tmp_path / "legacy", "safetensors", tokenizer_dir)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    # a transformers-4 config.json: rope_theta + rope_scaling with the old "type" key
    config.pop("rope_parameters", None)
    config.update(rope_theta=20000.0, rope_scaling={"type": "linear", "factor": 2.0})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    loaded = load_model(path, load_format="hf")
    assert loaded.config.rope_theta == 20000.0
    assert loaded.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert loaded.chat_template and "<|im_start|>" in loaded.chat_template
