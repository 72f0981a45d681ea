"""The chat page's tests reuse the serve suite's engine (tests/serve/conftest.py: the embedded
SmolLM2, a 4096-token session) and its servers, so they load no model of their own. Every session
a test opens is ended, so the engine is left as the other serve tests expect it."""
from __future__ import annotations

import pytest

pytest.importorskip("gradio", reason="the webui extra is not installed: pip install -e '.[webui]'")

from lmserve.webui.backend import ChatParams  # noqa: E402
from lmserve.webui.local_backend import LocalBackend  # noqa: E402
from tests.serve.webui.browser import chromium_or_skip, close_browser  # noqa: E402

# Greedy and short: answers are reproducible and a turn takes a second or two on a CPU.
PAGE_DEFAULTS = ChatParams(max_new_tokens=32, temperature=0.0)


class RecordingBackend(LocalBackend):
    """The local backend, noting which session each turn and each reset used, and how many turns
    ran at once at most: what the page did is then checked on the engine's side too."""

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.turn_sessions: list[int] = []
        self.ended_sessions: list[int] = []
        self.running_now = self.most_at_once = 0

    async def stream(self, session_id, messages, params):
        self.turn_sessions.append(session_id)
        self.running_now += 1
        self.most_at_once = max(self.most_at_once, self.running_now)
        try:
            async for event in super().stream(session_id, messages, params):
                yield event
        finally:
            self.running_now -= 1

    def end_session(self, session_id):
        self.ended_sessions.append(session_id)
        super().end_session(session_id)


def engine_sessions(pipeline) -> set[int]:
    return set(pipeline.loop.call(lambda engine: list(engine.scheduler.sessions)))


@pytest.fixture(scope="session")
def page_backend(pipeline):
    return RecordingBackend(pipeline)


@pytest.fixture(scope="session")
def page_url(page_backend):
    from lmserve.serve.server import free_port
    from lmserve.webui.page import build_page, launch
    page = build_page(page_backend, PAGE_DEFAULTS, max_tokens_limit=256)
    url = launch(page, "127.0.0.1", free_port(), block=False)
    yield url
    page.close()
    for session_id in set(page_backend.turn_sessions) - set(page_backend.ended_sessions):
        page_backend.end_session(session_id)


@pytest.fixture(scope="session")
def browser():
    driver = chromium_or_skip()
    yield driver
    close_browser(driver)
