"""Greedy tokens equal transformers' on random tiny Llama, Mistral and Qwen2 checkpoints (GQA, MQA,
biases, rope scaling), loaded from disk through the real HF loader and run batched with chunking."""
from __future__ import annotations

import pytest
import torch

from lmserve.config import GenerationConfig
from lmserve.model.loader import load_model
from tests.engine.helpers import hf_greedy, make_engine, run_all
from tests.model.loader_testing import tiny_model

CASES = {
    "llama_gqa": ("llama", {}),
    "llama_mqa": ("llama", {"num_key_value_heads": 1}),
    "llama_bias": ("llama", {"attention_bias": True}),     # q/k/v and o biases, as InternLM has
    "llama3_rope": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "llama_linear_rope": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
}
PROMPTS = [[1, 5, 17, 42, 3, 88, 9, 60, 2, 71], [4, 8], list(range(10, 60)), [7] * 23]
MAX_NEW = 12


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_model_greedy_equals_transformers(case, tmp_path, default_loaded):
    kind, overrides = CASES[case]
    model = tiny_model(kind, seed=3, **overrides)
    model.generation_config.eos_token_id = None     # random weights: compare fixed-length outputs
    model.save_pretrained(tmp_path)
    default_loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    loaded.config.eos_token_ids = []
    refs = [hf_greedy(model, p, MAX_NEW, set()) for p in PROMPTS]
    engine = make_engine(loaded, num_blocks=64, cache_block_seq_len=8, max_prefill_token_num=16)
    outs = run_all(engine, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW))
    assert [o.token_ids for o in outs] == refs
