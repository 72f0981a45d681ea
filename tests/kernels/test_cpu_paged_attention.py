"""The CPU paged decode-attention kernel equals paged_decode_attention_ref: every GQA ratio,
head size, block size and cache dtype, ragged contexts, shuffled and padded block tables."""
from __future__ import annotations

import logging
import platform

import pytest
import torch

from lmserve.kernels import cpu_extension
from lmserve.kernels import cpu_paged_attention as cpa
from lmserve.kernels.paged_attention import paged_decode_attention_ref

AVX2 = (platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


@pytest.fixture(scope="module")
def ext():
    module = cpa.load_extension()
    if module is None:
        pytest.skip("CPU paged-attention extension unavailable here")
    return module


def make_problem(batch, heads, kv_heads, head_dim, block_size, context_lens, dtype=torch.float32,
                 seed=0, pad_id=0):
    """A cache with more blocks than needed, each sequence's blocks drawn in shuffled order;
    table rows padded with pad_id past each sequence's own blocks."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor(context_lens, dtype=torch.long)
    need = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(need) + 5
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((batch, max(need) + 1), pad_id, dtype=torch.long)
    for b, n in enumerate(need):
        tables[b, :n] = torch.tensor(ids[:n])
        ids = ids[n:]
    q = torch.randn(batch, heads, head_dim, generator=gen)
    return q, k_cache, v_cache, tables, lens


def check(q, k_cache, v_cache, tables, lens, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    got = cpa.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale)
    want = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, scale)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


# (heads, kv_heads): SmolLM2's 9/3, MQA, MHA, a group of 8 (two batches of 4 query rows), 5.
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (8, 1), (4, 4), (16, 2), (10, 2)])
@pytest.mark.parametrize("batch", [1, 7])
def test_matches_reference_across_gqa_ratios(ext, heads, kv_heads, batch):
    lens = [1, 63, 64, 65, 130, 200, 17][:batch] if batch > 1 else [77]
    check(*make_problem(batch, heads, kv_heads, 64, 64, lens, seed=heads + batch))


# 32 and 128 are common; 72 ends in a half chunk of 8 lanes; block sizes 8/16/64, odd lengths.
@pytest.mark.parametrize("head_dim,block_size", [(32, 16), (128, 16), (72, 8), (64, 16)])
def test_head_dims_and_block_sizes(ext, head_dim, block_size):
    check(*make_problem(4, 6, 2, head_dim, block_size, [1, 15, 33, 101], seed=head_dim))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_caches(ext, dtype):
    check(*make_problem(5, 9, 3, 64, 16, [3, 40, 64, 90, 129], dtype=dtype))


def test_many_sequences_with_ragged_contexts(ext):
    gen = torch.Generator().manual_seed(1)
    lens = torch.randint(1, 300, (64,), generator=gen).tolist()
    check(*make_problem(64, 9, 3, 64, 64, lens, seed=3))


def test_rescales_when_the_max_grows_from_block_to_block(ext):
    # Keys grow with their position in the sequence and q is positive, so every block raises
    # the running max by a lot: a missed rescale of the earlier blocks would show.
    q, k_cache, v_cache, tables, lens = make_problem(2, 4, 2, 64, 8, [60, 45])
    for b, n in enumerate(lens.tolist()):
        for i in range(-(-n // 8)):
            k_cache[tables[b, i]] += (i * 8 + torch.arange(8.0)).view(8, 1, 1) / 10
    check(q.abs(), k_cache, v_cache, tables, lens)


def test_strided_query_rows(ext):
    q, k_cache, v_cache, tables, lens = make_problem(3, 9, 3, 64, 16, [5, 50, 20])
    packed = torch.randn(3, 15, 64)                     # [q | k | v] heads of one step
    packed[:, :9] = q
    check(packed[:, :9], k_cache, v_cache, tables, lens)


def test_padding_entries_past_the_context_are_never_read(ext):
    args = make_problem(3, 9, 3, 64, 16, [5, 50, 20], pad_id=0)
    junk = make_problem(3, 9, 3, 64, 16, [5, 50, 20], pad_id=-1)[3]   # the same tables, bad padding
    scale = 0.125
    want = paged_decode_attention_ref(*args, scale)
    got = cpa.paged_decode_attention(*args[:3], junk, args[4], scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


def test_bad_tables_are_refused_with_a_message(ext):
    q, k_cache, v_cache, tables, lens = make_problem(2, 9, 3, 64, 16, [5, 20])
    room = tables.shape[1] * 16
    too_long = torch.tensor([5, room + 1])
    with pytest.raises(ValueError, match=f"context length {room + 1} of sequence 1 does not fit"):
        cpa.paged_decode_attention(q, k_cache, v_cache, tables, too_long, 0.125)
    tables[1, 1] = k_cache.shape[0]
    with pytest.raises(ValueError, match="block id .* of sequence 1 is outside the cache"):
        cpa.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.125)


@pytest.mark.skipif(not AVX2, reason="the AVX2 extension only builds on x86-64 with AVX2")
def test_extension_builds_on_avx2_machines():
    assert cpa.load_extension() is not None


def test_disabled_kernel_falls_back_to_the_reference_with_one_warning(monkeypatch, caplog):
    fresh = cpu_extension.CPUExtension(cpa._EXT.name, cpa._EXT.sources,
                                       reference=cpa._EXT.reference)
    monkeypatch.setattr(cpa, "_EXT", fresh)
    monkeypatch.setenv("LMSERVE_DISABLE_CPU_EXT", "quant_gemv,paged_attention")
    args = make_problem(2, 9, 3, 64, 16, [5, 20])
    with caplog.at_level(logging.WARNING, logger=cpu_extension.__name__):
        outs = [cpa.paged_decode_attention(*args, 0.125) for _ in range(3)]
    warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert warnings == ["lmserve CPU extension lmserve_paged_attention unavailable (disabled by "
                        "LMSERVE_DISABLE_CPU_EXT=quant_gemv,paged_attention); using the slower "
                        "torch reference paged_decode_attention_ref"]
    assert torch.equal(outs[-1], paged_decode_attention_ref(*args, 0.125))


def test_other_names_in_the_switch_leave_this_kernel_on(monkeypatch):
    monkeypatch.setenv("LMSERVE_DISABLE_CPU_EXT", "quant_gemv")
    assert cpu_extension.disabled_reason("lmserve_paged_attention") is None
    assert cpu_extension.disabled_reason("lmserve_quant_gemv") is not None


def test_attention_layer_decode_rows_alone_or_mixed_with_a_prefill():
    """PagedAttention gives each decoding row the reference result, whether the step is pure
    decode (the kernel writes the output directly) or mixed with a prompt chunk."""
    from lmserve.nn.attention import AttentionMetadata, PagedAttention, PrefillChunk

    layer = PagedAttention(9, 3, 64)
    q, k_cache, v_cache, tables, lens = make_problem(3, 9, 3, 64, 16, [5, 40, 17])
    slots = torch.stack([tables[b, (n - 1) // 16] * 16 + (n - 1) % 16
                         for b, n in enumerate(lens.tolist())])
    new_k, new_v = torch.randn(3, 3, 64), torch.randn(3, 3, 64)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    k_ref.view(-1, 3, 64)[slots], v_ref.view(-1, 3, 64)[slots] = new_k, new_v
    want = paged_decode_attention_ref(q, k_ref, v_ref, tables, lens, layer.scale)

    meta = AttentionMetadata(slots, torch.arange(3), tables, lens)
    got = layer(q, new_k, new_v, (k_cache.clone(), v_cache.clone()), meta)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)

    # The same three decode rows at rows 0, 1, 4 of a step that also has a 2-token prompt.
    prompt_q, prompt_kv = torch.randn(2, 9, 64), torch.randn(2, 3, 64)
    used = {int(tables[b, i]) for b, n in enumerate(lens.tolist()) for i in range(-(-n // 16))}
    free = min(set(range(k_cache.shape[0])) - used)       # a block no sequence above uses
    rows = torch.tensor([0, 1, 4])
    mixed = [torch.cat([x[:2], p, x[2:]]) for x, p in ((q, prompt_q), (new_k, prompt_kv),
                                                       (new_v, prompt_kv))]
    meta = AttentionMetadata(torch.cat([slots[:2], torch.tensor([free * 16, free * 16 + 1]),
                                        slots[2:]]), rows, tables, lens,
                             [PrefillChunk(2, 2, 2, torch.tensor([free]))])
    got = layer(*mixed, (k_cache.clone(), v_cache.clone()), meta)
    torch.testing.assert_close(got[rows], want, rtol=1e-5, atol=2e-6)


# Fewer (sequence, KV head) pairs than two per thread: each context is cut into pieces that the
# threads attend separately and that are merged afterwards. Ragged lengths leave some pieces empty.
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("heads,kv_heads,lens", [(9, 3, [1000]), (8, 1, [700, 65]), (4, 1, [130]),
                                                 (8, 1, [3000, 0])])
def test_small_batches_split_the_context_and_match_the_reference(ext, threads, heads, kv_heads, lens):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check(*make_problem(len(lens), heads, kv_heads, 64, 16, lens, seed=len(lens) + heads))
    finally:
        torch.set_num_threads(saved)
