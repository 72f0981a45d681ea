"""Token embedding and output head, split over tensor-parallel ranks along the vocabulary."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmserve.nn.parallel import ParallelContext


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype, parallel: ParallelContext):
        super().__init__()
        self.vocab_size, self.hidden, self.dtype, self.parallel = vocab_size, hidden, dtype, parallel
        self.per_rank = -(-vocab_size // parallel.size)
        self.start = parallel.rank * self.per_rank
        self.weight: torch.Tensor | None = None

    def load(self, full: torch.Tensor) -> None:
        if full.shape != (self.vocab_size, self.hidden):
            raise ValueError(f"embedding has shape {tuple(full.shape)}, expected {(self.vocab_size, self.hidden)}")
        self.weight = full[self.start:self.start + self.per_rank].to(self.dtype).contiguous()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0)
        return self.parallel.all_reduce(out)


class ParallelLMHead(nn.Module):
    """Logits over the whole vocabulary; each rank computes its slice, gathered at the end."""

    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype, parallel: ParallelContext,
                 tied_to: VocabParallelEmbedding | None = None):
        super().__init__()
        self.vocab_size, self.hidden, self.dtype, self.parallel = vocab_size, hidden, dtype, parallel
        self.tied_to = tied_to
        self.per_rank = -(-vocab_size // parallel.size)
        self.start = parallel.rank * self.per_rank
        self._weight: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor | None:
        return self.tied_to.weight if self.tied_to is not None else self._weight

    def load(self, full: torch.Tensor) -> None:
        if full.shape != (self.vocab_size, self.hidden):
            raise ValueError(f"lm_head has shape {tuple(full.shape)}, expected {(self.vocab_size, self.hidden)}")
        self._weight = full[self.start:self.start + self.per_rank].to(self.dtype).contiguous()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight).float()
        if self.parallel.size > 1:
            logits = self.parallel.all_gather_last_dim(logits)
        return logits[:, :self.vocab_size]
