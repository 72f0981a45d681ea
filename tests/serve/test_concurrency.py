"""Many streams at once, and clients that leave: answers stay exact, KV blocks come back at once."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.serve.helpers import metrics, wait_until

SUBJECTS = ["the sea", "a cat", "bread", "the moon", "rain", "music", "trees", "a train",
            "coffee", "snow", "a river", "books", "the sun", "a garden", "birds", "mountains"]


def _request(model_name: str, subject: str) -> dict:
    return dict(model=model_name, messages=[{"role": "user", "content": f"Write one sentence about {subject}."}],
                max_tokens=8, temperature=0)


def test_64_concurrent_streams_each_equal_the_request_alone(client, async_client_factory, model_name):
    # 16 different requests, 4 copies each: 64 streams in one batch, checked against each run alone.
    alone = {s: client.chat.completions.create(**_request(model_name, s)).choices[0].message.content
             for s in SUBJECTS}

    async def one(aclient, subject):
        stream = await aclient.chat.completions.create(stream=True, **_request(model_name, subject))
        pieces, reasons = [], []
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                reasons.append(chunk.choices[0].finish_reason)
        return subject, "".join(pieces), [r for r in reasons if r]

    async def run_all():
        aclient = async_client_factory()
        try:
            return await asyncio.gather(*(one(aclient, s) for s in SUBJECTS * 4))
        finally:
            await aclient.close()
    results = asyncio.run(run_all())
    assert len(results) == 64
    for subject, text, reasons in results:
        assert len(reasons) == 1, f"{subject}: stream did not finish once: {reasons}"
        assert text == alone[subject], f"{subject}: {text!r} != {alone[subject]!r}"


def _long_stream_body(model_name: str, stream: bool = True) -> dict:
    return {"model": model_name, "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 2000, "temperature": 0, "ignore_eos": True, "stream": stream}


@pytest.fixture
def idle_baseline(server):
    """KV usage with nothing running (sessions of other tests may hold some blocks)."""
    assert wait_until(lambda: metrics(server.url)["lmserve:num_requests_running"] == 0, timeout=30)
    return metrics(server.url)["lmserve:kv_cache_usage_perc"]


def test_client_disconnect_mid_stream_aborts_and_frees_blocks(server, model_name, idle_baseline):
    before = metrics(server.url)
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.url + "/v1/chat/completions", json=_long_stream_body(model_name)) as r:
            lines = r.iter_lines()
            received = [line for _, line in zip(range(12), lines)]     # a few chunks, then hang up
            assert any(line.startswith("data: ") for line in received)
            busy = metrics(server.url)
            assert busy["lmserve:num_requests_running"] == 1
            assert busy["lmserve:kv_cache_usage_perc"] > idle_baseline
    left = time.monotonic()
    assert wait_until(lambda: metrics(server.url)["lmserve:num_requests_running"] == 0, timeout=5)
    assert time.monotonic() - left < 2.0
    after = metrics(server.url)
    assert after["lmserve:kv_cache_usage_perc"] <= idle_baseline
    generated = after["lmserve:generation_tokens_total"] - before["lmserve:generation_tokens_total"]
    assert 0 < generated < 200       # stopped long before its 2000 tokens


def test_client_timeout_on_non_streamed_request_aborts_it(server, model_name, idle_baseline):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=_long_stream_body(model_name, stream=False),
                   timeout=httpx.Timeout(60, read=1.5))
    assert wait_until(lambda: metrics(server.url)["lmserve:num_requests_running"] == 0, timeout=5)
    assert metrics(server.url)["lmserve:kv_cache_usage_perc"] <= idle_baseline


def test_metrics_count_tokens_and_latencies(server, client, model_name):
    before = metrics(server.url)
    r = client.chat.completions.create(**_request(model_name, "metrics"))
    after = metrics(server.url)
    assert after["lmserve:prompt_tokens_total"] - before["lmserve:prompt_tokens_total"] == r.usage.prompt_tokens
    assert (after["lmserve:generation_tokens_total"] - before["lmserve:generation_tokens_total"]
            == r.usage.completion_tokens)
    assert after["lmserve:time_to_first_token_seconds_count"] == before["lmserve:time_to_first_token_seconds_count"] + 1
    assert after["lmserve:e2e_request_latency_seconds_count"] == before["lmserve:e2e_request_latency_seconds_count"] + 1
    for name in ("num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_hit_rate"):
        assert "lmserve:" + name in after
    # the same prompt again hits the prefix cache
    client.chat.completions.create(**_request(model_name, "metrics"))
    assert metrics(server.url)["lmserve:prefix_cache_hits_total"] > after["lmserve:prefix_cache_hits_total"]
