"""Block accounting: prefix-cache hits with token check, refcounts, LRU eviction, truncation."""
from __future__ import annotations

from lmserve.config import GenerationConfig
from lmserve.engine.block_manager import BlockManager
from lmserve.engine.sequence import Sequence


def _seq(tokens):
    return Sequence("r", list(tokens), len(tokens), GenerationConfig())


def test_prefix_hit_shares_blocks_and_counts():
    bm = BlockManager(8, 4, enable_prefix_caching=True)
    a = _seq(range(10))
    assert bm.reserve(a, 10)
    a.num_computed_tokens = 10
    bm.cache_full_blocks(a)
    b = _seq(list(range(8)) + [99, 98, 97])
    bm.match_prefix(b)
    assert b.block_table == a.block_table[:2] and b.num_computed_tokens == 8
    assert bm.prefix_hits == 2
    bm.free(a)
    assert bm.num_free_blocks == 8 - 2           # b still holds the two shared blocks


def test_last_prompt_token_is_always_computed():
    bm = BlockManager(8, 4, enable_prefix_caching=True)
    a = _seq(range(8))
    bm.reserve(a, 8)
    a.num_computed_tokens = 8
    bm.cache_full_blocks(a)
    b = _seq(range(8))
    bm.match_prefix(b)
    assert b.num_computed_tokens == 4            # the second block holds the last token: recompute it


def test_freed_cached_blocks_are_found_until_evicted_lru():
    bm = BlockManager(4, 2, enable_prefix_caching=True)
    a = _seq([1, 2, 3, 4, 5])
    bm.reserve(a, 5)
    a.num_computed_tokens = 5
    bm.cache_full_blocks(a)
    bm.free(a)
    again = _seq([1, 2, 3, 4, 5])
    bm.match_prefix(again)
    assert again.num_computed_tokens == 4
    bm.free(again)
    hog = _seq(range(100, 108))
    assert bm.reserve(hog, 8)                    # needs every block: cached ones are evicted
    late = _seq([1, 2, 3, 4, 5])
    bm.match_prefix(late)
    assert late.num_computed_tokens == 0


def test_reserve_fails_without_partial_allocation():
    bm = BlockManager(3, 4)
    s = _seq(range(20))
    assert not bm.reserve(s, 20)
    assert s.block_table == [] and bm.num_free_blocks == 3


def test_truncate_keeps_prefix_and_never_writes_into_a_cached_block():
    bm = BlockManager(8, 4, enable_prefix_caching=True)
    s = _seq(range(12))
    bm.reserve(s, 12)
    s.num_computed_tokens = 12
    bm.cache_full_blocks(s)
    bm.truncate(s, 6)          # block 1 is cached and would be overwritten from slot 2: drop it
    assert len(s.block_table) == 1 and s.num_computed_tokens == 4
