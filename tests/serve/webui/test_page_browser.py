"""The chat page driven in headless Chromium: a streamed answer, Stop, Reset, an error shown in the
page, and two tabs chatting at once without mixing their conversations."""
from __future__ import annotations

import pytest

from tests.serve.webui.browser import ChatPage, wait_for
from tests.serve.webui.recording import engine_sessions

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio")


def test_streamed_answer_stop_error_and_reset(browser, page_url, page_backend, pipeline):
    page = ChatPage.open(browser, page_url)
    page.record_answer_lengths()
    page.ask("Count from one to twenty in words.")
    wait_for(lambda: page.status().startswith("finished"), what="the answer to finish")
    lengths = [n for n in page.answer_lengths() if n > 0]
    final = page.messages()
    assert [role for role, _ in final] == ["user", "bot"] and final[0][1] == "Count from one to twenty in words."
    assert final[1][1] and len(final[1][1]) == lengths[-1]
    # Streamed: the answer was shown at several lengths on its way, each a step up from the last.
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths), lengths
    session_id = page_backend.turn_sessions[-1]
    assert session_id in engine_sessions(pipeline)           # its K/V is kept for the next turn

    # Stop, with the settings changed: the turn ends early and keeps what was shown.
    page.set_setting("lmserve-max-new-tokens", 200)
    page.set_setting("lmserve-system", "You are a storyteller.")
    page.ask("Write a long story about a dragon who learns to cook.")
    wait_for(lambda: len(page.messages()) == 4 and page.messages()[3][1], what="the second answer to start")
    page.click("lmserve-stop")
    wait_for(lambda: page.status().startswith("stopped"), what="the turn to stop")
    params = page_backend.turn_params[-1]
    assert (params.max_new_tokens, params.system_prompt) == (200, "You are a storyteller.")
    assert page_backend.turn_sessions[-1] == session_id and page.messages()[3][1]
    assert int(page.status().split(",")[1].split()[0]) < 200          # "stopped, N tokens"
    wait_for(lambda: pipeline.loop.call(lambda engine: not engine.has_work()), what="the engine to abort it")

    # A prompt longer than the session: the page says so, with the limit, and keeps the conversation.
    page.paste_and_send("word " * 4200)
    wait_for(lambda: "--session-len" in page.status(), what="the error in the status line")
    text = page.page_text()
    assert "4096" in page.status() and "Traceback" not in text and "File \"" not in text
    assert len(page.messages()) == 4 and page.input_text().startswith("word word")   # the text is not lost

    # Reset: the chat box empties and the engine session behind it is ended.
    page.click("lmserve-reset")
    wait_for(lambda: page.status() == "new conversation" and not page.messages(), what="the reset")
    assert page_backend.ended_sessions[-1] == session_id
    wait_for(lambda: session_id not in engine_sessions(pipeline), timeout=10, what="the engine to end the session")
    assert page.input_text() == ""


def test_two_tabs_chat_at_once_with_separate_histories(browser, page_url, page_backend):
    first = ChatPage.open(browser, page_url, new_tab=True)
    second = ChatPage.open(browser, page_url, new_tab=True)
    already = len(page_backend.turn_sessions)
    page_backend.most_at_once = 0
    first.ask("Name three rivers in Europe.")
    second.ask("Name three mountains in Asia.")
    for tab in (first, second):
        wait_for(lambda: tab.status().startswith("finished"), what="both answers to finish")
    first_chat, second_chat = first.messages(), second.messages()
    assert [m for m in first_chat if m[0] == "user"] == [("user", "Name three rivers in Europe.")]
    assert [m for m in second_chat if m[0] == "user"] == [("user", "Name three mountains in Asia.")]
    assert len(first_chat) == len(second_chat) == 2 and first_chat[1][1] and second_chat[1][1]
    ids = page_backend.turn_sessions[already:]
    assert len(ids) == 2 and ids[0] != ids[1]                # a session per tab
    assert page_backend.most_at_once == 2                    # the two turns ran at the same time
    # Each tab goes on with its own history: the next turn is sent under that tab's session.
    first.ask("Which one is the longest?")
    wait_for(lambda: len(first.messages()) == 4 and first.status().startswith("finished"), what="a second turn")
    assert page_backend.turn_sessions[-1] == ids[0] and len(second.messages()) == 2
    for tab in (first, second):
        tab.click("lmserve-reset")
        wait_for(lambda: tab.status() == "new conversation", what="the reset")
    assert set(ids) <= set(page_backend.ended_sessions)
