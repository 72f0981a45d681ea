"""SiLU(gate) * up over a packed [gate | up] projection, as a Triton kernel.

Reference: cpu_ops.silu_and_mul_ref. Computed in fp32 and rounded once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(gate_up_ptr, out_ptr, n_cols, in_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(gate_up_ptr + row * in_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * in_stride + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    silu = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * n_cols + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2 I] with contiguous rows -> [T, I]."""
    rows, width = gate_up.shape
    if gate_up.stride(1) != 1 or width % 2:
        raise ValueError("silu_and_mul_triton: gate_up needs contiguous rows of even width")
    n = width // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    if rows:
        _silu_and_mul_kernel[(rows, triton.cdiv(n, _BLOCK))](gate_up, out, n, gate_up.stride(0),
                                                             BLOCK=_BLOCK)
    return out
