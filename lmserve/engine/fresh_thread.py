"""Run set-up work (model loading, engine construction) on a short-lived thread.

Why: the engine steps on its own thread (engine_loop.py), and each thread that runs an OpenMP
region gets its own libgomp team, whose idle workers live as long as that thread. When libgomp
manages more threads than there are cores, it stops spin-waiting between parallel regions, so
every one of the ~150 small parallel ops of a decode step pays a futex wake-up. Measured on our
2-core box: a Q4 GEMV of 12288 x 576 took 190 us on the only team and 300-400 us when the main
thread also held one; single-stream decode fell from 62 to 38 tok/s. Loading on a thread that
exits frees its team, so the engine thread's team is the only one.
"""
from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def run_in_fresh_thread(fn: Callable[[], T], name: str = "lmserve-setup") -> T:
    """fn() on a new thread that ends with it; its result, or its exception re-raised here."""
    result: list = []
    error: list[BaseException] = []

    def target():
        try:
            result.append(fn())
        except BaseException as e:      # noqa: BLE001 - handed to the caller as is
            error.append(e)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
