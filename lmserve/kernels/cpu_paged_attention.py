"""Paged decode attention on CPU without the gather copy: csrc/paged_attention_cpu.cpp.

paged_attention.paged_decode_attention_ref stays the definition. It copies every sequence's
blocks into a padded [B, KV, L, D] tensor before SDPA, which at batch 64 moves ~40 MB per
layer; the kernel reads each cached K/V row once, from the block table, with an online softmax
in fp32. It serves CPU tensors with fp32/fp16/bf16 caches and head_dim a multiple of 8; anything
else, or a machine where the extension cannot be built, gets the reference.
"""
from __future__ import annotations

import torch

from .cpu_extension import CPUExtension
from .paged_attention import paged_decode_attention_ref

_EXT = CPUExtension("lmserve_paged_attention", ("paged_attention_bind.cpp", "paged_attention_cpu.cpp"),
                    reference="torch reference paged_decode_attention_ref")
_CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_applies(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether these tensors are of a kind the CPU kernel serves (else: the reference)."""
    return (q.device.type == "cpu" and k_cache.device.type == "cpu" and q.dim() == 3
            and q.is_floating_point() and k_cache.dtype in _CACHE_DTYPES
            and q.shape[-1] % 8 == 0 and k_cache.dim() == 4 and k_cache.stride(-1) == 1
            and not q.requires_grad)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """q: [B, heads, D] -> [B, heads, D], as paged_decode_attention_ref computes it.

    Entries of block_tables past a sequence's context are never read (padding may be any id).
    """
    ext = _EXT.get() if kernel_applies(q, k_cache) else None
    if ext is None:
        return paged_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale)
    qf = q if q.dtype == torch.float32 and q.stride(-1) == 1 else q.float().contiguous()
    out = ext.paged_decode_attention(qf, k_cache, v_cache, block_tables.long().contiguous(),
                                     context_lens.long().contiguous(), float(scale))
    return out if q.dtype == torch.float32 else out.to(q.dtype)


def load_extension():
    """The compiled module, or None when this machine cannot build or run it (warned once)."""
    return _EXT.get()
