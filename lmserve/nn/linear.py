"""Linear layers that know how they are split across tensor-parallel ranks and how they are packed.

q/k/v and gate/up are packed into one matmul each. Checkpoints store them apart, so a layer receives
named shards (`load_shard`), keeps this rank's rows or columns of each, and packs them once all are
in. A shard is a float tensor or a low-bit `QuantWeight` (kept low-bit; see kernels/quant_weight)
or a W8A8 `Int8Weight` (kernels/int8_linear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmserve.kernels.dispatch import quant_linear
from lmserve.kernels.int8_linear import Int8Weight, int8_linear
from lmserve.nn.parallel import ParallelContext


def _is_quant(w) -> bool:
    return not isinstance(w, torch.Tensor)


def _rows(w, start: int, end: int):
    return w.rows(start, end) if _is_quant(w) else w[start:end]


def _owned(w):
    """A copy of a TP slice, so the full checkpoint tensor it was cut from can be freed at once."""
    return w.clone() if _is_quant(w) else w.clone(memory_format=torch.contiguous_format)


def _cat_rows(parts: list):
    if _is_quant(parts[0]):
        return type(parts[0]).cat_rows(parts)
    return torch.cat(parts, dim=0)


class LinearBase(nn.Module):
    """y = x W^T + b, with W held as this rank's [out_local, in_local] slice."""

    cpu_gemm_dtype = "float32"     # set by the model runner from --cpu-gemm-dtype (low-bit weights)
    cpu_split_weight = None        # bf16x3: the weight's bf16 halves, kept by the model runner

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 parallel: ParallelContext, shard_ids: tuple = (None,)):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.dtype, self.parallel, self.shard_ids = dtype, parallel, shard_ids
        self.weight = None          # torch.Tensor or QuantWeight after loading
        self.bias = None
        self.has_bias = bias
        self._pending: dict = {}
        self._pending_bias: dict = {}

    # how this layer cuts a shard for its rank; overridden per kind
    def _slice_weight(self, shard_id, w):
        return w

    def _slice_bias(self, shard_id, b):
        return b

    def load_shard(self, shard_id, tensor, kind: str = "weight") -> None:
        if shard_id not in self.shard_ids:
            raise ValueError(f"{type(self).__name__}: unknown shard {shard_id!r}, expected one of {self.shard_ids}")
        split = self.parallel.size > 1
        if kind == "bias":
            b = self._slice_bias(shard_id, tensor)
            self._pending_bias[shard_id] = (_owned(b) if split else b).to(self.dtype)
        else:
            w = self._slice_weight(shard_id, tensor)
            w = _owned(w) if split else w
            self._pending[shard_id] = w if _is_quant(w) else w.to(self.dtype)
        self._maybe_pack()

    def _maybe_pack(self) -> None:
        if len(self._pending) == len(self.shard_ids):
            self.weight = _cat_rows([self._pending[s] for s in self.shard_ids])
            self._pending = {}
        if len(self._pending_bias) == len(self.shard_ids):
            self.bias = torch.cat([self._pending_bias[s] for s in self.shard_ids]).contiguous()
            self._pending_bias = {}

    def check_loaded(self, name: str) -> None:
        if self.weight is None:
            raise ValueError(f"checkpoint has no (complete) weight for {name}")
        if self.has_bias and self.bias is None:
            raise ValueError(f"checkpoint has no bias for {name}")
        if not self.has_bias and self.bias is not None:
            self.bias = None

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if _is_quant(self.weight):
            if isinstance(self.weight, Int8Weight):      # W8A8: activations go int8 too
                return int8_linear(x, self.weight, bias)
            return quant_linear(x, self.weight, bias, self.cpu_gemm_dtype, self.cpu_split_weight)
        return F.linear(x, self.weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output features split over ranks; the result stays split."""

    def __init__(self, in_features, out_features, bias, dtype, parallel, shard_sizes=None, shard_ids=(None,)):
        super().__init__(in_features, out_features, bias, dtype, parallel, shard_ids)
        self.shard_sizes = dict(zip(shard_ids, shard_sizes or [out_features]))

    def _slice_weight(self, shard_id, w):
        start, end = self.parallel.split(self.shard_sizes[shard_id], f"{type(self).__name__} rows")
        return _rows(w, start, end)

    def _slice_bias(self, shard_id, b):
        start, end = self.parallel.split(self.shard_sizes[shard_id], f"{type(self).__name__} rows")
        return b[start:end]


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several projections of the same input packed along the output (gate/up)."""

    def __init__(self, in_features, out_sizes: list[int], bias, dtype, parallel):
        super().__init__(in_features, sum(out_sizes), bias, dtype, parallel,
                         shard_sizes=out_sizes, shard_ids=tuple(range(len(out_sizes))))


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v packed. Query heads split over ranks; KV heads too, or replicated when fewer."""

    def __init__(self, hidden, head_dim, num_heads, num_kv_heads, bias, dtype, parallel):
        q, kv = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden, q + 2 * kv, bias, dtype, parallel, shard_sizes=[q, kv, kv],
                         shard_ids=("q", "k", "v"))
        self.head_dim, self.num_heads, self.num_kv_heads = head_dim, num_heads, num_kv_heads
        if num_heads % parallel.size:
            raise ValueError(f"--tp {parallel.size} does not divide the {num_heads} attention heads")
        if num_kv_heads % parallel.size and parallel.size % num_kv_heads:
            raise ValueError(f"--tp {parallel.size} and the {num_kv_heads} KV heads must divide one another")
        self.local_heads = num_heads // parallel.size
        self.local_kv_heads = max(1, num_kv_heads // parallel.size)

    def _head_range(self, shard_id):
        d, p = self.head_dim, self.parallel
        if shard_id == "q":
            h = self.local_heads
            return p.rank * h * d, (p.rank + 1) * h * d
        kv_rank = p.rank * self.num_kv_heads // p.size if self.num_kv_heads < p.size else p.rank
        h = self.local_kv_heads
        return kv_rank * h * d, (kv_rank + 1) * h * d

    def _slice_weight(self, shard_id, w):
        return _rows(w, *self._head_range(shard_id))

    def _slice_bias(self, shard_id, b):
        start, end = self._head_range(shard_id)
        return b[start:end]


class RowParallelLinear(LinearBase):
    """Input features split over ranks; partial results are summed across ranks."""

    def _slice_weight(self, shard_id, w):
        if self.parallel.size == 1:
            return w
        start, end = self.parallel.split(self.in_features, f"{type(self).__name__} columns")
        return w.cols(start, end) if _is_quant(w) else w[:, start:end]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The bias is added once, after the sum, not on every rank.
        y = self.parallel.all_reduce(self._matmul(x, None))
        return y + self.bias if self.bias is not None else y
