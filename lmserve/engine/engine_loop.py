"""Drives an Engine from one background thread, so many callers (threads or asyncio tasks) share it.

Callers submit requests into an inbox; the loop thread alone touches the engine, adds what arrived,
steps while there is work, and hands each output to the request's callback. A failure inside a step
is delivered to every request of that step as an error instead of killing the thread, and a
callback that fails (its consumer is gone, e.g. a closed asyncio loop) aborts only its own request.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

from lmserve.config import GenerationConfig
from lmserve.engine.engine import Engine, RequestOutput

logger = logging.getLogger(__name__)

# An idle tensor-parallel loop wakes this often to notice a dead worker (and stop, so that health
# checks see it) even when no request arrives.
_FATAL_POLL_S = 0.5

Callback = Callable[[RequestOutput | BaseException], None]


@dataclass(slots=True)
class _Submit:
    request_id: str
    prompt_ids: list[int]
    gen: GenerationConfig
    session_id: int | None
    callback: Callback


class EngineLoop:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._inbox: queue.Queue = queue.Queue()
        self._callbacks: dict[str, Callback] = {}
        self._stopping = threading.Event()
        self.failure: BaseException | None = None     # why the loop stopped by itself, if it did
        self._thread = threading.Thread(target=self._run, name="lmserve-engine", daemon=True)
        self._thread.start()

    # ---- callers ----------------------------------------------------------------------------------
    def submit(self, request_id: str, prompt_ids: list[int], gen: GenerationConfig,
               session_id: int | None, callback: Callback) -> None:
        self._check_alive()
        self._inbox.put(_Submit(request_id, prompt_ids, gen, session_id, callback))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def end_session(self, session_id: int) -> None:
        self._inbox.put(("end_session", session_id))

    def call(self, fn: Callable[[Engine], object]) -> object:
        """Run fn(engine) on the loop thread and return its result (for stats and admin)."""
        done, box = threading.Event(), {}

        def job(engine):
            try:
                box["value"] = fn(engine)
            except BaseException as e:  # handed back to the caller
                box["error"] = e
            done.set()
        self._check_alive()
        self._inbox.put(("call", job))
        while not done.wait(timeout=0.5):
            self._check_alive()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def close(self) -> None:
        self._stopping.set()
        self._inbox.put(("stop", None))
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _check_alive(self) -> None:
        if not self._thread.is_alive():
            if self.failure is not None:
                raise RuntimeError(f"the engine has stopped: {self.failure}")
            raise RuntimeError("the engine loop has stopped (closed, or crashed: see the log)")

    # ---- the loop thread ------------------------------------------------------------------------
    def _handle(self, item) -> None:
        engine = self.engine
        if isinstance(item, _Submit):
            try:
                engine.add_request(item.request_id, item.prompt_ids, item.gen, item.session_id)
                self._callbacks[item.request_id] = item.callback
            except Exception as e:  # bad request: tell its caller, keep serving the others
                self._deliver(item.request_id, item.callback, e)
            return
        kind, arg = item
        if kind == "abort":
            out = engine.abort(arg)
            cb = self._callbacks.pop(arg, None)
            if out is not None and cb is not None:
                self._deliver(arg, cb, out)
        elif kind == "end_session":
            engine.end_session(arg)
        elif kind == "call":
            arg(engine)

    def _deliver(self, request_id: str, cb: Callback, item) -> None:
        try:
            cb(item)
        except Exception as e:
            logger.warning("request %s: its consumer is gone (%s: %s); aborting it",
                           request_id, type(e).__name__, e)
            if self._callbacks.pop(request_id, None) is not None:
                try:
                    self.engine.abort(request_id)
                except Exception:
                    logger.exception("abort of %s failed", request_id)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:          # a bug in the loop itself: fail loudly, hang no one
            logger.exception("the engine loop crashed")
            self._fail_all(RuntimeError(f"the engine loop crashed: {type(e).__name__}: {e}"))
            raise

    def _serve(self) -> None:
        while not self._stopping.is_set():
            if self.engine.fatal_error is not None:      # e.g. a tensor-parallel worker died
                self.failure = self.engine.fatal_error
                logger.error("the engine has stopped: %s", self.failure)
                self._fail_all(self.failure)
                self._refuse_queued(self.failure)
                return
            try:
                idle_wait = _FATAL_POLL_S if self.engine.tp is not None else None
                item = self._inbox.get(timeout=idle_wait if not self.engine.has_work() else 0)
                if item == ("stop", None):
                    break
                self._handle(item)
                continue      # drain the inbox before stepping
            except queue.Empty:
                pass
            try:
                outputs = self.engine.step()
            except Exception as e:
                logger.exception("engine step failed; failing its requests")
                self._fail_all(e)
                continue
            for out in outputs:
                cb = self._callbacks.get(out.request_id)
                if cb is not None:
                    self._deliver(out.request_id, cb, out)
                if out.finished:
                    self._callbacks.pop(out.request_id, None)
        self._fail_all(RuntimeError("the engine was shut down"))

    def _refuse_queued(self, error: BaseException) -> None:
        """Answer requests still in the inbox, which no step will ever run."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Submit):
                self._deliver(item.request_id, item.callback, error)

    def _fail_all(self, error: BaseException) -> None:
        for request_id, cb in list(self._callbacks.items()):
            try:
                self.engine.abort(request_id)
            except Exception:
                logger.exception("abort of %s failed", request_id)
            try:
                cb(error)
            except Exception:
                logger.debug("consumer of %s is gone", request_id)
        self._callbacks.clear()
