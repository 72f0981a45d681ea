"""One tab's conversation and one turn of it, independent of Gradio (so it is tested without a browser).

The history here is the conversation the model sees next turn; the page shows the same messages.
It is updated as the answer streams, so a turn cut short (Stop, a closed tab) keeps what was shown,
and a turn that produced no answer at all is taken out again rather than left half-asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from lmserve.webui.backend import BackendError, ChatBackend, ChatParams, TurnDelta, TurnEnd, conversation

_ENDINGS = {"stop": "finished", "length": "finished at the token limit (max new tokens or the session length)",
            "abort": "stopped"}


@dataclass(slots=True)
class TabState:
    """What one browser tab owns: its engine session and its conversation so far."""
    session_id: int
    history: list[dict] = field(default_factory=list)
    answering: bool = False          # a turn runs: a second one (Enter pressed twice) is refused


@dataclass(slots=True)
class TurnView:
    """What the page shows after each step of a turn."""
    messages: list[dict]
    status: str
    done: bool = False


def snapshot(tab: TabState) -> list[dict]:
    """The messages as they are now (the answer being written keeps changing in place)."""
    return [dict(m) for m in tab.history]


def ending(reason: str | None, tokens: int | None) -> str:
    words = _ENDINGS.get(reason or "", f"ended ({reason})")
    return f"{words}, {tokens} tokens" if tokens is not None else words


async def run_turn(backend: ChatBackend, tab: TabState, text: str, params: ChatParams) -> AsyncIterator[TurnView]:
    """Ask `text` in the tab's conversation; yields the growing conversation. A BackendError
    propagates with the turn taken out of the history."""
    if tab.answering:
        raise BackendError("this conversation is still answering; press Stop first")
    messages = conversation(tab.history, text, params.system_prompt)
    question = {"role": "user", "content": text}
    answer = {"role": "assistant", "content": ""}
    tab.history += [question, answer]
    tab.answering = True
    try:
        yield TurnView(snapshot(tab), "answering ...")
        async for event in backend.stream(tab.session_id, messages, params):
            if isinstance(event, TurnDelta):
                answer["content"] += event.text
                yield TurnView(snapshot(tab), "answering ...")
            elif isinstance(event, TurnEnd):
                yield TurnView(snapshot(tab), ending(event.finish_reason, event.generated_tokens), done=True)
    finally:
        tab.answering = False
        if not answer["content"] and tab.history and tab.history[-1] is answer:
            del tab.history[-2:]


def reset(backend: ChatBackend, tab: TabState) -> TabState:
    """End the tab's session (freeing its K/V) and start an empty one under a fresh id."""
    try:
        backend.end_session(tab.session_id)
    finally:
        tab.session_id, tab.history = backend.new_session_id(), []
    return tab
