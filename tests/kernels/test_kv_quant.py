"""KV-cache int8/int4 quantization (kernels/kv_quant.py): error bounds, the int4 byte layout, the
rotation, store/read-back, and the CPU decode kernel against its torch reference."""
from __future__ import annotations

import pytest
import torch

from lmserve.kernels import cpu_paged_attention_quant as cpq
from lmserve.kernels.kv_quant import (QuantKVCache, bytes_per_token_head, dequantize, quantize,
                                      rotation_matrix)
from lmserve.kernels.paged_attention import paged_decode_attention_ref, paged_prefill_attention_ref
from lmserve.kernels.paged_attention_quant import (paged_decode_attention_quant_ref,
                                                   paged_prefill_attention_quant_ref)


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_error_is_at_most_half_a_step(bits):
    x = torch.randn(40, 3, 64, generator=torch.Generator().manual_seed(bits)) * 3
    x[5, 1, 7] = 40.0                                   # an outlier widens its own row's range only
    data, sz = quantize(x, bits)
    assert data.dtype == torch.uint8 and data.shape == (40, 3, 64 if bits == 8 else 32)
    assert sz.dtype == torch.float16 and sz.shape == (40, 3, 2)
    err = (dequantize(data, sz, bits) - x).abs()
    step = sz[..., :1].float()
    # half a step from rounding, plus the float16 rounding of scale and zero
    assert (err <= 0.5 * step + 2e-3 * x.abs().amax(-1, keepdim=True)).all()
    assert err[5, 1].amax() > err[5, 0].amax()          # per token and head: the outlier row alone
    const = torch.full((1, 1, 64), 1.25)                # scale 0: reads back exactly
    assert torch.equal(dequantize(*quantize(const, bits), bits), const)


def test_int4_bytes_hold_element_j_low_and_j_plus_half_high():
    x = torch.tensor([float(v) for v in torch.randperm(16, generator=torch.Generator().manual_seed(1))] * 2) - 3
    data, sz = quantize(x[None], 4)                      # min -3, max 12: scale 1, zero -3 exactly
    assert sz.float().tolist() == [[1.0, -3.0]]
    codes = [int(v) + 3 for v in x]
    assert data[0].tolist() == [codes[j] | (codes[j + 16] << 4) for j in range(16)]


def test_rotation_is_orthogonal_and_helps_int4_with_an_outlier_channel():
    for d in (64, 48):                                   # Hadamard; a fixed random orthogonal matrix
        r = rotation_matrix(d).double()
        torch.testing.assert_close(r @ r.T, torch.eye(d, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(rotation_matrix(64), rotation_matrix(64).T)
    x = torch.randn(256, 2, 64, generator=torch.Generator().manual_seed(0))
    x[..., 3] = 40.0                                     # one large channel, as K has in LLMs
    plain = QuantKVCache.allocate(1, 1, 2, 64, 4, rotate=False)
    rotated = QuantKVCache.allocate(1, 1, 2, 64, 4, rotate=True)
    err_plain = (plain.fake_quant(x) - x).pow(2).mean()
    err_rot = (rotated.fake_quant(x) - x).pow(2).mean()
    assert err_rot < 0.5 * err_plain


@pytest.mark.parametrize("bits,rotate", [(8, False), (4, True)])
def test_store_reads_back_what_fake_quant_gives(bits, rotate):
    cache = QuantKVCache.allocate(4, 8, 2, 32, bits, rotate)
    gen = torch.Generator().manual_seed(2)
    k, v = torch.randn(5, 2, 32, generator=gen), torch.randn(5, 2, 32, generator=gen)
    slots = torch.tensor([17, 3, 30, 8, 9])
    cache.store(k, v, slots)
    kb, vb = cache.dequantize_blocks(torch.arange(4))
    torch.testing.assert_close(kb.reshape(-1, 2, 32)[slots], cache.fake_quant(k), atol=1e-6, rtol=0)
    torch.testing.assert_close(vb.reshape(-1, 2, 32)[slots], cache.fake_quant(v), atol=1e-6, rtol=0)


def make_problem(batch, heads, kv_heads, head_dim, block_size, lens, bits, rotate, seed=0):
    """Random K/V stored into shuffled blocks of a quantized cache and of a float one (the exact
    values); tables padded with block 0."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lens]
    num_blocks = sum(need) + 3
    cache = QuantKVCache.allocate(num_blocks, block_size, kv_heads, head_dim, bits, rotate)
    exact = torch.zeros(2, num_blocks, block_size, kv_heads, head_dim)
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.zeros(batch, max(need) + 1, dtype=torch.long)
    for b, (n, nb) in enumerate(zip(lens, need)):
        tables[b, :nb] = torch.tensor(ids[:nb])
        ids = ids[nb:]
        pos = torch.arange(n)
        slots = tables[b, pos // block_size] * block_size + pos % block_size
        k = torch.randn(n, kv_heads, head_dim, generator=gen)
        k[..., 1] += 6.0                                 # an offset channel, as rotary K has
        v = torch.randn(n, kv_heads, head_dim, generator=gen)
        cache.store(k, v, slots)
        exact[0].view(-1, kv_heads, head_dim)[slots] = k
        exact[1].view(-1, kv_heads, head_dim)[slots] = v
    q = torch.randn(batch, heads, head_dim, generator=gen)
    return q, cache, tables, torch.tensor(lens), exact


@pytest.mark.parametrize("bits,rotate", [(8, False), (4, False), (4, True), (8, True)])
@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", [(9, 3, 64, 16), (8, 1, 128, 64), (4, 4, 32, 8)])
def test_cpu_kernel_matches_reference(bits, rotate, heads, kv_heads, head_dim, block_size):
    if cpq.load_extension() is None:
        pytest.skip("CPU quantized paged-attention extension unavailable here")
    lens = [1, 40, block_size, 3 * block_size + 5]
    q, cache, tables, lens, _ = make_problem(4, heads, kv_heads, head_dim, block_size, lens, bits, rotate,
                                             seed=heads + bits)
    assert cpq.kernel_applies(q, cache)
    scale = head_dim ** -0.5
    got = cpq.paged_decode_attention_quant(q, cache, tables, lens, scale)
    want = paged_decode_attention_quant_ref(q, cache, tables, lens, scale)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("bits,rotate", [(8, False), (4, True)])
@pytest.mark.parametrize("lens", [[1000], [700, 0]])
def test_cpu_kernel_splits_small_batches_and_matches_reference(bits, rotate, lens):
    """Fewer (sequence, KV head) pairs than two per thread: contexts are cut into merged pieces."""
    if cpq.load_extension() is None:
        pytest.skip("CPU quantized paged-attention extension unavailable here")
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, cache, tables, lens, _ = make_problem(len(lens), 8, 1, 64, 16, lens, bits, rotate, seed=bits)
        got = cpq.paged_decode_attention_quant(q, cache, tables, lens, 0.125)
        want = paged_decode_attention_quant_ref(q, cache, tables, lens, 0.125)
    finally:
        torch.set_num_threads(saved)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


def test_kernel_refuses_a_block_outside_the_cache():
    if cpq.load_extension() is None:
        pytest.skip("CPU quantized paged-attention extension unavailable here")
    q, cache, tables, lens, _ = make_problem(1, 4, 2, 64, 16, [20], 8, False)
    tables[0, 1] = cache.num_blocks
    with pytest.raises(ValueError, match="outside the cache"):
        cpq.paged_decode_attention_quant(q, cache, tables, lens, 0.125)


# measured: 0.011, 0.13, 0.17 (int4 steps are 17x int8 steps); the bounds leave 2x
@pytest.mark.parametrize("bits,rotate,tol", [(8, False, 0.02), (4, True, 0.25), (4, False, 0.35)])
def test_quantized_attention_is_close_to_float(bits, rotate, tol):
    """Decode and prefill over the quantized cache against the same over the exact values:
    relative error of the outputs within what the bit width allows."""
    q, cache, tables, lens, exact = make_problem(3, 4, 2, 64, 16, [30, 64, 100], bits, rotate, seed=5)
    got = paged_decode_attention_quant_ref(q, cache, tables, lens, 0.125)
    want = paged_decode_attention_ref(q, exact[0], exact[1], tables, lens, 0.125)
    assert (got - want).norm() / want.norm() < tol
    assert (got - want).norm() / want.norm() > tol / 1000       # it is quantized at all
    qp = torch.randn(7, 4, 64, generator=torch.Generator().manual_seed(9))
    got = paged_prefill_attention_quant_ref(qp, cache, tables[2], 100, 0.125)
    want = paged_prefill_attention_ref(qp, exact[0], exact[1], tables[2], 100, 0.125)
    assert (got - want).norm() / want.norm() < tol
    assert bytes_per_token_head(64, bits) == (68 if bits == 8 else 36)
