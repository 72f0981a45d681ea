"""The load generator shared by the in-process and HTTP benchmarks: requests are started either all at
once or at Poisson-distributed times (`request_rate` per second), with at most `max_concurrency` in
flight; each one's latency is measured by the `send` coroutine the caller passes in.
"""
from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Awaitable, Callable, Sequence, TypeVar

from tqdm.auto import tqdm

from lmserve.bench.metrics import RequestRecord

R = TypeVar("R")


def check_load(request_rate: float, max_concurrency: int | None) -> None:
    if not request_rate > 0:
        raise ValueError(f"--request-rate must be > 0 (or inf for all at once), got {request_rate}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be >= 1, got {max_concurrency}")


def poisson_delays(n: int, request_rate: float, seed: int = 0) -> list[float]:
    """Gaps before each of n requests: exponential with mean 1/rate (a Poisson process); none at inf."""
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(seed)
    return [rng.expovariate(request_rate) for _ in range(n)]


async def run_load(requests: Sequence[R], send: Callable[[R], Awaitable[RequestRecord]],
                   request_rate: float = math.inf, max_concurrency: int | None = None, seed: int = 0,
                   desc: str = "requests", progress: bool = True) -> tuple[list[RequestRecord], float]:
    """Run every request through `send`; returns the records in request order and the wall time."""
    check_load(request_rate, max_concurrency)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not progress, leave=False)

    async def one(request: R) -> RequestRecord:
        if limit is None:
            record = await send(request)
        else:
            async with limit:
                record = await send(request)
        bar.update(1)
        return record

    start = time.perf_counter()
    tasks = []
    for request, delay in zip(requests, poisson_delays(len(requests), request_rate, seed)):
        if delay:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request)))
    records = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    bar.close()
    return list(records), duration
