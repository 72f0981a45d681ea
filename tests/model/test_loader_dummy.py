"""--load-format dummy: named real-model shapes, configs from a directory, lazy seeded weights."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from lmserve.model.canonical import canonical_weights, count_parameters
from lmserve.model.dummy import named_shape_config
from lmserve.model.loader import load_model
from lmserve.model.named_shapes import NAMED_SHAPES

# Parameter counts of the published checkpoints (embeddings and head included)
KNOWN_PARAMETERS = {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320,
                    "llama3-8b": 8_030_261_248, "qwen2-7b": 7_615_616_512,
                    "internlm2-chat-7b": 7_737_708_544, "smollm2-135m": 134_515_008}


@pytest.mark.parametrize("name", sorted(NAMED_SHAPES))
def test_named_shape_parses(name):
    config = named_shape_config(name)
    assert config.head_dim == (64 if name == "smollm2-135m" else 128)
    if name in KNOWN_PARAMETERS:
        assert count_parameters(config) == KNOWN_PARAMETERS[name]


def test_named_shapes_have_the_family_traits():
    c = {name: named_shape_config(name) for name in NAMED_SHAPES}
    assert (c["llama2-7b"].hidden_size, c["llama2-7b"].num_layers, c["llama2-7b"].num_kv_heads) == (4096, 32, 32)
    assert (c["llama2-13b"].hidden_size, c["llama2-13b"].num_layers, c["llama2-13b"].num_heads) == (5120, 40, 40)
    assert (c["llama3-8b"].num_kv_heads, c["llama3-8b"].rope_theta, c["llama3-8b"].vocab_size) == (8, 5e5, 128256)
    assert c["llama3-8b"].eos_token_ids == [128001, 128009]
    assert c["internlm-chat-7b"].qkv_bias and c["internlm-chat-7b"].o_bias
    assert c["internlm-chat-7b"].max_position_embeddings == 2048
    assert not c["internlm-chat-20b"].qkv_bias and c["internlm-chat-20b"].num_layers == 60
    assert c["internlm-chat-20b"].rope_scaling == {"rope_type": "dynamic", "factor": 1.0}
    assert c["internlm2-chat-7b"].rope_scaling == {"rope_type": "dynamic", "factor": 2.0}
    assert (c["internlm2-chat-7b"].num_kv_heads, c["internlm2-chat-7b"].rope_theta) == (8, 1e6)
    assert c["qwen2-7b"].qkv_bias and not c["qwen2-7b"].o_bias and c["qwen2-7b"].num_kv_heads == 4
    assert (c["baichuan2-7b"].family, c["baichuan2-7b"].vocab_size) == ("baichuan2", 125696)
    s = c["smollm2-135m"]
    assert (s.num_heads, s.num_kv_heads, s.head_dim, s.tie_word_embeddings) == (9, 3, 64, True)


def test_llama2_7b_streams_lazily_without_materializing_the_model():
    model = load_model("llama2-7b", load_format="dummy")
    assert model.config.family == "llama" and model.model_name == "llama2-7b"
    assert model.tokenizer is not None and model.chat_template
    expected = canonical_weights(model.config)
    assert len(expected) == 2 + 32 * 9 + 1 and expected[-1] == ("lm_head.weight", (32000, 4096))
    # only the first three tensors (~200 MB in fp16) are ever generated
    first = list(itertools.islice(model.weights(), 3))
    assert [(n, tuple(t.shape)) for n, t in first] == expected[:3]
    (_, embed), (_, norm), (_, q_proj) = first
    assert embed.dtype == torch.float16
    assert torch.equal(norm, torch.ones(4096, dtype=torch.float16))
    assert abs(q_proj.float().std().item() - 0.02) < 1e-3 and abs(q_proj.float().mean().item()) < 1e-3


def test_dummy_from_a_config_is_seeded_and_complete(tmp_path):
    config = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 128, "torch_dtype": "float32", "eos_token_id": 5}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6], "top_k": 7}))
    model = load_model(str(tmp_path), load_format="dummy", dummy_seed=3)
    assert model.config.qkv_bias and model.config.eos_token_ids == [5, 6]
    assert model.generation_defaults == {"top_k": 7}
    assert len(model.tokenizer) == 49152          # no tokenizer in the directory: the default one
    first, again = dict(model.weights()), dict(model.weights())
    assert [(n, tuple(t.shape)) for n, t in first.items()] == canonical_weights(model.config)
    assert all(torch.equal(first[n], again[n]) for n in first)
    other = dict(load_model(str(tmp_path / "config.json"), load_format="dummy", dummy_seed=4).weights())
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"],
                           other["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(first["model.norm.weight"], torch.ones(64))
    assert first["model.layers.1.self_attn.k_proj.bias"].shape == (32,)


def test_dummy_of_the_default_model_uses_its_config_and_tokenizer():
    model = load_model(None, load_format="dummy")
    assert model.config.num_heads == 9 and model.config.tie_word_embeddings
    assert model.tokenizer.eos_token == "<|im_end|>"
    name, tensor = next(model.weights())
    assert name == "model.embed_tokens.weight" and tensor.shape == (49152, 576)


def test_unknown_named_shape_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="does not exist and is not a named shape .*llama2-7b"):
        load_model("llama9-1t", load_format="dummy")
    with pytest.raises(ValueError, match="llama2-7b"):
        named_shape_config("llama9-1t")
