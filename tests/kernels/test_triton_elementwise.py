"""Triton RMSNorm(+residual), rotary and SiLU-and-mul equal their torch references (cpu_ops)."""
from __future__ import annotations

import pytest
import torch

from lmserve.kernels import cpu_ops

from .triton_testing import compiled, interpreted, requires_cuda, requires_triton

pytestmark = requires_triton

# fp32 kernels round once where torch rounds after each op: half an ulp of the dtype, a few times
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check_rms_norm(module, rows, hidden, dtype, with_residual, device):
    g = torch.Generator().manual_seed(rows * hidden)
    x = (torch.randn(rows, hidden, generator=g) * 3).to(dtype).to(device)
    r = torch.randn(rows, hidden, generator=g).to(dtype).to(device) if with_residual else None
    w = torch.randn(hidden, generator=g).to(dtype).to(device)
    out, summed = module.add_rms_norm_triton(x, r, w, 1e-5)
    ref_out, ref_sum = cpu_ops.add_rms_norm_ref(x, r, w, 1e-5)
    if dtype == torch.bfloat16 and device == "cpu":
        # Triton's interpreter rounds fp32 -> bf16 toward zero (the GPU to nearest): one ulp
        torch.testing.assert_close(summed, ref_sum, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(summed, ref_sum)
    torch.testing.assert_close(out, ref_out, **TOL[dtype])


def check_rotary(module, tokens, heads, kv_heads, head_dim, dtype, device):
    g = torch.Generator().manual_seed(tokens * head_dim)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g).to(dtype).to(device)
    # halves differ on purpose: each output must pick the cos/sin value of its own position
    cos = torch.randn(tokens, 1, head_dim, generator=g).to(dtype).to(device)
    sin = torch.randn(tokens, 1, head_dim, generator=g).to(dtype).to(device)
    q_end, k_end = heads * head_dim, (heads + kv_heads) * head_dim
    f32 = [t.float() for t in (qkv, cos, sin)]
    want_q = cpu_ops.rotary_ref(f32[0][:, :q_end].reshape(tokens, heads, head_dim), *f32[1:])
    want_k = cpu_ops.rotary_ref(f32[0][:, q_end:k_end].reshape(tokens, kv_heads, head_dim), *f32[1:])
    v_before = qkv[:, k_end:].clone()
    module.rotary_qk_inplace_triton(qkv, heads, kv_heads, head_dim, cos, sin)
    assert torch.equal(qkv[:, k_end:], v_before)
    torch.testing.assert_close(qkv[:, :q_end].reshape(tokens, heads, head_dim).float(), want_q, **TOL[dtype])
    torch.testing.assert_close(qkv[:, q_end:k_end].reshape(tokens, kv_heads, head_dim).float(), want_k,
                               **TOL[dtype])


def check_silu_and_mul(module, rows, width, dtype, device):
    g = torch.Generator().manual_seed(rows + width)
    gate_up = (torch.randn(rows, 2 * width, generator=g) * 4).to(dtype).to(device)
    want = cpu_ops.silu_and_mul_ref(gate_up.float())
    torch.testing.assert_close(module.silu_and_mul_triton(gate_up).float(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_interpreted(interpreter, dtype, with_residual):
    check_rms_norm(interpreted("triton_rms_norm"), 3, 80, dtype, with_residual, "cpu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 16), (2, 1, 64)])
def test_rotary_interpreted(interpreter, dtype, heads, kv_heads, head_dim):
    check_rotary(interpreted("triton_rotary"), 3, heads, kv_heads, head_dim, dtype, "cpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_interpreted(interpreter, dtype):
    check_silu_and_mul(interpreted("triton_silu_and_mul"), 3, 1100, dtype, "cpu")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_elementwise_on_gpu(dtype):
    for residual in (False, True):
        check_rms_norm(compiled("triton_rms_norm"), 333, 4096, dtype, residual, "cuda")
    check_rotary(compiled("triton_rotary"), 257, 32, 8, 128, dtype, "cuda")
    check_silu_and_mul(compiled("triton_silu_and_mul"), 129, 11008, dtype, "cuda")
