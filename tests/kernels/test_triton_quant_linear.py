"""Triton W4A16/W8A16 matmul on QuantWeight's layout against quant_linear_ref, in every shape
regime (GEMV with and without split-K, small-M tiles split along K, large-M tiles)."""
from __future__ import annotations

import pytest
import torch

from lmserve.kernels.cpu_quant_linear import quant_linear_ref
from lmserve.kernels.quant_weight import QuantWeight

from .triton_testing import compiled, interpreted, requires_cuda, requires_triton

pytestmark = requires_triton

# the kernels round the dequantized weights to the activation dtype, as W4A16 kernels do
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=4e-3, atol=4e-3),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def random_weight(out, in_features, bits, group, with_mins=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = QuantWeight.quantize(torch.randn(out, in_features, generator=g) * 0.05, bits, group)
    return w if with_mins else QuantWeight(w.qweight, w.scales, None, bits, group)


def check(module, m, out, in_features, bits, group, dtype, device, with_mins=True, bias=False,
          split_k=None):
    w = random_weight(out, in_features, bits, group, with_mins, seed=m + in_features)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, in_features, generator=g).to(dtype)
    b = torch.randn(out, generator=g).to(dtype) if bias else None
    want = quant_linear_ref(x.float(), w, None if b is None else b.float())
    dev_w = w.to(device)
    got = module.quant_linear_triton(x.to(device), dev_w, None if b is None else b.to(device),
                                     split_k=split_k)
    assert got.dtype == dtype and got.shape == (m, out)
    torch.testing.assert_close(got.float().cpu(), want, **TOL[dtype])


@pytest.mark.parametrize("bits,group,in_features", [(4, 32, 96), (4, 64, 128), (4, 128, 256),
                                                    (8, 32, 96), (8, 128, 256)])
def test_gemv_interpreted(interpreter, bits, group, in_features):
    module = interpreted("triton_quant_linear")
    # in=96 ends in a 32-element chunk of the 4-bit layout; split_k 2 and 3 split mid-chunk
    check(module, 1, 40, in_features, bits, group, torch.float16, "cpu", bias=True, split_k=1)
    check(module, 1, 40, in_features, bits, group, torch.float32, "cpu", split_k=2)
    check(module, 1, 24, in_features, bits, group, torch.float16, "cpu", with_mins=False, split_k=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
def test_small_and_large_m_interpreted(interpreter, dtype, bits):
    module = interpreted("triton_quant_linear")
    check(module, 5, 72, 192, bits, 64, dtype, "cpu", bias=True, split_k=2)   # small M, split K
    check(module, 3, 72, 96, bits, 32, dtype, "cpu", with_mins=False)         # the split heuristic
    check(module, 40, 72, 96, bits, 32, dtype, "cpu", bias=True)              # large-M tiles


def test_bf16_gemv_and_3d_input_interpreted(interpreter):
    module = interpreted("triton_quant_linear")
    check(module, 1, 40, 128, 4, 64, torch.bfloat16, "cpu")
    w = random_weight(16, 64, 4, 32)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(module.quant_linear_triton(x, w), quant_linear_ref(x, w), **TOL[torch.float32])


def test_wrong_width_is_refused(interpreter):
    with pytest.raises(ValueError, match="expects 64"):
        interpreted("triton_quant_linear").quant_linear_triton(torch.randn(1, 32), random_weight(16, 64, 4, 32))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group", [(4, 32), (4, 64), (4, 128), (8, 64)])
def test_quant_linear_on_gpu(dtype, bits, group):
    module = compiled("triton_quant_linear")
    for m in (1, 7, 16, 300):
        check(module, m, 4096 + 64, 4096, bits, group, dtype, "cuda", bias=m == 7)
    check(module, 1, 11008, 4096, bits, group, dtype, "cuda")
    if group != 128:
        check(module, 3, 4096, 11008 + 32 if group == 32 else 11008, bits, group, dtype, "cuda")
