"""RMSNorm with the residual add fused in, as a Triton kernel; reference: cpu_ops.add_rms_norm_ref.

One program per row: the row is read once, summed with its residual, normalised in fp32 and written
twice (the normed row and the new residual), instead of torch's chain of five element-wise passes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_support import next_power_of_2


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, n_cols, x_stride, res_stride,
                         eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # added in fp32 and rounded to the activation dtype, as torch adds 16-bit tensors
        r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * n_cols + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    normed = (xf * inv_rms).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual) for 2-D x with contiguous rows."""
    rows, n = x.shape
    if x.stride(1) != 1 or (residual is not None and residual.stride(1) != 1):
        raise ValueError("add_rms_norm_triton: x and residual need contiguous rows")
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    summed = x if residual is None else torch.empty_like(out)
    if rows:
        _add_rms_norm_kernel[(rows,)](
            x, x if residual is None else residual, weight, out, summed, n, x.stride(0),
            0 if residual is None else residual.stride(0), eps,
            HAS_RESIDUAL=residual is not None, BLOCK=next_power_of_2(n))
    return out, summed
