"""The fused CPU decode stack gives bit-identical logits to the module-by-module path."""
from __future__ import annotations

import pytest
import torch

from lmserve.config import GenerationConfig
from lmserve.kernels.cpu_decode_stack import build_decode_stack, load_extension
from lmserve.kernels.quant_weight import QuantWeight
from lmserve.model.loader import load_model
from tests.conftest import requires_default_model
from tests.engine.helpers import make_engine, run_all
from tests.model.loader_testing import tiny_model

pytestmark = pytest.mark.skipif(load_extension() is None, reason="no C++ extensions on this machine")

GEN = GenerationConfig(max_new_tokens=10, ignore_eos=True, logprobs=3)


class CountingStack:
    """Wraps a DecodeStack to prove the decode steps went through it."""

    def __init__(self, stack):
        self.stack, self.calls = stack, 0

    def forward(self, *args):
        self.calls += 1
        return self.stack.forward(*args)


def outputs(loaded, prompts, eager: bool, quantize_group: int | None = None, **engine_kwargs):
    engine = make_engine(loaded, eager_mode=eager, **engine_kwargs)
    model = engine.runner.model
    if quantize_group:       # low-bit weights with the tiny model's biases: RTN of every linear
        for layer in model.layers:
            for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
                lin.weight = QuantWeight.quantize(lin.weight, 4, quantize_group)
        model.decode_stack = None if eager else build_decode_stack(model)
    assert (model.decode_stack is None) == eager
    if not eager:
        model.decode_stack = counting = CountingStack(model.decode_stack)
    outs = run_all(engine, prompts, GEN)
    if not eager:
        assert counting.calls >= GEN.max_new_tokens - 1
    return [(o.token_ids, o.logprobs) for o in outs]


def assert_same_with_and_without_stack(loaded, prompts, **kwargs):
    fused = outputs(loaded, prompts, eager=False, **kwargs)
    modules = outputs(loaded, prompts, eager=True, **kwargs)
    assert fused == modules        # tokens and logprobs, exactly


@requires_default_model
def test_default_model_low_bit_weights_batched_and_alone():
    loaded = load_model(None, keep_gguf_quantized=True)
    prompts = [loaded.tokenizer.encode(t) for t in
               ("The capital of France is", "Write a haiku about the sea.", "1, 2, 3, 4,")]
    assert_same_with_and_without_stack(loaded, prompts)
    assert_same_with_and_without_stack(loaded, prompts[:1])


@pytest.mark.parametrize("kind,overrides,group", [
    ("llama", {"attention_bias": True}, None),                          # q/k/v and o biases
    ("qwen2", {}, None),                                                # q/k/v biases
    ("llama", {"attention_bias": True, "intermediate_size": 64}, 32),   # low-bit + biases
    ("llama", {"num_key_value_heads": 1}, None),                        # MQA
])
def test_tiny_models_with_biases_float_and_low_bit(kind, overrides, group, tmp_path, default_loaded):
    model = tiny_model(kind, seed=5, **overrides)
    model.save_pretrained(tmp_path)
    default_loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    prompts = [[1, 5, 17, 42, 3, 88, 9, 60, 2, 71], [4, 8], list(range(10, 40))]
    # tiny blocks: decoding crosses block boundaries and the prompt of 30 spans several
    assert_same_with_and_without_stack(loaded, prompts, quantize_group=group, num_blocks=64,
                                       cache_block_seq_len=8)


@pytest.mark.parametrize("bits,rotation", [(8, "off"), (8, "on"), (4, "on"), (4, "off")])
def test_quantized_kv_cache(bits, rotation, tmp_path, default_loaded):
    # head_dim 16: the int4 attention kernel needs a multiple of 16
    tiny_model("llama", seed=7, num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path)
    default_loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    prompts = [[1, 5, 17, 42, 3, 88, 9, 60, 2, 71], [4, 8], list(range(10, 40))]
    assert_same_with_and_without_stack(loaded, prompts, num_blocks=64, cache_block_seq_len=8,
                                       quant_policy=bits, kv_rotation=rotation)


@requires_default_model
def test_default_model_int8_kv_cache():
    loaded = load_model(None, keep_gguf_quantized=True)
    prompts = [loaded.tokenizer.encode(t) for t in ("The capital of France is", "1, 2, 3, 4,")]
    assert_same_with_and_without_stack(loaded, prompts, quant_policy=8)


def test_not_built_where_it_cannot_serve(tmp_path, default_loaded):
    tiny_model("llama", seed=1).save_pretrained(tmp_path)
    default_loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert make_engine(loaded).runner.model.decode_stack is not None
    assert make_engine(loaded, quant_policy=8).runner.model.decode_stack is not None
    # head_dim 8: the int4 attention kernel needs a multiple of 16, so the modules run (with
    # the torch reference attention)
    assert make_engine(loaded, quant_policy=4).runner.model.decode_stack is None
    assert make_engine(loaded, eager_mode=True).runner.model.decode_stack is None
    engine = make_engine(loaded, dtype="bfloat16")
    assert engine.runner.model.dtype == torch.bfloat16 and engine.runner.model.decode_stack is None
