"""Attention over an int8/int4 paged KV cache (kv_quant.QuantKVCache): torch references.

They dequantize the blocks a call reads (un-rotated, in q's dtype) and run the float references of
paged_attention.py on them, so a quantized cache attends exactly like a float cache holding the
dequantized values. Correct but slow: every call converts all the blocks it reads.
"""
from __future__ import annotations

import torch

from .kv_quant import QuantKVCache
from .paged_attention import paged_decode_attention_ref, paged_prefill_attention_ref


def paged_decode_attention_quant_ref(q: torch.Tensor, cache: QuantKVCache, block_tables: torch.Tensor,
                                     context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [B, heads, D] -> [B, heads, D]; entries of block_tables past a context may be any id."""
    b, width = block_tables.shape
    ids = block_tables.reshape(-1).clamp(0, cache.num_blocks - 1)
    k, v = cache.dequantize_blocks(ids, q.dtype)
    tables = torch.arange(b * width, device=q.device).view(b, width)
    return paged_decode_attention_ref(q, k, v, tables, context_lens, scale)


def paged_prefill_attention_quant_ref(q: torch.Tensor, cache: QuantKVCache, block_table: torch.Tensor,
                                      context_len: int, scale: float) -> torch.Tensor:
    """The last q_len tokens of one sequence attend causally to its `context_len` cached tokens."""
    used = -(-context_len // cache.k.shape[1])
    k, v = cache.dequantize_blocks(block_table[:used], q.dtype)
    return paged_prefill_attention_ref(q, k, v, torch.arange(used, device=q.device), context_len, scale)
