"""API keys, the concurrency cap, CORS and --disable-docs (on a second app sharing the engine)."""
from __future__ import annotations

import threading

import httpx
import openai
import pytest

from tests.serve.helpers import API_KEY, wait_until

MSG = [{"role": "user", "content": "hi"}]


def test_requests_without_a_valid_key_get_401(guarded_server):
    url = guarded_server.url
    bad_headers = ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                   {"Authorization": "Basic " + API_KEY}, {"Authorization": f"Bearer {API_KEY}x"})
    for headers in bad_headers:
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", {"messages": MSG}),
                                   ("POST", "/tokenize", {"prompt": "x"}),
                                   ("POST", "/v1/chat/interactive", {"prompt": "x"})):
            r = httpx.request(method, url + path, json=body, headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
            assert "API key" in error["message"]


def test_valid_keys_and_open_endpoints(guarded_server):
    for key in (API_KEY, "sk-second"):
        client = openai.OpenAI(base_url=guarded_server.url + "/v1", api_key=key, max_retries=0)
        r = client.chat.completions.create(model=client.models.list().data[0].id, messages=MSG, max_tokens=2)
        assert r.usage.completion_tokens <= 2
    assert httpx.get(guarded_server.url + "/health").status_code == 200
    assert httpx.get(guarded_server.url + "/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        openai.OpenAI(base_url=guarded_server.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_docs_can_be_disabled(guarded_server, server):
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(guarded_server.url + path).status_code == 404
    assert httpx.get(server.url + "/docs").status_code == 200


def test_cors_allows_only_the_given_origin(guarded_server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(guarded_server.url + "/v1/chat/completions",
                       headers={"Origin": "http://allowed.example", **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://allowed.example"
    bad = httpx.options(guarded_server.url + "/v1/chat/completions",
                        headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in bad.headers


def test_past_max_concurrent_requests_answers_429(guarded_server):
    body = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 2000,
            "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    started, release = threading.Barrier(3), threading.Event()

    def hold():
        with httpx.stream("POST", guarded_server.url + "/v1/chat/completions", json=body, headers=headers,
                          timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()      # kept: a dropped iterator closes the response
            next(lines)
            started.wait()
            release.wait(30)        # leaving the block hangs up, which aborts the stream
    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    started.wait(60)
    try:
        r = httpx.post(guarded_server.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1},
                       headers=headers)
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "rate_limit_error" and "--max-concurrent-requests" in r.text
        assert httpx.get(guarded_server.url + "/health").status_code == 200   # probes are not capped
    finally:
        release.set()
        for t in holders:
            t.join()

    def admitted():
        return httpx.post(guarded_server.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1},
                          headers=headers).status_code == 200
    assert wait_until(admitted, timeout=10)
