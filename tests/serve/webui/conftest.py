"""The chat page's tests reuse the serve suite's engine (tests/serve/conftest.py: the embedded
SmolLM2, a 4096-token session) and its servers, so they load no model of their own. Every session
a test opens is ended, so the engine is left as the other serve tests expect it."""
from __future__ import annotations

import pytest

pytest.importorskip("gradio", reason="the webui extra is not installed: pip install -e '.[webui]'")

from lmserve.webui.backend import ChatParams  # noqa: E402
from tests.serve.webui.browser import chromium_or_skip, close_browser  # noqa: E402
from tests.serve.webui.recording import RecordingBackend  # noqa: E402

# Greedy and short: answers are reproducible and a turn takes a second or two on a CPU.
PAGE_DEFAULTS = ChatParams(max_new_tokens=32, temperature=0.0)


@pytest.fixture(scope="session")
def page_backend(pipeline):
    return RecordingBackend(pipeline)


@pytest.fixture(scope="session")
def page_url(page_backend):
    from lmserve.serve.server import free_port
    from lmserve.webui.page import build_page, launch
    page = build_page(page_backend, PAGE_DEFAULTS, max_tokens_limit=256)
    url, _ = launch(page, "127.0.0.1", free_port(), block=False)
    yield url
    page.close()
    for session_id in set(page_backend.turn_sessions) - set(page_backend.ended_sessions):
        page_backend.end_session(session_id)


@pytest.fixture(scope="session")
def browser():
    driver = chromium_or_skip()
    yield driver
    close_browser(driver)
