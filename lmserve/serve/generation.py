"""Runs one HTTP request's generations (n choices, or several prompts) on the engine.

Each choice is a `Pipeline.generate` stream pumped by its own task into one queue, so the choices
progress together and come out in arrival order. Closing a `Generation` cancels those tasks, which
aborts their engine requests and frees their KV blocks at once; every path out of a handler (done,
error, client gone, shutdown) goes through `aclose`.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from starlette.requests import Request

from lmserve.config import GenerationConfig
from lmserve.engine.engine import RequestOutput
from lmserve.serve.errors import APIError, bad_request

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    index: int                  # the choice's index in the answer
    prompt_ids: list[int]
    gen: GenerationConfig
    session_id: int | None = None
    request_id: str | None = None
    counts_prompt: bool = True  # n copies of one prompt count its tokens once


def as_api_error(exc: BaseException) -> APIError:
    """Errors the engine raises for a request: its fault (4xx) or ours."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValueError):     # RequestTooLongError, a busy session, a bad setting
        return bad_request(str(exc), code="context_length_exceeded" if "tokens" in str(exc) else None)
    if isinstance(exc, RuntimeError) and "shut down" in str(exc):
        return APIError(503, "the server is shutting down; retry on another replica", code="shutting_down")
    logger.error("generation failed: %r", exc, exc_info=exc)
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", type="internal_error")


class Generation:
    def __init__(self, ctx, jobs: list[Job], arrival: float):
        self.pipeline, self.metrics, self.jobs, self.arrival = ctx.pipeline, ctx.metrics, jobs, arrival
        self._active = ctx.active          # the server's in-flight set, for draining at shutdown
        for job in jobs:
            job.request_id = job.request_id or uuid.uuid4().hex
        self.last: dict[int, RequestOutput] = {}        # latest output per choice index
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._buffer: list[tuple[int, RequestOutput]] = []
        self._unfinished = {job.index for job in jobs}
        self._first_token_seen = False
        self._closed = False

    # ---- running ------------------------------------------------------------------------------
    async def _pump(self, job: Job) -> None:
        try:
            async for out in self.pipeline.generate(job.prompt_ids, job.gen, job.session_id,
                                                    request_id=job.request_id):
                self._queue.put_nowait((job.index, out))
        except asyncio.CancelledError:
            raise
        except BaseException as e:   # handed to the consumer, which owns the answer's status
            self._queue.put_nowait((job.index, e))

    async def start(self) -> None:
        """Submit every choice and wait for each one's first output.

        Waiting lets an error the engine finds at admission still be a 400 before a stream's
        status line goes out. Raises APIError (after aborting the other choices) on one.
        """
        if not self.pipeline.loop.alive:    # nobody would ever answer: fail now, not hang
            raise APIError(503, "the engine has stopped; the server must be restarted", code="engine_dead")
        self._active.add(self)
        self._tasks = [asyncio.create_task(self._pump(job)) for job in self.jobs]
        started: set[int] = set()
        try:
            while len(started) < len(self.jobs):
                index, item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise as_api_error(item)
                started.add(index)
                self._buffer.append((index, item))
        except BaseException:
            await self.aclose()
            raise

    async def outputs(self):
        """Yields (choice index, RequestOutput) until every choice has finished."""
        while self._buffer or self._unfinished:
            if self._buffer:
                index, out = self._buffer.pop(0)
            else:
                index, out = await self._queue.get()
                if isinstance(out, BaseException):
                    raise as_api_error(out)
            self._account(index, out)
            yield index, out

    def _account(self, index: int, out: RequestOutput) -> None:
        self.last[index] = out
        now = time.monotonic()
        if not self._first_token_seen and out.token_ids:
            self._first_token_seen = True
            self.metrics.time_to_first_token.observe(now - self.arrival)
        if out.finished:
            self._unfinished.discard(index)
            self._count_finished(index, out.finish_reason)
            if not self._unfinished:
                self.metrics.e2e_latency.observe(now - self.arrival)

    def _count_finished(self, index: int, reason: str | None) -> None:
        job = next(j for j in self.jobs if j.index == index)
        out = self.last.get(index)
        if job.counts_prompt:
            self.metrics.prompt_tokens.inc(len(job.prompt_ids))
        self.metrics.generation_tokens.inc(len(out.token_ids) if out else 0)
        self.metrics.finished(reason)

    def abort(self) -> None:
        """End every unfinished choice through the engine: each still gets its last output, with
        finish_reason "abort", so a stream ends properly rather than being cut off."""
        for job in self.jobs:
            if job.index in self._unfinished:
                self.pipeline.loop.abort(job.request_id)

    async def collect(self) -> dict[int, RequestOutput]:
        async for _ in self.outputs():
            pass
        return self.last

    # ---- ending -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Abort whatever has not finished (cancelling a pump aborts its engine request)."""
        if self._closed:
            return
        self._closed = True
        self._active.discard(self)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._unfinished:
            logger.info("aborted %d unfinished choice(s) of %s (client gone, error or shutdown)",
                        len(self._unfinished), self.jobs[0].request_id)
        for index in sorted(self._unfinished):
            self._count_finished(index, "abort")
        self._unfinished.clear()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    """The client closed the connection before its (non-streamed) answer was ready."""


async def unless_disconnected(request: Request, coro):
    """Await coro, but cancel it as soon as the client hangs up (so its KV blocks are freed)."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        raise
    finally:
        watch.cancel()
    if work in done:
        return work.result()
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    raise ClientGone()
