"""Greedy tokens of the engine equal transformers' greedy `generate` on the default model,
whatever the batching, prefix caching, chunking or preemption."""
from __future__ import annotations

import pytest

from lmserve.config import GenerationConfig
from tests.engine.helpers import hf_greedy, make_engine, run_all

QUESTIONS = [
    "Hi!",
    "What is 2+2?",
    "Write a haiku about the sea.",
    "Tell me a story about a dragon.",
    "Explain photosynthesis in one paragraph.",
    "List three prime numbers and explain why they are prime.",
    "Translate 'good morning' into French, Spanish and German, and explain the differences in "
    "politeness between the three greetings in a few sentences.",
    "You are given the following text. " + "The quick brown fox jumps over the lazy dog. " * 12
    + "How many times does the word fox appear?",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def prompts(default_loaded):
    tok = default_loaded.tokenizer
    from lmserve.chat_template import ChatTemplate
    template = ChatTemplate(tok, None, default_loaded.chat_template)
    return [tok.encode(template.render(q), add_special_tokens=False) for q in QUESTIONS]


@pytest.fixture(scope="module")
def references(prompts, hf_default_model, default_loaded):
    eos = set(default_loaded.config.eos_token_ids)
    return [hf_greedy(hf_default_model, p, MAX_NEW, eos) for p in prompts]


def test_prompts_have_different_lengths(prompts):
    lengths = sorted(len(p) for p in prompts)
    assert lengths[0] < 40 and lengths[-1] > 150


@pytest.mark.parametrize("mode", ["one_by_one", "batched", "prefix_cache", "chunked", "preempted",
                                  "low_bit_weights"])
def test_greedy_equals_transformers(mode, prompts, references, default_loaded):
    gen = GenerationConfig(max_new_tokens=MAX_NEW)
    if mode == "one_by_one":
        engine = make_engine(default_loaded)
        outs = [run_all(engine, [p], gen)[0] for p in prompts]
    elif mode == "batched":
        outs = run_all(make_engine(default_loaded), prompts, gen)
    elif mode == "prefix_cache":
        engine = make_engine(default_loaded, enable_prefix_caching=True)
        run_all(engine, prompts[:4], gen)                 # warm the cache with the shared system prompt
        outs = run_all(engine, prompts, gen)
        assert engine.blocks.prefix_hits > 0
    elif mode == "low_bit_weights":   # the GGUF's Q4_1/Q8_0 blocks run by the CPU kernel, never as floats
        from lmserve.kernels.quant_weight import QuantWeight
        from lmserve.model.loader import load_model
        engine = make_engine(load_model(None, keep_gguf_quantized=True))
        model = engine.runner.model
        assert isinstance(model.layers[0].qkv_proj.weight, QuantWeight)
        assert isinstance(model.embed_tokens.weight, QuantWeight) and model.lm_head.weight is model.embed_tokens.weight
        outs = run_all(engine, prompts, gen)
    elif mode == "chunked":
        engine = make_engine(default_loaded, max_prefill_token_num=16)
        outs = run_all(engine, prompts, gen)
    else:   # a cache too small for all at once: sequences are preempted and recomputed
        longest = max(len(p) for p in prompts) + MAX_NEW
        engine = make_engine(default_loaded, num_blocks=-(-longest // 16) + 1, cache_block_seq_len=16)
        outs = run_all(engine, prompts, gen)
        assert engine.scheduler.num_preemptions > 0
    for out, ref, q in zip(outs, references, QUESTIONS):
        assert out.token_ids == ref, f"{mode}: {q!r}"
