"""The worker processes one node starts for its ranks, and a watchdog that notices when one dies.

Spawned, not forked: a fork would copy the parent's threads' locks and, on CUDA, an initialized
context. Workers are daemonic, so they end with the process that started them, and they also watch
their parent's pid, since a parent killed by SIGKILL runs no clean-up at all.
"""
from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
import threading
from typing import Callable

import torch.multiprocessing as mp

from lmserve.engine.tp.rendezvous import Topology
from lmserve.engine.tp.worker import spawned_worker

logger = logging.getLogger(__name__)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class LocalWorkers:
    def __init__(self, topo: Topology, ranks: list[int], threads: int, log_level: int | str,
                 on_death: Callable[[str], None] | None = None):
        ctx = mp.get_context("spawn")
        level = logging.getLevelName(log_level) if isinstance(log_level, int) else log_level
        self.procs = {r: ctx.Process(target=spawned_worker, name=f"lmserve-tp-rank{r}", daemon=True,
                                     args=(r, topo, threads, os.getpid(), level)) for r in ranks}
        self.failure: str | None = None
        self._on_death = on_death
        self._stopping = threading.Event()
        for p in self.procs.values():
            p.start()
        self._watchdog = threading.Thread(target=self._watch, name="lmserve-tp-watchdog", daemon=True)
        self._watchdog.start()

    def exits(self) -> list[str]:
        """One line per worker that has ended, e.g. 'rank 1 (pid 42) was killed by SIGKILL'."""
        return [f"rank {r} (pid {p.pid}) {describe_exit(p.exitcode)}"
                for r, p in self.procs.items() if not p.is_alive()]

    def _watch(self) -> None:
        sentinels = {p.sentinel: r for r, p in self.procs.items()}
        while sentinels and not self._stopping.is_set():
            for s in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                rank = sentinels.pop(s)
                if self._stopping.is_set():
                    return
                p = self.procs[rank]
                p.join(2.0)     # the sentinel fires as the pipe closes, a moment before exit
                self.failure = (f"tensor-parallel worker rank {rank} (pid {p.pid}) {describe_exit(p.exitcode)}; "
                                f"the engine cannot continue without it")
                logger.error("%s", self.failure)
                if self._on_death is not None:
                    self._on_death(self.failure)
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for workers told to stop; terminate (then kill) the ones that do not."""
        self._stopping.set()
        for p in self.procs.values():
            p.join(timeout)
        for p in self.procs.values():
            if p.is_alive():
                logger.warning("tensor-parallel worker %s (pid %d) did not stop; terminating it", p.name, p.pid)
                p.terminate()
                p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join(5.0)
