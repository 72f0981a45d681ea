"""Paged attention layer: stores this step's K/V in the cache and attends over it.

The step's tokens come flattened ([T, ...]); the metadata says which belong to which sequence.
Decoding sequences (one token each) are attended together in one batched call; prompt chunks one
sequence at a time, each over its cached prefix. On CPU, decode attention runs the C++ kernel that
reads the paged cache in place (kernels/cpu_paged_attention.py); the torch references in
kernels/paged_attention.py define every op and serve wherever that kernel does not apply.

A layer's cache is either a (k_cache, v_cache) pair of float tensors or a kv_quant.QuantKVCache
(--quant-policy 8 / 4). With a quantized cache every read sees the quantized values, a fresh
prompt's own K/V included, so what a prompt attends to is what decoding will attend to later.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmserve.kernels import paged_attention as ref
from lmserve.kernels.cpu_paged_attention import paged_decode_attention
from lmserve.kernels.cpu_paged_attention_quant import paged_decode_attention_quant
from lmserve.kernels.kv_quant import QuantKVCache
from lmserve.kernels.paged_attention_quant import paged_prefill_attention_quant_ref
from lmserve.kernels.triton_support import use_triton


@dataclass(slots=True)
class PrefillChunk:
    q_start: int              # first row of this sequence's tokens in the flattened batch
    q_len: int
    context_len: int          # cached tokens before the chunk + q_len
    block_table: torch.Tensor


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor                       # [T] cache slot of every token of the step
    decode_rows: torch.Tensor | None = None          # [Bd] rows of decoding tokens, ascending
    decode_block_tables: torch.Tensor | None = None  # [Bd, max_blocks]
    decode_context_lens: torch.Tensor | None = None  # [Bd]
    prefills: list[PrefillChunk] = field(default_factory=list)


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5

    def forward(self, q, k, v, kv_cache: tuple[torch.Tensor, torch.Tensor] | QuantKVCache,
                meta: AttentionMetadata):
        """q: [T, H, D]; k, v: [T, KV, D] -> [T, H, D]."""
        if isinstance(kv_cache, QuantKVCache):
            return self._forward_quant(q, k, v, kv_cache, meta)
        if use_triton(q):
            from lmserve.nn.attention_triton import triton_attention_forward
            return triton_attention_forward(q, k, v, kv_cache, meta, self.scale)
        k_cache, v_cache = kv_cache
        ref.store_kv_ref(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.decode_rows is not None and not meta.prefills and len(meta.decode_rows) == q.shape[0]:
            # A pure decode step: the rows are all tokens, in order, so skip the gather of q
            # and the scatter of the result (on a busy 2-core CPU they cost as much as attention).
            return paged_decode_attention(q, k_cache, v_cache, meta.decode_block_tables,
                                          meta.decode_context_lens, self.scale)
        out = torch.empty_like(q)
        if meta.decode_rows is not None:
            out[meta.decode_rows] = paged_decode_attention(
                q[meta.decode_rows], k_cache, v_cache, meta.decode_block_tables,
                meta.decode_context_lens, self.scale)
        for chunk in meta.prefills:
            rows = slice(chunk.q_start, chunk.q_start + chunk.q_len)
            if chunk.context_len == chunk.q_len:    # nothing cached before: use k/v as they are
                out[rows] = ref.causal_attention_ref(q[rows], k[rows], v[rows], self.scale)
            else:
                out[rows] = ref.paged_prefill_attention_ref(q[rows], k_cache, v_cache, chunk.block_table,
                                                            chunk.context_len, self.scale)
        return out

    def _forward_quant(self, q, k, v, cache: QuantKVCache, meta: AttentionMetadata):
        if q.is_cuda:
            raise ValueError("a quantized KV cache (--quant-policy 4/8) is served on CPU only: the "
                             "CUDA attention kernels do not read int8/int4 blocks")
        cache.store(k, v, meta.slot_mapping)
        if meta.decode_rows is not None and not meta.prefills and len(meta.decode_rows) == q.shape[0]:
            return paged_decode_attention_quant(q, cache, meta.decode_block_tables,
                                                meta.decode_context_lens, self.scale)
        out = torch.empty_like(q)
        if meta.decode_rows is not None:
            out[meta.decode_rows] = paged_decode_attention_quant(
                q[meta.decode_rows], cache, meta.decode_block_tables, meta.decode_context_lens,
                self.scale)
        for chunk in meta.prefills:
            rows = slice(chunk.q_start, chunk.q_start + chunk.q_len)
            if chunk.context_len == chunk.q_len:
                # the chunk's own rows as the cache now holds them, not the exact k/v
                out[rows] = ref.causal_attention_ref(q[rows], cache.fake_quant(k[rows]),
                                                     cache.fake_quant(v[rows]), self.scale)
            else:
                out[rows] = paged_prefill_attention_quant_ref(q[rows], cache, chunk.block_table,
                                                              chunk.context_len, self.scale)
        return out
