"""The fused CPU decoder ops equal their torch definitions, and fall back to them off fp32."""
from __future__ import annotations

import pytest
import torch

from lmserve.kernels import cpu_ops
from lmserve.kernels.cpu_quant_linear import quant_linear, quant_linear_ref
from lmserve.kernels.quant_weight import QuantWeight

needs_ext = pytest.mark.skipif(cpu_ops._EXT.get() is None, reason="the CPU extension cannot be built here")


@needs_ext
@pytest.mark.parametrize("rows", [1, 3, 300])      # 300 rows: several parallel tasks
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_equals_reference(rows, with_residual):
    g = torch.Generator().manual_seed(rows)
    x, r = torch.randn(rows, 576, generator=g) * 3, torch.randn(rows, 576, generator=g)
    w = torch.randn(576, generator=g)
    out, summed = cpu_ops.add_rms_norm(x, r if with_residual else None, w, 1e-5)
    ref_out, ref_sum = cpu_ops.add_rms_norm_ref(x, r if with_residual else None, w, 1e-5)
    assert torch.equal(summed, ref_sum)
    torch.testing.assert_close(out, ref_out, rtol=2e-6, atol=2e-6)


@needs_ext
@pytest.mark.parametrize("rows", [1, 20, 1500])
def test_rotary_in_place_equals_reference_on_q_and_k_only(rows):
    g = torch.Generator().manual_seed(rows)
    heads, kv, d = 4, 2, 16
    qkv = torch.randn(rows, (heads + 2 * kv) * d, generator=g)
    # halves of cos/sin differ on purpose: each output element must use its own position's value
    cos, sin = torch.randn(rows, 1, d, generator=g), torch.randn(rows, 1, d, generator=g)
    q, k = qkv[:, :heads * d].reshape(rows, heads, d), qkv[:, heads * d:(heads + kv) * d].reshape(rows, kv, d)
    want_q, want_k = cpu_ops.rotary_ref(q, cos, sin), cpu_ops.rotary_ref(k, cos, sin)
    v_before = qkv[:, (heads + kv) * d:].clone()
    assert cpu_ops.rotary_qk_inplace(qkv, heads, kv, d, cos, sin)
    torch.testing.assert_close(qkv[:, :heads * d].reshape(rows, heads, d), want_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(qkv[:, heads * d:(heads + kv) * d].reshape(rows, kv, d), want_k, rtol=0, atol=1e-6)
    assert torch.equal(qkv[:, (heads + kv) * d:], v_before)


def test_rotary_declines_other_dtypes():
    qkv = torch.randn(2, 64, dtype=torch.bfloat16)
    cos = sin = torch.ones(2, 1, 16, dtype=torch.bfloat16)
    before = qkv.clone()
    assert not cpu_ops.rotary_qk_inplace(qkv, 2, 1, 16, cos, sin)
    assert torch.equal(qkv, before)


@needs_ext
@pytest.mark.parametrize("rows", [1, 17, 800])
def test_silu_and_mul_equals_reference(rows):
    gate_up = torch.randn(rows, 2 * 96, generator=torch.Generator().manual_seed(rows)) * 4
    torch.testing.assert_close(cpu_ops.silu_and_mul(gate_up), cpu_ops.silu_and_mul_ref(gate_up),
                               rtol=1e-6, atol=1e-6)


def test_non_fp32_inputs_use_the_reference():
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    w = torch.randn(64, dtype=torch.bfloat16)
    out, summed = cpu_ops.add_rms_norm(x, x, w, 1e-6)
    ref_out, ref_sum = cpu_ops.add_rms_norm_ref(x, x, w, 1e-6)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref_out) and torch.equal(summed, ref_sum)
    gu = torch.randn(2, 32, dtype=torch.bfloat16)
    assert torch.equal(cpu_ops.silu_and_mul(gu), cpu_ops.silu_and_mul_ref(gu))


def test_prefill_sized_quant_linear_runs_under_inference_mode():
    # the tiled (many-row) path writes its output from worker threads, which must see the
    # caller's inference mode; this is how the engine calls it during prefill
    # 512 x 512: four 128-row tiles, so more than one thread takes part
    w = QuantWeight.quantize(torch.randn(512, 512), bits=4, group_size=32)
    x = torch.randn(48, 512)
    with torch.inference_mode():
        y = quant_linear(x, w)
    torch.testing.assert_close(y, quant_linear_ref(x, w), rtol=1e-5, atol=1e-5)


@needs_ext
def test_silu_and_mul_stays_finite_and_close_at_extreme_gates():
    # the kernel's exp clamps its input to [-87, 88]; silu is then -0 or the gate itself
    gate = torch.tensor([[-200.0, -90.0, -87.5, -30.0, -1e-3, 0.0, 1e-3, 30.0, 88.5, 200.0]])
    gate_up = torch.cat([gate, torch.full_like(gate, 1.5)], dim=1)
    got = cpu_ops.silu_and_mul(gate_up)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, cpu_ops.silu_and_mul_ref(gate_up), rtol=1e-6, atol=1e-30)
