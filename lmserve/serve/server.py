"""Running the app under uvicorn: in the foreground (the CLI) or on a background thread (tests,
benchmarks, embedding).

SIGTERM (and Ctrl-C) drain: uvicorn stops accepting connections, lets in-flight requests finish for
up to `drain_timeout` seconds, then cancels the rest, which aborts their engine requests and frees
their KV blocks; the app's shutdown then stops the engine and the process exits with status 0.
"""
from __future__ import annotations

import logging
import signal
import socket
import threading
import time

import uvicorn

logger = logging.getLogger(__name__)


def _uvicorn_config(app, host: str, port: int, drain_timeout: float, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), lifespan="on",
                          timeout_graceful_shutdown=drain_timeout, access_log=log_level.upper() == "DEBUG")


def serve_forever(app, host: str = "0.0.0.0", port: int = 23333, drain_timeout: float = 30.0,
                  log_level: str = "info") -> None:
    server = uvicorn.Server(_uvicorn_config(app, host, port, drain_timeout, log_level))
    # uvicorn re-raises the signal it drained on once it is done, under the handler it found; a
    # no-op one makes a drained shutdown end with status 0 instead of "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: None)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"lmserve api_server on http://{shown}:{port} (OpenAI API under /v1, docs at /docs)", flush=True)
    server.run()
    if not server.started:
        raise SystemExit(f"could not start the server on {host}:{port} (is the port in use?)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """Serves an app from a thread on 127.0.0.1 (a free port unless given); `stop()` drains it."""

    def __init__(self, app, port: int | None = None, host: str = "127.0.0.1", drain_timeout: float = 10.0,
                 log_level: str = "warning"):
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(_uvicorn_config(app, self.host, self.port, drain_timeout, log_level))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
