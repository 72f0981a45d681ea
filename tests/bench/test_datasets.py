"""Request sets: ShareGPT parsing and its filters on a slice of the real sample; random prompts."""
from __future__ import annotations

import json

import pytest

from lmserve.bench.datasets import load_sharegpt, random_requests


def test_reply_gives_output_length_and_replyless_conversations_are_dropped(sharegpt_slice, tokenizer):
    requests, report = load_sharegpt(sharegpt_slice, tokenizer, num_prompts=100, session_len=4096)
    data = json.load(open(sharegpt_slice, encoding="utf-8"))
    with_reply = [c["conversations"] for c in data if len(c["conversations"]) == 2]
    assert [r.prompt for r in requests] == [c[0]["value"] for c in with_reply]
    assert [r.output_len for r in requests] == [len(tokenizer.encode(c[1]["value"], add_special_tokens=False))
                                               for c in with_reply]
    assert [r.prompt_ids for r in requests] == [tokenizer.encode(c[0]["value"]) for c in with_reply]
    assert (report.read, report.kept, report.no_reply) == (12, 6, 6)


def test_fixed_output_length_takes_the_first_usable_conversations_in_file_order(sharegpt_slice, tokenizer):
    requests, report = load_sharegpt(sharegpt_slice, tokenizer, num_prompts=5, session_len=4096, output_len=7)
    data = json.load(open(sharegpt_slice, encoding="utf-8"))
    assert [r.prompt for r in requests] == [c["conversations"][0]["value"] for c in data[:5]]
    assert {r.output_len for r in requests} == {7}
    assert report.read == 5


def test_session_length_filter_drops_prompt_plus_output_that_does_not_fit(sharegpt_slice, tokenizer):
    requests, report = load_sharegpt(sharegpt_slice, tokenizer, num_prompts=100, session_len=200, output_len=10)
    assert requests and all(r.prompt_len + 10 <= 200 for r in requests)
    lengths = [len(tokenizer.encode(c["conversations"][0]["value"]))
               for c in json.load(open(sharegpt_slice, encoding="utf-8"))]
    assert report.too_long == sum(n + 10 > 200 for n in lengths) > 0
    assert report.kept == len(requests) == sum(n + 10 <= 200 for n in lengths)


def test_short_prompts_and_short_outputs_are_dropped(tmp_path, tokenizer):
    conversations = [[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "A long enough answer, surely."}],
                     [{"from": "human", "value": "Tell me about the history of Rome."}, {"from": "gpt", "value": "No"}],
                     [{"from": "gpt", "value": "a reply with no question"}],
                     [{"from": "human", "value": "Tell me about the history of Rome."},
                      {"from": "gpt", "value": "Rome was founded, legend says, in 753 BC."}]]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps([{"id": str(i), "conversations": c} for i, c in enumerate(conversations)]))
    requests, report = load_sharegpt(str(path), tokenizer, num_prompts=10, session_len=4096)
    assert [r.output_len for r in requests] == [len(tokenizer.encode(conversations[3][1]["value"],
                                                                     add_special_tokens=False))]
    assert (report.too_short, report.no_human_turn, report.kept) == (2, 1, 1)


def test_a_file_without_usable_requests_says_which_flag_helps(tmp_path, tokenizer):
    path = tmp_path / "no_replies.json"
    path.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "What is a tree?"}]}]))
    with pytest.raises(ValueError, match="--sharegpt-output-len"):
        load_sharegpt(str(path), tokenizer, num_prompts=10, session_len=4096)
    with pytest.raises(ValueError, match="--num-prompts must be >= 1"):
        load_sharegpt(str(path), tokenizer, num_prompts=0, session_len=4096)


def test_random_prompts_have_exact_lengths_no_special_tokens_and_follow_the_seed(tokenizer):
    a = random_requests(tokenizer, 3, input_len=50, output_len=9, seed=1)
    b = random_requests(tokenizer, 3, input_len=50, output_len=9, seed=1)
    c = random_requests(tokenizer, 3, input_len=50, output_len=9, seed=2)
    assert [r.prompt_ids for r in a] == [r.prompt_ids for r in b] != [r.prompt_ids for r in c]
    assert all(r.prompt_len == 50 and r.output_len == 9 for r in a)
    special = set(tokenizer.all_special_ids)
    assert not any(t in special for r in a for t in r.prompt_ids)
    assert a[0].prompt == tokenizer.decode(a[0].prompt_ids)
    with pytest.raises(ValueError, match="--input-len must be >= 1"):
        random_requests(tokenizer, 3, input_len=0, output_len=9)
