"""The LMDeploy-style Python API on the default model: batch, stream, chat sessions, async, errors."""
from __future__ import annotations

import asyncio
import threading

import pytest

from lmserve import EngineConfig, GenerationConfig, pipeline


@pytest.fixture(scope="module")
def pipe(default_loaded):
    with pipeline(backend_config=EngineConfig(num_blocks=96, cache_block_seq_len=16, session_len=1024)) as p:
        yield p


GEN = GenerationConfig(max_new_tokens=12)


def test_single_and_batch_prompts(pipe):
    one = pipe("Hi!", GEN)
    both = pipe(["Hi!", [{"role": "user", "content": "What is 2+2?"}]], GEN)
    assert one.text and one.text == both[0].text
    assert both[1].generate_token_len == len(both[1].token_ids) > 0
    assert both[1].input_token_len > 10 and both[1].finish_reason in ("stop", "length")


def test_stream_pieces_add_up_to_the_whole(pipe):
    whole = pipe("Tell me about cats.", GEN).text
    pieces = [r.text for r in pipe.stream_infer("Tell me about cats.", GEN)]
    assert len(pieces) > 1 and "".join(pieces) == whole


def test_chat_keeps_history_and_kv(pipe):
    session = pipe.chat("Name a fruit.", gen_config=GEN)
    first = session.response.text
    session = pipe.chat("And a vegetable?", session, gen_config=GEN)
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[1]["content"] == first
    assert session.response.num_cached_tokens > 0
    pipe.end_session(session.session_id)


def test_n_gives_several_answers(pipe):
    outs = pipe("Say something.", GenerationConfig(max_new_tokens=8, n=3, do_sample=True, random_seed=1))
    assert len(outs) == 3 and len({tuple(o.token_ids) for o in outs}) > 1


def test_async_generate_and_cancel_frees_blocks(pipe):
    async def run():
        text = ""
        async for out in pipe.generate("Hi!", GEN):
            text += out.delta_text
        agen = pipe.generate("Count to one hundred.", GenerationConfig(max_new_tokens=200, ignore_eos=True))
        await agen.__anext__()
        await agen.aclose()         # a client that goes away, then its event loop closes
        return text
    text = asyncio.run(run())
    assert text == pipe("Hi!", GEN).text
    assert pipe.loop.call(lambda e: (e.blocks.num_free_blocks, e.has_work())) == (96, False)


def test_a_failing_consumer_aborts_only_its_own_request(pipe):
    calls = threading.Event()

    def broken(out):
        calls.set()
        raise RuntimeError("consumer vanished")
    pipe.loop.submit("broken", pipe.encode("Count to one hundred."),
                     GenerationConfig(max_new_tokens=200, ignore_eos=True), None, broken)
    assert calls.wait(timeout=60)
    assert pipe("Hi!", GEN).text          # the engine thread survived and serves others
    assert pipe.loop.call(lambda e: (e.blocks.num_free_blocks, e.has_work())) == (96, False)


def test_bad_requests_raise_and_leave_the_engine_working(pipe):
    with pytest.raises(ValueError, match="--session-len is 1024"):
        pipe("word " * 2000, GEN)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=1.5)
    with pytest.raises(ValueError, match="messages must not be empty"):
        pipe.encode([])
    assert pipe("Hi!", GEN).text
