"""Triton paged attention (store, decode with and without split-K, causal prefill) against the
torch references in kernels/paged_attention.py."""
from __future__ import annotations

import pytest
import torch

from lmserve.kernels import paged_attention as ref

from .triton_testing import compiled, interpreted, requires_cuda, requires_triton

pytestmark = requires_triton

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=3e-3, atol=3e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
HEAD_LAYOUTS = {"MHA": (4, 4), "GQA": (4, 2), "MQA": (4, 1)}


def random_cache(num_blocks, block_size, kv_heads, head_dim, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return (torch.randn(shape, generator=g).to(dtype).to(device),
            torch.randn(shape, generator=g).to(dtype).to(device))


def scattered_tables(lens, block_size, num_blocks, seed):
    """Each sequence gets distinct blocks in a shuffled order, padded with block 0."""
    need = [-(-n // block_size) for n in lens]
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    width, tables, used = max(need), [], 0
    for n in need:
        tables.append(perm[used:used + n] + [0] * (width - n))
        used += n
    return torch.tensor(tables, dtype=torch.long)


def f32(*tensors):
    return [t.float() for t in tensors]


def check_decode(module, lens, layout, head_dim, dtype, device, partition=None, block_size=16):
    heads, kv_heads = HEAD_LAYOUTS[layout]
    num_blocks = sum(-(-n // block_size) for n in lens) + 2
    k_cache, v_cache = random_cache(num_blocks, block_size, kv_heads, head_dim, dtype, device, len(lens))
    tables = scattered_tables(lens, block_size, num_blocks, seed=head_dim).to(device)
    context = torch.tensor(lens, dtype=torch.long, device=device)
    q = torch.randn(len(lens), heads, head_dim, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    extra = {} if partition is None else {"partition": partition}
    out = module.paged_decode_attention_triton(q, k_cache, v_cache, tables, context, head_dim ** -0.5, **extra)
    want = ref.paged_decode_attention_ref(*f32(q, k_cache, v_cache), tables, context, head_dim ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), want, **TOL[dtype])


def check_prefill(module, q_len, context_len, layout, head_dim, dtype, device, block_size=16):
    heads, kv_heads = HEAD_LAYOUTS[layout]
    num_blocks = -(-context_len // block_size) + 3
    k_cache, v_cache = random_cache(num_blocks, block_size, kv_heads, head_dim, dtype, device, q_len)
    table = scattered_tables([context_len], block_size, num_blocks, seed=q_len)[0].to(device)
    q = torch.randn(q_len, heads, head_dim, generator=torch.Generator().manual_seed(2)).to(dtype).to(device)
    out = module.paged_prefill_attention_triton(q, k_cache, v_cache, table, context_len, head_dim ** -0.5)
    want = ref.paged_prefill_attention_ref(*f32(q, k_cache, v_cache), table, context_len, head_dim ** -0.5)
    torch.testing.assert_close(out.float(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", list(HEAD_LAYOUTS))
def test_decode_interpreted(interpreter, dtype, layout):
    module = interpreted("triton_paged_attention")
    # lengths 1, a block boundary and a part block; partition 32 cuts the longest into 3 splits
    # and leaves the shortest sequence with empty splits, which the merge must ignore
    check_decode(module, [1, 16, 70], layout, 64, dtype, "cpu", partition=32)
    check_decode(module, [5, 33], layout, 64, dtype, "cpu")


def test_decode_interpreted_head_dim_128_and_large_cache_blocks(interpreter):
    check_decode(interpreted("triton_paged_attention"), [3, 100], "GQA", 128, torch.float16, "cpu",
                 partition=64, block_size=64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", list(HEAD_LAYOUTS))
def test_prefill_interpreted(interpreter, dtype, layout):
    module = interpreted("triton_prefill_attention")
    check_prefill(module, 21, 21, layout, 64, dtype, "cpu")     # a whole prompt, two row tiles
    check_prefill(module, 7, 40, layout, 64, dtype, "cpu")      # a chunk after 33 cached tokens


def test_prefill_interpreted_head_dim_128(interpreter):
    check_prefill(interpreted("triton_prefill_attention"), 18, 50, "MQA", 128, torch.float16, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_store_kv_interpreted(interpreter, dtype):
    module = interpreted("triton_store_kv")
    tokens, heads, kv_heads, d, block_size = 5, 4, 2, 16, 4
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d, generator=g).to(dtype)
    # k and v as the layer passes them: strided views into the packed projection
    k = qkv[:, heads * d:(heads + kv_heads) * d].view(tokens, kv_heads, d)
    v = qkv[:, (heads + kv_heads) * d:].view(tokens, kv_heads, d)
    slots = torch.tensor([9, 2, 17, 3, 10])
    caches = [torch.zeros(6, block_size, kv_heads, d, dtype=dtype) for _ in range(4)]
    module.store_kv_triton(k, v, caches[0], caches[1], slots)
    ref.store_kv_ref(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    # a negative slot (a padding row of a captured batch) writes nothing
    module.store_kv_triton(k * 2, v * 2, caches[0], caches[1], torch.tensor([-1, -1, -1, -1, 0]))
    assert torch.equal(caches[0].view(-1, kv_heads, d)[0], (k[4] * 2))
    assert torch.equal(caches[0].view(-1, kv_heads, d)[1:], caches[2].view(-1, kv_heads, d)[1:])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", list(HEAD_LAYOUTS))
def test_attention_on_gpu(dtype, layout):
    for head_dim in (64, 128):
        check_decode(compiled("triton_paged_attention"), [1, 300, 4000, 513], layout, head_dim,
                     dtype, "cuda")
        check_decode(compiled("triton_paged_attention"), [7, 2049], layout, head_dim, dtype, "cuda",
                     block_size=64)
        check_prefill(compiled("triton_prefill_attention"), 500, 500, layout, head_dim, dtype, "cuda")
        check_prefill(compiled("triton_prefill_attention"), 77, 1300, layout, head_dim, dtype, "cuda")
