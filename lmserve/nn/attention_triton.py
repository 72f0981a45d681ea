"""PagedAttention's forward on CUDA: the Triton kernels, with the same metadata as the CPU path.

Kept apart from attention.py so the CPU path there stays as it is; PagedAttention calls this when
its tensors are on CUDA and triton can be imported (kernels.triton_support.use_triton).
"""
from __future__ import annotations

import torch

from lmserve.kernels.triton_paged_attention import paged_decode_attention_triton
from lmserve.kernels.triton_prefill_attention import paged_prefill_attention_triton
from lmserve.kernels.triton_store_kv import store_kv_triton


def triton_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             kv_cache: tuple[torch.Tensor, torch.Tensor], meta, scale: float):
    """q: [T, H, D]; k, v: [T, KV, D]; meta: nn.attention.AttentionMetadata -> [T, H, D].

    A prompt chunk with nothing cached before it also reads its K/V back from the cache (just
    written), so one prefill kernel serves whole prompts, chunks and prefix-cache hits alike.
    """
    k_cache, v_cache = kv_cache
    store_kv_triton(k, v, k_cache, v_cache, meta.slot_mapping)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if meta.decode_rows is not None:
        out[meta.decode_rows] = paged_decode_attention_triton(
            q[meta.decode_rows], k_cache, v_cache, meta.decode_block_tables,
            meta.decode_context_lens, scale)
    for chunk in meta.prefills:
        rows = slice(chunk.q_start, chunk.q_start + chunk.q_len)
        out[rows] = paged_prefill_attention_triton(q[rows], k_cache, v_cache, chunk.block_table,
                                                   chunk.context_len, scale)
    return out
