"""Streaming text never contains a broken UTF-8 character, and deltas add up to the whole."""
from __future__ import annotations

from lmserve.engine.detokenizer import IncrementalDetokenizer


def test_cjk_and_emoji_stream_without_replacement_chars(default_loaded):
    tok = default_loaded.tokenizer
    text = "Hello 世界! 🐉🔥 naïve café — 東京タワー"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 4      # byte-level pieces split characters across tokens
    detok = IncrementalDetokenizer(tok, tok.encode("Say:", add_special_tokens=False))
    pieces = []
    for i, t in enumerate(ids):
        detok.add(t, final=i == len(ids) - 1)
        pieces.append(detok.take_delta(finished=i == len(ids) - 1))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)


def test_stop_string_across_tokens_is_held_back_then_cut(default_loaded):
    tok = default_loaded.tokenizer
    ids = tok.encode("one two three STOP four", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], stop_words=["STOP"])
    streamed, stopped = "", False
    for t in ids:
        stopped = detok.add(t)
        streamed += detok.take_delta(finished=stopped)
        if stopped:
            break
    assert stopped and streamed == "one two three "
