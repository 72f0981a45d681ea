"""Sessions, stop words, seeds, limits and streaming text on the default model."""
from __future__ import annotations

import pytest

from lmserve.chat_template import ChatTemplate
from lmserve.config import GenerationConfig
from lmserve.engine.engine import RequestTooLongError
from tests.engine.helpers import make_engine, run_all


@pytest.fixture(scope="module")
def engine(default_loaded):
    return make_engine(default_loaded, num_blocks=128, cache_block_seq_len=16, session_len=1024)


@pytest.fixture(scope="module")
def encode(default_loaded):
    template = ChatTemplate(default_loaded.tokenizer, None, default_loaded.chat_template)
    return lambda msgs: default_loaded.tokenizer.encode(template.render(msgs), add_special_tokens=False)


def test_session_turn_two_equals_fresh_run_and_prefills_only_new_tokens(engine, encode):
    gen = GenerationConfig(max_new_tokens=16)
    turn1 = [{"role": "user", "content": "Name a fruit."}]
    first = run_all(engine, [encode(turn1)], gen, session_ids=[7])[0]
    history = turn1 + [{"role": "assistant", "content": first.text},
                       {"role": "user", "content": "And a vegetable?"}]
    prompt2 = encode(history)
    second = run_all(engine, [prompt2], gen, session_ids=[7])[0]
    fresh = run_all(engine, [prompt2], gen)[0]
    assert second.token_ids == fresh.token_ids
    # The first turn's K/V was reused: only the tail of the history was computed again.
    assert second.num_cached_tokens >= len(encode(turn1)) - 1
    assert engine.end_session(7)
    assert not engine.end_session(7)


def test_ending_a_session_frees_its_blocks(engine, encode):
    free_before = engine.blocks.num_free_blocks
    run_all(engine, [encode("Hello there, how are you?")], GenerationConfig(max_new_tokens=8), session_ids=[11])
    assert engine.blocks.num_free_blocks < free_before
    engine.end_session(11)
    assert engine.blocks.num_free_blocks == free_before


def test_stop_word_ends_and_is_not_included(engine, encode):
    prompt = encode("Write one sentence about the moon.")
    full = run_all(engine, [prompt], GenerationConfig(max_new_tokens=40))[0].text
    stop = full[12:16]                      # likely spans a token boundary
    cut = full.index(stop)
    out = run_all(engine, [prompt], GenerationConfig(max_new_tokens=40, stop_words=["@@never@@", stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == full[:cut]
    kept = run_all(engine, [prompt], GenerationConfig(max_new_tokens=40, stop_words=[stop],
                                                      include_stop_str_in_output=True))[0]
    assert kept.text == full[:cut + len(stop)]


def test_same_seed_same_output_different_seed_differs(engine, encode):
    prompt = encode("Write a short poem about autumn.")
    def sample(seed):
        gen = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=1.0, top_k=0, random_seed=seed)
        return run_all(engine, [prompt], gen)[0].token_ids
    a, b, c = sample(1), sample(1), sample(2)
    assert a == b
    assert a != c


def test_seeded_output_does_not_depend_on_batch_neighbours(engine, encode):
    prompt = encode("Write a short poem about autumn.")
    gen = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, random_seed=5)
    alone = run_all(engine, [prompt], gen)[0].token_ids
    other = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0)
    engine.add_request("neighbour", encode("Hi"), other)
    together = run_all(engine, [prompt], gen)[0].token_ids
    assert alone == together


def test_max_and_min_new_tokens_and_ignore_eos(engine, encode):
    prompt = encode("Hi!")
    out = run_all(engine, [prompt], GenerationConfig(max_new_tokens=5, ignore_eos=True))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    short = run_all(engine, [encode("What is 2+2?")], GenerationConfig(max_new_tokens=200))[0]
    assert short.finish_reason == "stop"
    n = len(short.token_ids) + 5
    longer = run_all(engine, [encode("What is 2+2?")], GenerationConfig(max_new_tokens=200, min_new_tokens=n))[0]
    assert len(longer.token_ids) >= n


def test_logprobs_are_reported(engine, encode):
    out = run_all(engine, [encode("Hi!")], GenerationConfig(max_new_tokens=4, logprobs=3, ignore_eos=True))[0]
    assert len(out.logprobs) == 4
    chosen, top = out.logprobs[0]
    assert len(top) == 3 and top[0][0] == out.token_ids[0] and chosen == pytest.approx(top[0][1])


def test_too_long_prompt_is_refused_naming_both_numbers(engine, default_loaded):
    with pytest.raises(RequestTooLongError, match=r"2000 tokens.*--session-len is 1024"):
        engine.add_request("long", [1] * 2000, GenerationConfig())
    small = make_engine(default_loaded, num_blocks=4, cache_block_seq_len=16, session_len=1024)
    with pytest.raises(RequestTooLongError, match=r"100 tokens.*holds only 64 tokens"):
        small.add_request("long", [1] * 100, GenerationConfig())
    assert not small.has_work()
