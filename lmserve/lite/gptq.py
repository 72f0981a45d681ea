"""GPTQ: error-compensating rounding of one linear from the Gram matrix of its inputs.

Round-to-nearest rounds every weight on its own. GPTQ (Frantar et al., 2022) rounds the input
columns one at a time and moves each column's rounding error onto the columns not yet rounded, in
the proportions that keep the output error tr(dW G dW^T) smallest (the inverse of the damped Gram
matrix says how). Groups are as in our files: asymmetric 4-bit (or symmetric 8-bit) scale and
zero point per `group_size` inputs, fixed when the first column of the group is reached (from the
weights as updated by the errors before it), in the natural column order (no act-order, so the
files keep the identity g_idx every reader supports).

The result is a GroupQuant like round-to-nearest's, so it is written in the AutoGPTQ format
(`lite auto_gptq`) or, on top of AWQ's folded scales, in the AutoAWQ format
(`lite auto_awq --rounding gptq`).
"""
from __future__ import annotations

import torch

from lmserve.lite.quantizer import GroupQuant, check_group_size, group_params, quantize_codes

BLOCK = 128          # columns updated lazily together (a multiple of every group size)


def inverse_hessian_factor(gram: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (upper Cholesky factor of (G + damp * mean(diag G) I)^-1, mask of dead inputs).
    Inputs that never fire (zero diagonal) get a unit diagonal so the factorization exists."""
    h = gram.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    idx = torch.arange(h.shape[0])
    h[idx, idx] += damp * torch.diagonal(h).mean()
    for _ in range(5):       # tiny models can give a numerically singular G: damp harder
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            break
        h[idx, idx] += damp * torch.diagonal(h).mean()
    else:
        raise ValueError("GPTQ: the calibration Gram matrix is not positive definite even damped; "
                         "calibrate on more tokens")
    hinv = torch.cholesky_inverse(chol)
    return torch.linalg.cholesky(hinv, upper=True).float(), dead


def gptq_quantize(w: torch.Tensor, gram: torch.Tensor, bits: int, group_size: int,
                  damp: float = 0.01, clip: torch.Tensor | None = None,
                  min_zero: int = 0) -> GroupQuant:
    """w: float [out, in]; gram: [in, in] (sum or mean of x x^T, the scale does not matter).
    clip: optional [out, groups] fraction of each group's range to keep. min_zero: see
    quantizer.group_params (1 for GPTQ's original file format)."""
    out, in_features = w.shape
    check_group_size(in_features, group_size, f"a weight of shape {list(w.shape)}")
    if gram.shape != (in_features, in_features):
        raise ValueError(f"GPTQ: Gram matrix {list(gram.shape)} does not fit weight {list(w.shape)}")
    u, dead = inverse_hessian_factor(gram, damp)
    work = w.float().clone()
    work[:, dead] = 0.0
    groups = in_features // group_size
    codes = torch.empty(out, in_features)
    scales = torch.empty(out, groups)
    zeros = torch.empty(out, groups)
    for b0 in range(0, in_features, BLOCK):
        b1 = min(b0 + BLOCK, in_features)
        blk = work[:, b0:b1].clone()
        err = torch.empty_like(blk)
        ub = u[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = b0 + j
            if col % group_size == 0:
                gi = col // group_size
                s, z = group_params(blk[:, j:j + group_size], bits,
                                    None if clip is None else clip[:, gi], min_zero)
                scales[:, gi], zeros[:, gi] = s, z
            s, z = scales[:, col // group_size], zeros[:, col // group_size]
            x = blk[:, j]
            q = quantize_codes(x, s, z, bits)
            codes[:, col] = q
            e = (x - (q - z) * s) / ub[j, j]
            blk[:, j:] -= e[:, None] * ub[j, j:][None, :]
            err[:, j] = e
        work[:, b1:] -= err @ u[b0:b1, b1:]
    return GroupQuant(codes.to(torch.uint8), zeros.to(torch.uint8), scales.half(), bits, group_size)
