"""Decode CUDA graphs: which batch sizes are captured, off on CPU and with --eager-mode, and (on a
GPU only) the same greedy tokens as eager decoding."""
from __future__ import annotations

import pytest
import torch

from lmserve.config import EngineConfig, GenerationConfig
from lmserve.engine.cuda_graphs import capture_sizes, maybe_decode_graphs
from lmserve.model.loader import load_model
from tests.engine.helpers import make_engine, run_all
from tests.model.loader_testing import tiny_model


def test_capture_sizes_cover_every_batch_up_to_the_maximum():
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    for n in range(1, 70):
        assert any(s >= n for s in capture_sizes(max(n, 33)))


def test_no_graphs_on_cpu_or_in_eager_mode():
    cpu = torch.device("cpu")
    assert maybe_decode_graphs(None, [], EngineConfig(device="cpu"), cpu, 128, 16) is None
    assert maybe_decode_graphs(None, [], EngineConfig(eager_mode=True), torch.device("cuda"),
                               128, 16) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_graph_decode_equals_eager_decode_on_gpu(tmp_path, default_loaded):
    model = tiny_model("llama", seed=3, hidden_size=256, num_attention_heads=4)   # head_dim 64
    model.save_pretrained(tmp_path)
    default_loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    loaded.config.eos_token_ids = []
    prompts = [[1, 5, 17, 42, 3], list(range(10, 90)), [7] * 23]
    gen = GenerationConfig(max_new_tokens=16)
    outs = {}
    for eager in (True, False):
        engine = make_engine(loaded, device="cuda", dtype="float32", eager_mode=eager, max_batch_size=8)
        assert (engine.runner.decode_graphs is None) == eager
        outs[eager] = [o.token_ids for o in run_all(engine, prompts, gen)]
    assert outs[True] == outs[False]
