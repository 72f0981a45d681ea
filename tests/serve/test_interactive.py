"""/v1/chat/interactive: the server keeps the history, each call sends only the new turn."""
from __future__ import annotations

import json
import threading

import httpx

from tests.serve.helpers import metrics, wait_until
from lmserve.serve.app import create_app
from lmserve.serve.context import ServerConfig
from lmserve.serve.server import BackgroundServer

URL = "/v1/chat/interactive"


def turn(url: str, **body) -> dict:
    body.setdefault("temperature", 0)
    body.setdefault("request_output_len", 12)
    r = httpx.post(url + URL, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_history_is_kept_and_only_the_new_turn_is_sent(server, client, model_name):
    sid = 7001
    first = turn(server.url, prompt="My name is Ada.", session_id=sid, interactive_mode=True)
    assert first["session_id"] == sid and first["history_tokens"] == 0 and first["tokens"] > 0
    second = turn(server.url, prompt="What is my name?", session_id=sid, interactive_mode=True)
    assert second["history_tokens"] == first["input_tokens"] + first["tokens"]
    # The same conversation sent whole to the stateless endpoint gives the same answer.
    messages = [{"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": first["text"]},
                {"role": "user", "content": "What is my name?"}]
    stateless = client.chat.completions.create(model=model_name, messages=messages, max_tokens=12, temperature=0)
    assert second["text"] == stateless.choices[0].message.content
    ended = turn(server.url, prompt="", session_id=sid, interactive_mode=False)
    assert ended["text"] == "" and ended["history_tokens"] == second["history_tokens"] + second["input_tokens"] \
        + second["tokens"]
    fresh = turn(server.url, prompt="What is my name?", session_id=sid, interactive_mode=False)
    assert fresh["history_tokens"] == 0


def test_server_picks_an_id_and_streams_json_lines(server):
    first = turn(server.url, prompt="Hello!", interactive_mode=True)
    sid = first["session_id"]
    assert sid >= 0
    with httpx.stream("POST", server.url + URL, json={"prompt": "Say more.", "session_id": sid, "stream": True,
                                                      "interactive_mode": True, "temperature": 0,
                                                      "request_output_len": 8}, timeout=60) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["finish_reason"] in ("stop", "length") and lines[-1]["tokens"] > 0
    assert all(line["session_id"] == sid for line in lines)
    turn(server.url, prompt="", session_id=sid)


def test_busy_session_and_cancel(server):
    sid = 7002
    results = {}

    def long_turn():
        results["long"] = turn(server.url, prompt="Tell me a long story.", session_id=sid, interactive_mode=True,
                               request_output_len=2000, ignore_eos=True)
    worker = threading.Thread(target=long_turn)
    worker.start()
    assert wait_until(lambda: metrics(server.url)["lmserve:num_requests_running"] >= 1, timeout=30)
    r = httpx.post(server.url + URL, json={"prompt": "hi", "session_id": sid, "interactive_mode": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "session_busy"
    cancelled = turn(server.url, cancel=True, session_id=sid)
    assert cancelled["finish_reason"] == "abort"
    worker.join(30)
    assert results["long"]["finish_reason"] == "abort" and results["long"]["tokens"] < 2000
    # the partial answer is history now; the session goes on
    after = turn(server.url, prompt="Thanks.", session_id=sid, interactive_mode=True, request_output_len=2)
    assert after["history_tokens"] > 0
    turn(server.url, prompt="", session_id=sid)


def test_idle_sessions_expire(pipeline):
    app = create_app(pipeline, ServerConfig(session_ttl=0.3))
    sessions = app.state.ctx.sessions
    with BackgroundServer(app) as srv:
        first = turn(srv.url, prompt="Remember 42.", session_id=7003, interactive_mode=True, request_output_len=4)
        assert first["history_tokens"] == 0 and sessions.get(7003) is not None
        assert wait_until(lambda: sessions.get(7003) is None, timeout=5)
        again = turn(srv.url, prompt="Remember 42.", session_id=7003, interactive_mode=False, request_output_len=4)
        assert again["history_tokens"] == 0      # expired: a new session
