"""The OpenAI surface, through the official SDK: answers, streams, usage, logprobs, completions."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.serve.helpers import SESSION_LEN, sse_events

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_models_lists_the_served_model(client, model_name):
    models = client.models.list().data
    assert [m.id for m in models] == [model_name]
    assert models[0].object == "model"
    assert models[0].model_extra["max_model_len"] == SESSION_LEN


def test_chat_completion_has_openai_shape(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == model_name
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens > 5


def test_stream_equals_non_stream_under_greedy(client, model_name):
    full = client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_async_client_and_async_stream(async_client_factory, model_name):
    async def run():
        client = async_client_factory()
        full = await client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=10,
                                                    temperature=0)
        stream = await client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=10,
                                                      temperature=0, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        await client.close()
        return full.choices[0].message.content, text
    full, streamed = asyncio.run(run())
    assert full and streamed == full


def test_raw_sse_ends_with_done(server, model_name):
    body = {"model": model_name, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_and_stop(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=HELLO, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    full = client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=20, temperature=0)
    word = full.choices[0].message.content.split()[1]
    cut = client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=20, temperature=0, stop=[word])
    assert cut.choices[0].finish_reason == "stop"
    assert word not in cut.choices[0].message.content
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)


def test_seeded_sampling_is_reproducible_and_n_choices_differ(client, model_name):
    kwargs = dict(model=model_name, messages=HELLO, max_tokens=16, temperature=1.0, seed=1234, n=3)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1


def test_chat_logprobs(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)


def test_completions_prompt_forms(client, model_name, pipeline):
    text = "The capital of France is"
    ids = pipeline.encode(text, do_preprocess=False)
    single = client.completions.create(model=model_name, prompt=text, max_tokens=6, temperature=0)
    assert single.object == "text_completion" and single.id.startswith("cmpl-")
    assert single.usage.prompt_tokens == len(ids)
    as_ids = client.completions.create(model=model_name, prompt=ids, max_tokens=6, temperature=0)
    assert as_ids.choices[0].text == single.choices[0].text
    batch = client.completions.create(model=model_name, prompt=[text, "1, 2, 3,"], max_tokens=6,
                                      temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == single.choices[0].text
    id_batch = client.completions.create(model=model_name, prompt=[ids, ids], max_tokens=6, temperature=0)
    assert [c.text for c in id_batch.choices] == [single.choices[0].text] * 2


def test_completions_default_max_tokens_echo_logprobs_and_stream(client, model_name):
    r = client.completions.create(model=model_name, prompt="Once upon a time", temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16          # OpenAI's default max_tokens for completions
    echo = client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=4, temperature=0,
                                     echo=True)
    assert echo.choices[0].text.startswith("Once upon a time")
    lp = client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=4, temperature=0,
                                   logprobs=2)
    assert len(lp.choices[0].logprobs.tokens) == 4 and len(lp.choices[0].logprobs.top_logprobs[0]) == 2
    assert "".join(lp.choices[0].logprobs.tokens) == lp.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model_name, prompt="Once upon a time", max_tokens=4, temperature=0, stream=True) if c.choices)
    assert streamed == lp.choices[0].text


def test_extras_are_accepted(client, model_name):
    r = client.chat.completions.create(
        model=model_name, messages=HELLO, max_tokens=8, temperature=0.7, top_p=0.9, seed=7,
        presence_penalty=0.5, frequency_penalty=0.5, user="tester",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True,
                    "skip_special_tokens": True, "min_new_tokens": 8})
    assert r.usage.completion_tokens == 8


def test_tokenize(server, pipeline):
    r = httpx.post(server.url + "/tokenize", json={"prompt": "hello world"}).json()
    assert r["tokens"] == pipeline.tokenizer.encode("hello world") and r["count"] == len(r["tokens"])
    chat = httpx.post(server.url + "/tokenize", json={"messages": HELLO}).json()
    assert chat["tokens"] == pipeline.encode(HELLO) and chat["max_model_len"] == SESSION_LEN


def test_health_and_docs(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/docs").status_code == 200
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"] and "/v1/chat/interactive" in schema["paths"]


def test_session_id_reuses_kv_between_calls(client, model_name):
    messages = [{"role": "user", "content": "Tell me a fact about the sea. " * 4}]
    first = client.chat.completions.create(model=model_name, messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"session_id": 424242})
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And one more?"}]
    second = client.chat.completions.create(model=model_name, messages=messages, max_tokens=8, temperature=0,
                                            extra_body={"session_id": 424242})
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 16
