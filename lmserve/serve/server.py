"""Running the app under uvicorn: in the foreground (the CLI) or on a background thread (tests,
benchmarks, embedding).

SIGTERM (and Ctrl-C) drain: uvicorn stops accepting connections and lets in-flight requests finish
for up to `drain_timeout` seconds; then the rest are aborted through the engine, so each ends
properly (finish_reason "abort", and a stream's `data: [DONE]`) and frees its KV blocks. The app's
shutdown then stops the engine and the process exits with status 0.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time

import uvicorn

logger = logging.getLogger(__name__)


_ABORT_GRACE_S = 10.0     # after aborting, time for the last chunks to go out before uvicorn cuts


class DrainingServer(uvicorn.Server):
    """uvicorn's graceful shutdown, with an engine-side abort at the drain timeout.

    Left to itself uvicorn would cancel the request tasks at its timeout, cutting streams mid-chunk.
    """

    def __init__(self, app, host: str, port: int, drain_timeout: float, log_level: str):
        super().__init__(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), lifespan="on",
                                        timeout_graceful_shutdown=drain_timeout + _ABORT_GRACE_S,
                                        access_log=log_level.upper() == "DEBUG"))
        self.app, self.drain_timeout = app, drain_timeout
        self.engine_failure: BaseException | None = None

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's once-per-0.1 s check; also stop serving when the engine has died (e.g. a
        tensor-parallel worker was killed): /health answered 503 meanwhile, and the process exits
        with the reason, so a supervisor restarts it instead of keeping a server that cannot answer."""
        if await super().on_tick(counter):
            return True
        ctx = getattr(getattr(self.app, "state", None), "ctx", None)
        loop = getattr(getattr(ctx, "pipeline", None), "loop", None)
        if counter % 5 == 0 and loop is not None and not loop.alive and loop.failure is not None:
            self.engine_failure = loop.failure
            logger.error("the engine has stopped (%s); shutting the server down", loop.failure)
            self.should_exit = True
            return True
        return False

    async def shutdown(self, sockets=None) -> None:
        ctx = getattr(getattr(self.app, "state", None), "ctx", None)
        aborter = asyncio.create_task(self._abort_after_timeout(ctx)) if ctx is not None else None
        try:
            await super().shutdown(sockets)
        finally:
            if aborter is not None:
                aborter.cancel()

    async def _abort_after_timeout(self, ctx) -> None:
        if ctx.active:
            logger.warning("draining %d in-flight request(s) for up to %.0f s", len(ctx.active), self.drain_timeout)
        await asyncio.sleep(self.drain_timeout)
        aborted = ctx.abort_all()
        if aborted:
            logger.warning("drain timeout: aborted %d request(s) still running", aborted)


def serve_forever(app, host: str = "0.0.0.0", port: int = 23333, drain_timeout: float = 30.0,
                  log_level: str = "info") -> None:
    server = DrainingServer(app, host, port, drain_timeout, log_level)
    # uvicorn re-raises the signal it drained on once it is done, under the handler it found; a
    # no-op one makes a drained shutdown end with status 0 instead of "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: None)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"lmserve api_server on http://{shown}:{port} (OpenAI API under /v1, docs at /docs)", flush=True)
    server.run()
    if server.engine_failure is not None:
        raise SystemExit(f"lmserve api_server: the engine has stopped: {server.engine_failure}")
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
        self.server = DrainingServer(app, self.host, self.port, drain_timeout, log_level)
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
