"""The bf16x3 GEMM (csrc/split_bf16_gemm.cpp): each fp32 value split into two bf16 halves, three
bf16 products accumulated in fp32. It must be within ~2^-16 of the exact product, far closer than
plain bf16, for every weight format, row count and shape the kernel blocks differently."""
from __future__ import annotations

import pytest
import torch

from lmserve.kernels import cpu_quant_linear as cql
from lmserve.kernels.cpu_quant_linear import quant_linear

from .test_cpu_quant_linear import assert_matches, make_weight


def _needs_split_bf16():
    why = cql.split_bf16_unavailable_reason()
    if why is not None:
        pytest.skip(f"bf16x3 cannot run here: {why}")


# rows: below the 64-row block (padded), one block, a block and a bit, and past the size where
# threads split rows instead of column blocks (256). (100, 576): 100 outputs end in a short block.
@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0", "AWQ_g64"])
@pytest.mark.parametrize("rows", [cql.GEMV_MAX_M + 1, 64, 100, 300])
@pytest.mark.parametrize("shape", [(100, 576), (64, 1536)])
def test_bf16x3_is_close_to_the_exact_product(fmt, rows, shape):
    _needs_split_bf16()
    w = make_weight(fmt, *shape)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, shape[1], generator=gen)
    bias = torch.randn(w.out_features, generator=gen)
    split = cql.split_weight(w)
    got = quant_linear(x, w, bias, "bf16x3", split)
    # two halves keep ~16 significant bits of x and of W; the dropped lo x lo term is ~2^-16
    assert_matches(got, x, w, bias, tol=3e-5)
    assert not torch.equal(got, quant_linear(x, w, bias))     # it did take the bf16x3 path
    # without the kept halves the call splits the weight itself, to the same bits
    assert torch.equal(quant_linear(x, w, bias, "bf16x3"), got)


def test_bf16x3_is_much_closer_than_bf16():
    _needs_split_bf16()
    w = make_weight("Q4_1", 100, 576)
    x = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    exact = x.double() @ w.dequantize().double().T
    err = {dt: (quant_linear(x, w, None, dt).double() - exact).abs().max().item()
           for dt in ("bfloat16", "bf16x3")}
    assert err["bf16x3"] * 100 < err["bfloat16"], err


def test_decode_sized_calls_stay_on_the_fp32_gemv():
    _needs_split_bf16()
    w = make_weight("Q8_0", 100, 576)
    x = torch.randn(cql.GEMV_MAX_M, 576, generator=torch.Generator().manual_seed(1))
    assert torch.equal(quant_linear(x, w, None, "bf16x3", cql.split_weight(w)), quant_linear(x, w))


def test_a_split_of_the_wrong_shape_is_refused_with_both_shapes():
    _needs_split_bf16()
    w = make_weight("Q4_1", 100, 576)
    other = cql.split_weight(make_weight("Q4_1", 64, 1536))
    with pytest.raises(ValueError, match=r"split must be split_weight's .*\[2, 1152, 64\].*got \[1, 3072, 64\]"):
        quant_linear(torch.randn(64, 576), w, None, "bf16x3", other)
