"""The page's event handlers through Gradio's own client (no browser), on the api_server backend,
and the `serve gradio` flags."""
from __future__ import annotations

import argparse

import pytest

from lmserve.cli.serve import add_serve_parser
from lmserve.webui.backend import ChatParams
from lmserve.webui.http_backend import HTTPBackend
from tests.serve.webui.recording import engine_sessions

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmserve")
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


@pytest.fixture(scope="module")
def http_page(server):
    from gradio_client import Client
    from lmserve.serve.server import free_port
    from lmserve.webui.page import build_page, launch
    backend = HTTPBackend(server.url)
    backend.connect()
    page = build_page(backend, ChatParams(max_new_tokens=8, temperature=0.0), backend.max_model_len)
    url, _ = launch(page, "127.0.0.1", free_port(), block=False)
    yield Client(url, verbose=False, download_files=False)
    page.close()


def test_a_turn_streams_through_the_page_and_reset_ends_the_server_session(http_page, pipeline):
    before = engine_sessions(pipeline)
    job = http_page.submit("Hello!", 8, 0.0, 0.8, 40, "Answer in one word.", api_name="/on_send")
    updates = list(job)
    chat, box, status = updates[-1]
    assert len(updates) >= 3 and box == "" and status.startswith(("finished", "finished at the token limit"))
    assert [m["role"] for m in chat] == ["user", "assistant"] and chat[1]["content"]
    new = engine_sessions(pipeline) - before
    assert len(new) == 1                       # the tab's session holds its K/V on the server's engine
    chat, box, status = http_page.predict(api_name="/on_reset")
    assert chat == [] and status == "new conversation" and not (engine_sessions(pipeline) & new)


def test_an_error_is_one_line_in_the_page(http_page):
    chat, box, status = list(http_page.submit("word " * 4200, 8, 0.0, 0.8, 40, "", api_name="/on_send"))[-1]
    assert chat == [] and box.startswith("word word")
    assert status.startswith("⚠️") and "400" in status and "session" in status and "Traceback" not in status


def test_gradio_flags():
    args = parse("gradio", "http://127.0.0.1:23333", "--api-key", "K", "--server_port", "7000", "--share",
                 "--top-k", "5")
    assert (args.model_path, args.api_key, args.server_port, args.share, args.top_k, args.server_name) == \
           ("http://127.0.0.1:23333", "K", 7000, True, 5, "0.0.0.0")
    local = parse("gradio", "--session-len", "512")
    assert local.model_path is None and local.server_port == 6006 and not local.share and local.session_len == 512
    with pytest.raises(SystemExit, match=r"--server-port must be in \[1, 65535\], got 70000"):
        local.server_port = 70000
        local.func(local)
    with pytest.raises(SystemExit, match="cannot reach http://127.0.0.1:9"):
        url = parse("gradio", "http://127.0.0.1:9")
        url.func(url)
