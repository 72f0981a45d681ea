"""The page's two backends and its turn logic, without a browser: the local engine and an api_server
client must stream, keep a session's K/V between turns, stop, end sessions and report errors alike."""
from __future__ import annotations

import asyncio

import pytest

from lmserve.config import GenerationConfig
from lmserve.webui.backend import BackendError, ChatParams, TurnDelta
from lmserve.webui.chat_turn import TabState, reset, run_turn
from lmserve.webui.http_backend import HTTPBackend
from lmserve.webui.local_backend import LocalBackend
from tests.serve.helpers import API_KEY, wait_until
from tests.serve.webui.recording import engine_sessions

GREEDY = ChatParams(max_new_tokens=12, temperature=0.0)


async def ask(backend, tab: TabState, text: str, params: ChatParams = GREEDY) -> list:
    return [view async for view in run_turn(backend, tab, text, params)]


@pytest.fixture(params=["local", "http"])
def backend(request, pipeline):
    if request.param == "local":
        return LocalBackend(pipeline)
    server = request.getfixturevalue("server")
    http = HTTPBackend(server.url)
    http.connect()
    return http


def test_turns_stream_keep_the_session_and_match_a_stateless_answer(backend, pipeline):
    tab = TabState(backend.new_session_id())
    first = asyncio.run(ask(backend, tab, "My name is Ada."))
    answers = [v.messages[-1]["content"] for v in first]
    assert first[-1].done and first[-1].status.startswith(("finished", "finished at the token limit"))
    assert answers[0] == "" and len(set(answers)) > 2 and answers == sorted(answers, key=len)   # it grew
    assert tab.session_id in engine_sessions(pipeline)            # the K/V stays for the next turn
    second = asyncio.run(ask(backend, tab, "What is my name?"))
    assert [m["role"] for m in tab.history] == ["user", "assistant"] * 2
    # The second turn reused the session's K/V yet says what a fresh, stateless request says.
    stateless = pipeline(tab.history[:3], GenerationConfig(max_new_tokens=12))
    assert second[-1].messages[-1]["content"] == stateless.text
    old_id = tab.session_id
    reset(backend, tab)
    assert tab.history == [] and tab.session_id != old_id
    assert wait_until(lambda: old_id not in engine_sessions(pipeline), timeout=10)     # its K/V is freed


def test_stop_aborts_the_running_turn_and_keeps_its_text(backend, pipeline):
    tab = TabState(backend.new_session_id())

    async def ask_then_stop():
        views = []
        async for view in run_turn(backend, tab, "Write a long story about a dragon.", ChatParams(max_new_tokens=400)):
            views.append(view)
            if view.messages[-1]["content"] and len(views) == 3:
                assert backend.stop(tab.session_id)
        return views
    views = asyncio.run(ask_then_stop())
    assert views[-1].done and views[-1].status.startswith("stopped")
    assert tab.history[-1]["content"] == views[-1].messages[-1]["content"] != ""
    assert not backend.stop(tab.session_id)                      # nothing runs any more
    # the engine stops too (over HTTP, once the server notices the closed stream)
    assert wait_until(lambda: pipeline.loop.call(lambda engine: not engine.has_work()), timeout=10)
    backend.end_session(tab.session_id)


def test_a_prompt_too_long_is_a_message_and_leaves_the_history(backend, pipeline):
    tab = TabState(backend.new_session_id())
    with pytest.raises(BackendError, match=r"--session-len.* 4096"):
        asyncio.run(ask(backend, tab, "word " * 4200))
    assert tab.history == []
    assert tab.session_id not in engine_sessions(pipeline)
    backend.end_session(tab.session_id)            # ending a session that never ran is harmless


def test_a_second_turn_while_one_runs_is_refused(backend):
    tab = TabState(backend.new_session_id())

    async def overlap():
        turn = backend.stream(tab.session_id, [{"role": "user", "content": "Tell me a story."}], GREEDY)
        first = await turn.__anext__()
        with pytest.raises(BackendError, match="still answering"):
            await backend.stream(tab.session_id, [{"role": "user", "content": "Hi"}], GREEDY).__anext__()
        await turn.aclose()
        return first
    assert isinstance(asyncio.run(overlap()), TurnDelta)
    backend.end_session(tab.session_id)


def test_http_backend_checks_the_key_and_the_model(guarded_server, server):
    with pytest.raises(BackendError, match="401"):
        HTTPBackend(guarded_server.url, api_key="sk-wrong").connect()
    keyed = HTTPBackend(guarded_server.url + "/v1", api_key=API_KEY)
    model = keyed.connect()
    assert keyed.root == guarded_server.url and keyed.max_model_len == 4096 and model in keyed.description
    with pytest.raises(BackendError, match="does not serve 'nope'"):
        HTTPBackend(server.url, model="nope").connect()
    with pytest.raises(BackendError, match="cannot reach"):
        HTTPBackend("http://127.0.0.1:9").connect()


def test_page_settings_are_checked():
    assert ChatParams.from_page(64.0, 0.5, 0.9, 40.0, None) == ChatParams(64, 0.5, 0.9, 40, "")
    with pytest.raises(BackendError, match=r"--top-p must be in \(0, 1\]"):
        ChatParams.from_page(64, 0.5, 0.0, 40, "")
    with pytest.raises(ValueError, match=r"--max-new-tokens must be >= 1"):
        ChatParams(max_new_tokens=0)


def test_a_tab_answers_one_turn_at_a_time(pipeline):
    backend, tab = LocalBackend(pipeline), None

    async def twice():
        first = run_turn(backend, tab, "Tell me a story.", GREEDY)
        await first.__anext__()
        with pytest.raises(BackendError, match="still answering"):
            await run_turn(backend, tab, "Hi", GREEDY).__anext__()
        assert [m["content"] for m in tab.history] == ["Tell me a story.", ""]   # the refused turn left no trace
        await first.aclose()                      # the tab went away mid-answer
    tab = TabState(backend.new_session_id())
    asyncio.run(twice())
    assert tab.history == [] and not tab.answering
    backend.end_session(tab.session_id)
