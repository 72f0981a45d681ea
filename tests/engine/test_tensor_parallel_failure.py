"""A tensor-parallel worker killed mid-run fails the request with a clear error, stops the engine,
turns /health unhealthy and makes the server exit, instead of hanging; close() then returns at once.

(Its own module: a process holds one tensor-parallel group, and test_tensor_parallel.py's engine
lives until its module ends.)
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import httpx
import pytest

from lmserve import EngineConfig, GenerationConfig
from lmserve.api import Pipeline
from tests.engine.test_tensor_parallel import ENGINE, save_tiny


def _worker(rank: int) -> multiprocessing.Process:
    return next(p for p in multiprocessing.active_children() if p.name == f"lmserve-tp-rank{rank}")


def test_killed_worker_fails_the_request_and_stops_the_server(tmp_path, default_loaded):
    from lmserve.serve.app import create_app
    from lmserve.serve.server import BackgroundServer
    pipe = Pipeline(save_tiny(tmp_path, default_loaded.tokenizer, 2), EngineConfig(tp=2, **ENGINE))
    server = BackgroundServer(create_app(pipe)).start()
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        stream = pipe.stream_infer([list(range(1, 40))], GenerationConfig(max_new_tokens=80, ignore_eos=True))
        next(stream)
        os.kill(_worker(1).pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"worker rank 1 \(pid \d+\) was killed by SIGKILL"):
            for _ in stream:
                pass
        deadline = time.monotonic() + 10
        while pipe.loop.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pipe.loop.alive
        with pytest.raises(RuntimeError, match="engine has stopped: .*SIGKILL"):
            pipe("again", GenerationConfig(max_new_tokens=2))
        server.thread.join(10)          # the server notices the dead engine and shuts down
        assert not server.thread.is_alive() and "SIGKILL" in str(server.server.engine_failure)
    finally:
        server.stop()
        started = time.monotonic()
        pipe.close()
        assert time.monotonic() - started < 15 and not multiprocessing.active_children()
