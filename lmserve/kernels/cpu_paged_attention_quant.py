"""Paged decode attention on CPU straight from an int8/int4 cache: csrc/paged_attention_kvq_cpu.cpp.

paged_attention_quant.paged_decode_attention_quant_ref stays the definition; the kernel reads the
codes in place (1 or 1/2 byte per element) with dequantization folded into its dot products, where
the reference dequantizes every block it reads into a float copy first. It runs in the cache's
rotated basis: q is rotated on the way in and the output un-rotated on the way out (exact for an
orthogonal rotation). Anything the kernel does not serve, or a machine where the extension cannot
be built, gets the reference.
"""
from __future__ import annotations

import torch

from .cpu_extension import CPUExtension
from .kv_quant import QuantKVCache
from .paged_attention_quant import paged_decode_attention_quant_ref

# its own extension (and build folder), so building it leaves lmserve_paged_attention alone
_EXT = CPUExtension("lmserve_paged_attention_kvq", ("paged_attention_kvq_bind.cpp", "paged_attention_kvq_cpu.cpp"),
                    reference="torch reference paged_decode_attention_quant_ref")


def kernel_applies(q: torch.Tensor, cache: QuantKVCache) -> bool:
    """Whether these tensors are of a kind the CPU kernel serves (else: the reference)."""
    return (q.device.type == "cpu" and cache.k.device.type == "cpu" and q.dim() == 3
            and q.is_floating_point() and q.shape[-1] == cache.head_dim
            and q.shape[-1] % (8 if cache.bits == 8 else 16) == 0 and not q.requires_grad)


def paged_decode_attention_quant(q: torch.Tensor, cache: QuantKVCache, block_tables: torch.Tensor,
                                 context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [B, heads, D] -> [B, heads, D], as paged_decode_attention_quant_ref computes it."""
    ext = _EXT.get() if kernel_applies(q, cache) else None
    if ext is None:
        return paged_decode_attention_quant_ref(q, cache, block_tables, context_lens, scale)
    qf = cache.rotate(q.float()).contiguous()
    out = ext.paged_decode_attention_quant(qf, cache.k, cache.v, cache.k_scale_zero, cache.v_scale_zero,
                                           cache.bits, block_tables.long().contiguous(),
                                           context_lens.long().contiguous(), float(scale))
    return cache.unrotate(out).to(q.dtype)


def load_extension():
    """The compiled module, or None when this machine cannot build or run it (warned once)."""
    return _EXT.get()
