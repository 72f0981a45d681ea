"""CPU-only set-up of a model runner: how the low-bit matmuls multiply (--cpu-gemm-dtype), and how
the process allocator treats the large per-step temporaries."""
from __future__ import annotations

import ctypes
import logging
import os
import platform

import torch

from lmserve.kernels.cpu_quant_linear import split_bf16_unavailable_reason, split_weight
from lmserve.kernels.quant_weight import QuantWeight
from lmserve.nn.embedding import ParallelLMHead
from lmserve.nn.linear import LinearBase

logger = logging.getLogger(__name__)

KEEP_FREED_ENV = "LMSERVE_KEEP_FREED_MEMORY"
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_kept = False


def apply_cpu_gemm_dtype(model: torch.nn.Module, gemm_dtype: str) -> None:
    """Point every low-bit linear at the GEMM --cpu-gemm-dtype names; for bf16x3, split each
    weight into its bf16 halves once (4 bytes a weight): without them every call dequantizes and
    splits the whole weight again, which at decode batch sizes costs more than the products."""
    if gemm_dtype == "float32":
        return
    if gemm_dtype == "bf16x3":
        why = split_bf16_unavailable_reason()
        if why is not None:
            raise ValueError(f"--cpu-gemm-dtype bf16x3 cannot run here: {why}; use float32 or bfloat16")
    for module in model.modules():
        # bfloat16 leaves the LM head fp32, so logits (and greedy ties) keep fp32 precision (bf16
        # there bought ~1% more throughput); bf16x3 is accurate enough to include it
        head = isinstance(module, ParallelLMHead)
        if isinstance(module, LinearBase) or (head and gemm_dtype == "bf16x3"):
            module.cpu_gemm_dtype = gemm_dtype
            if gemm_dtype == "bf16x3" and isinstance(module.weight, QuantWeight):
                module.cpu_split_weight = split_weight(module.weight)


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A prefill step allocates tens of MB per layer (a 4096-token chunk's gate/up output alone is
    50 MB). glibc serves blocks that large with a fresh mmap each time and unmaps them on free,
    so every step pays a page fault per 4 KB again: measured on the 2-core Xeon, the 64-prompt
    batch took 14.4-14.6 s with the defaults and 12.8-12.9 s with mmap off and no trimming. The
    cost is that the process keeps its peak heap; LMSERVE_KEEP_FREED_MEMORY=0 leaves malloc as
    it is. Process-wide, once, glibc only (elsewhere a no-op)."""
    global _kept
    if _kept or os.environ.get(KEEP_FREED_ENV, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError) as e:
        logger.info("malloc left as it is: %s", e)
        return
    _kept = True
    if ok:
        logger.info("malloc keeps freed memory for reuse (%s=0 to leave it as it is)", KEEP_FREED_ENV)
    else:
        logger.info("malloc left as it is: mallopt refused the settings")
