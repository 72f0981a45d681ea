"""Token embedding and output head, split over tensor-parallel ranks along the vocabulary.

Either may hold a low-bit QuantWeight (a GGUF's Q8_0 token table): lookups dequantize only the
rows asked for, and the head runs the low-bit matmul kernel, so no float copy is ever made.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmserve.nn.parallel import ParallelContext


def _is_quant(w) -> bool:
    return not isinstance(w, torch.Tensor)


def _vocab_slice(full, start: int, rows: int, dtype: torch.dtype, parallel: ParallelContext):
    """This rank's rows of a [vocab, hidden] table, float or low-bit. Under TP the rows are
    copied, so the full table each rank streams through is freed once it is sliced."""
    if _is_quant(full):
        part = full.rows(start, min(start + rows, full.out_features))
        return part.clone() if parallel.size > 1 else part
    part = full[start:start + rows].to(dtype)
    return part.clone(memory_format=torch.contiguous_format) if parallel.size > 1 else part.contiguous()


def _check_shape(what: str, full, expected: tuple[int, int]) -> None:
    if tuple(full.shape) != expected:
        raise ValueError(f"{what} has shape {tuple(full.shape)}, expected {expected}")


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype, parallel: ParallelContext):
        super().__init__()
        self.vocab_size, self.hidden, self.dtype, self.parallel = vocab_size, hidden, dtype, parallel
        self.per_rank = -(-vocab_size // parallel.size)
        self.start = parallel.rank * self.per_rank
        self.weight = None          # torch.Tensor or QuantWeight after loading

    def load(self, full) -> None:
        _check_shape("embedding", full, (self.vocab_size, self.hidden))
        self.weight = _vocab_slice(full, self.start, self.per_rank, self.dtype, self.parallel)

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if _is_quant(self.weight):
            return self.weight.take_rows(ids).to(self.dtype)
        return F.embedding(ids, self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.size == 1:
            return self._lookup(ids)
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = self._lookup(local.masked_fill(outside, 0))
        out = out.masked_fill(outside.unsqueeze(-1), 0)
        return self.parallel.all_reduce(out)


class ParallelLMHead(nn.Module):
    """Logits over the whole vocabulary; each rank computes its slice, gathered at the end."""

    cpu_gemm_dtype = "float32"     # as LinearBase's: set by the model runner from --cpu-gemm-dtype
    cpu_split_weight = None

    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype, parallel: ParallelContext,
                 tied_to: VocabParallelEmbedding | None = None):
        super().__init__()
        self.vocab_size, self.hidden, self.dtype, self.parallel = vocab_size, hidden, dtype, parallel
        self.tied_to = tied_to
        self.per_rank = -(-vocab_size // parallel.size)
        self.start = parallel.rank * self.per_rank
        self._weight = None

    @property
    def weight(self):
        return self.tied_to.weight if self.tied_to is not None else self._weight

    def load(self, full) -> None:
        _check_shape("lm_head", full, (self.vocab_size, self.hidden))
        self._weight = _vocab_slice(full, self.start, self.per_rank, self.dtype, self.parallel)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if _is_quant(self.weight):
            from lmserve.kernels.dispatch import quant_linear
            logits = quant_linear(hidden, self.weight, None, self.cpu_gemm_dtype,
                                  self.cpu_split_weight).float()
        else:
            logits = F.linear(hidden, self.weight).float()
        if self.parallel.size > 1:
            if logits.shape[-1] < self.per_rank:    # the last rank's share of an uneven vocabulary
                logits = F.pad(logits, (0, self.per_rank - logits.shape[-1]))
            logits = self.parallel.all_gather_last_dim(logits)
        return logits[:, :self.vocab_size]
