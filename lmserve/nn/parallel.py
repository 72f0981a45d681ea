"""Tensor-parallel placement of one worker: which rank it is and how its results are combined.

Layers receive this object at construction (no module-global state). With `size == 1` every
collective is a no-op, so the single-process path pays nothing for being parallel-ready.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(slots=True, frozen=True)
class ParallelContext:
    rank: int = 0
    size: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank must be in [0, {self.size}), got {self.rank}")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)

    def split(self, total: int, what: str) -> tuple[int, int]:
        """[start, end) of this rank's share of `total` items, which must divide evenly."""
        if total % self.size:
            raise ValueError(f"--tp {self.size} does not divide {what} ({total})")
        share = total // self.size
        return self.rank * share, (self.rank + 1) * share
