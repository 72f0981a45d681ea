"""Peak memory over a stretch of a benchmark: GPU memory when the engine runs on CUDA, else the
process's resident set size (RSS).

The kernel's own RSS high-water mark (ru_maxrss) only ever grows over the life of a process, so it
cannot give the peak of one benchmark combination after another; a sampling thread can.
"""
from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.bytes` and `peak.kind` ("gpu" or "rss")."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.01):
        self.kind = "gpu" if str(device).startswith("cuda") and torch.cuda.is_available() else "rss"
        self.interval_s = interval_s
        self.bytes = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> int:
        return self._process.memory_info().rss

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.bytes = max(self.bytes, self._sample())

    def __enter__(self) -> "PeakMemory":
        if self.kind == "gpu":
            # the caching allocator's peak covers every tensor the engine made, KV cache included
            torch.cuda.reset_peak_memory_stats()
        else:
            self.bytes = self._sample()
            self._thread = threading.Thread(target=self._watch, name="lmserve-peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "gpu":
            self.bytes = torch.cuda.max_memory_reserved()
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, self._sample())

    @property
    def gib(self) -> float:
        return self.bytes / 2**30
