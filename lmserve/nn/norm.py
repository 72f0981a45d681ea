"""RMSNorm, with the residual add fused in (as the decoder always needs both)."""
from __future__ import annotations

import torch
from torch import nn

from lmserve.kernels.dispatch import add_rms_norm


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Returns (norm(x + residual), x + residual); without a residual, (norm(x), x).

        The norm is computed in fp32 like the reference implementations, whatever the dtype.
        """
        return add_rms_norm(x, residual, self.weight, self.eps)
