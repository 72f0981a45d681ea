"""Every bad input is a 4xx in OpenAI's error shape, naming the problem, and disturbs no one else."""
from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from tests.serve.helpers import CACHE_TOKENS, SESSION_LEN

MSG = [{"role": "user", "content": "hi"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def _long_text(pipeline, tokens: int) -> str:
    # " a" is one token in SmolLM2's vocabulary; check rather than trust it
    text = " a" * tokens
    assert abs(len(pipeline.encode(text, do_preprocess=False)) - tokens) <= 2
    return text


CASES = [
    # (path, raw body or json, status, param, words the message must contain)
    (CHAT, b"{not json", 400, None, ["not valid JSON"]),
    (CHAT, b"", 400, None, ["JSON body"]),
    (CHAT, [1, 2], 400, None, ["valid dictionary"]),
    (CHAT, {"messages": []}, 400, "messages", ["messages", "at least 1"]),
    (CHAT, {}, 400, "messages", ["messages", "required"]),
    (CHAT, {"messages": "hi"}, 400, "messages", ["messages"]),
    (CHAT, {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages", ["role"]),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages", ["content"]),
    (CHAT, {"messages": MSG, "max_tokens": -1}, 400, "max_tokens", ["max_tokens", "greater than or equal to 1"]),
    (CHAT, {"messages": MSG, "max_tokens": 0}, 400, "max_tokens", ["max_tokens"]),
    (CHAT, {"messages": MSG, "max_tokens": 10 ** 9}, 400, "max_tokens", ["max_tokens", "too large", "--session-len"]),
    (CHAT, {"messages": MSG, "max_tokens": "many"}, 400, "max_tokens", ["max_tokens", "integer"]),
    (CHAT, {"messages": MSG, "max_completion_tokens": 10 ** 9}, 400, "max_completion_tokens", ["too large"]),
    (CHAT, {"messages": MSG, "top_p": 0}, 400, "top_p", ["top_p", "greater than 0"]),
    (CHAT, {"messages": MSG, "top_p": 1.5}, 400, "top_p", ["top_p", "less than or equal to 1"]),
    (CHAT, {"messages": MSG, "temperature": 3}, 400, "temperature", ["temperature"]),
    (CHAT, {"messages": MSG, "temperature": -0.1}, 400, "temperature", ["temperature"]),
    (CHAT, {"messages": MSG, "n": 0}, 400, "n", ["n"]),
    (CHAT, {"messages": MSG, "presence_penalty": 5}, 400, "presence_penalty", ["presence_penalty"]),
    (CHAT, {"messages": MSG, "stop": [""]}, 400, "stop", ["stop", "empty"]),
    (CHAT, {"messages": MSG, "stop": 3}, 400, "stop", ["stop"]),
    (CHAT, {"messages": MSG, "seed": -1}, 400, "seed", ["seed"]),
    (CHAT, {"messages": MSG, "top_logprobs": 2}, 400, "top_logprobs", ["logprobs=true"]),
    (CHAT, {"messages": MSG, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs", ["top_logprobs"]),
    (CHAT, {"messages": MSG, "max_tokens": 4, "min_new_tokens": 9}, 400, "min_new_tokens", ["min_new_tokens"]),
    (CHAT, {"messages": MSG, "stream": "yes"}, 400, "stream", ["stream"]),
    (CHAT, {"messages": MSG, "model": "gpt-4"}, 404, "model", ["gpt-4", "does not exist"]),
    (CHAT, {"messages": MSG, "n": 2, "session_id": 3}, 400, "n", ["session"]),
    (COMPLETIONS, {"prompt": ""}, 400, "prompt", ["empty"]),
    (COMPLETIONS, {"prompt": []}, 400, "prompt", ["prompt"]),
    (COMPLETIONS, {"prompt": [10 ** 7]}, 400, "prompt", ["token id 10000000", "vocabulary"]),
    (COMPLETIONS, {"prompt": [-1, 5]}, 400, "prompt", ["token id -1"]),
    (COMPLETIONS, {"prompt": "x", "suffix": "y"}, 400, "suffix", ["suffix"]),
    (COMPLETIONS, {"prompt": "x", "best_of": 3}, 400, "best_of", ["best_of"]),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 10 ** 12}, 400, "max_tokens", ["too large"]),
    ("/v1/chat/interactive", {"prompt": "", "interactive_mode": True}, 400, "prompt", ["empty"]),
    ("/v1/chat/interactive", {"cancel": True}, 400, "session_id", ["session_id"]),
    (CHAT, {"messages": [{"role": "user", "content": "a\ud800b"}]}, 400, "messages", ["surrogate"]),
    (CHAT, {"messages": MSG, "stop": ["\udfff"]}, 400, "stop", ["surrogate"]),
    (COMPLETIONS, {"prompt": ["ok", "a\ud800"]}, 400, "prompt", ["surrogate"]),
    ("/tokenize", {"prompt": "\ud800"}, 400, "prompt", ["surrogate"]),
    ("/v1/chat/interactive", {"prompt": "\udc00"}, 400, "prompt", ["surrogate"]),
    ("/tokenize", {}, 400, "prompt", ["exactly one"]),
    ("/v1/nowhere", {}, 404, None, ["no route"]),
]


@pytest.mark.parametrize("path,body,status,param,words", CASES,
                         ids=[f"{i}-{c[0].rsplit('/', 1)[-1]}" for i, c in enumerate(CASES)])
def test_bad_request_gets_openai_error(server, path, body, status, param, words):
    # json.dumps escapes to ASCII, so lone surrogates travel as JSON allows ("\ud800")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert error["param"] == param
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_session_or_cache(server, pipeline, stream):
    assert CACHE_TOKENS < SESSION_LEN
    over_session = _long_text(pipeline, SESSION_LEN + 50)
    over_cache = _long_text(pipeline, (CACHE_TOKENS + SESSION_LEN) // 2)
    for text, words in ((over_session, ["--session-len", str(SESSION_LEN)]),
                        (over_cache, ["KV cache", str(CACHE_TOKENS)])):
        r = httpx.post(server.url + COMPLETIONS, json={"prompt": text, "max_tokens": 1, "stream": stream},
                       timeout=60)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        for word in words:
            assert word in error["message"]


def test_sdk_raises_with_the_message(client, model_name):
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model=model_name, messages=MSG, top_p=2)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=MSG)


def test_bad_requests_do_not_disturb_a_running_one(client, server, model_name):
    kwargs = dict(model=model_name, messages=[{"role": "user", "content": "Count from one to twenty."}],
                  max_tokens=24, temperature=0)
    alone = client.chat.completions.create(**kwargs).choices[0].message.content
    pieces, done = [], threading.Event()

    def stream():
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
        done.set()
    worker = threading.Thread(target=stream)
    worker.start()
    bad = [{"prompt": [10 ** 7]}, {"prompt": [0] * (SESSION_LEN + 1)}, {"prompt": "x", "top_p": 0},
           {"prompt": "x", "max_tokens": -5}]
    while not done.is_set():
        for body in bad:
            assert httpx.post(server.url + COMPLETIONS, json=body).status_code == 400
    worker.join()
    assert "".join(pieces) == alone
