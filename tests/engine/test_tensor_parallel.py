"""--tp 2 on CPU (gloo): greedy tokens equal --tp 1 on tiny random Llamas whose KV heads split over
the ranks (4 heads / 2 KV) and are replicated (4 heads / 1 KV), with a batch and a chunked prefill;
Starting the workers costs seconds (each imports torch), so one engine serves a whole model's tests.
"""
from __future__ import annotations

import pytest

from lmserve import GenerationConfig
from lmserve.model.loader import load_model
from tests.engine.helpers import make_engine, run_all
from tests.model.loader_testing import tiny_model

PROMPTS = [[1, 5, 17, 42, 3, 88, 9, 60, 2, 71], [4, 8], list(range(10, 60)), [7] * 23]
ENGINE = dict(num_blocks=64, cache_block_seq_len=8, max_prefill_token_num=16)   # the 50-token prompt is chunked


def save_tiny(path, tokenizer, kv_heads: int) -> str:
    model = tiny_model("llama", seed=3, num_key_value_heads=kv_heads)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=[2, 1], ids=["kv_heads_split", "kv_head_replicated"])
def tiny_tp(request, tmp_path_factory, default_loaded):
    path = save_tiny(tmp_path_factory.mktemp(f"kv{request.param}"), default_loaded.tokenizer, request.param)
    loaded = load_model(path)
    loaded.config.eos_token_ids = []          # random weights: compare fixed-length outputs
    engine = make_engine(loaded, tp=2, **ENGINE)
    yield loaded, engine
    engine.close()


def test_tp2_greedy_equals_tp1(tiny_tp):
    loaded, tp_engine = tiny_tp
    gen = GenerationConfig(max_new_tokens=12)
    want = [o.token_ids for o in run_all(make_engine(loaded, **ENGINE), PROMPTS, gen)]
    assert [o.token_ids for o in run_all(tp_engine, PROMPTS, gen)] == want


def test_rank0_holds_only_its_shard(tiny_tp):
    loaded, engine = tiny_tp
    cfg, layer = loaded.config, engine.runner.model.layers[0]
    assert engine.runner.kv_caches[0][0].shape[2] == max(1, cfg.num_kv_heads // 2)
    assert tuple(layer.o_proj.weight.shape) == (cfg.hidden_size, cfg.num_heads * cfg.head_dim // 2)
    assert tuple(layer.gate_up_proj.weight.shape) == (cfg.intermediate_size, cfg.hidden_size)
    assert tuple(engine.runner.model.embed_tokens.weight.shape) == (cfg.vocab_size // 2, cfg.hidden_size)
