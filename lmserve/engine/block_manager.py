"""Paged KV-cache bookkeeping: which block holds which tokens, and the prefix cache.

The cache is `num_blocks` blocks of `block_size` token slots. A sequence owns an ordered block table;
token t of it lives in slot `block_table[t // block_size] * block_size + t % block_size`.

Prefix caching: once a block is full, it is named by a hash chained over every token before it
(hash(previous block's hash, this block's tokens)), so equal hashes mean equal prefixes. Its tokens are
kept too and compared on a hit, so a hash collision can never serve wrong K/V. Blocks are
reference-counted; a block nobody references stays findable in the free list until it is reused,
oldest first (LRU), while blocks that hold nothing reusable are handed out before any cached one.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from lmserve.engine.sequence import Sequence


@dataclass(slots=True)
class _Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    tokens: tuple[int, ...] | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._by_hash: dict[int, int] = {}
        self.prefix_queries = 0     # full blocks looked up
        self.prefix_hits = 0        # of those, found

    # ---- capacity -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache ---------------------------------------------------------------------------
    def _chain_hash(self, prev: int | None, tokens: tuple[int, ...]) -> int:
        return hash((prev, tokens))

    def match_prefix(self, seq: Sequence) -> None:
        """Give a sequence with no blocks yet the cached blocks of its longest known prefix.

        At least the last prompt token is left to compute: its logits are needed to sample.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return
        bs = self.block_size
        prev = None
        for start in range(0, seq.num_tokens - 1 - bs + 1, bs):
            tokens = tuple(seq.token_ids[start:start + bs])
            h = self._chain_hash(prev, tokens)
            self.prefix_queries += 1
            block_id = self._by_hash.get(h)
            if block_id is None or self._blocks[block_id].tokens != tokens:
                break
            self.prefix_hits += 1
            self._take(block_id)
            seq.block_table.append(block_id)
            prev = h
        seq.num_computed_tokens = len(seq.block_table) * bs
        seq.num_cached_prefix_tokens = seq.num_computed_tokens

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Name the sequence's blocks that became full of computed tokens, so others can reuse them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        prev = None
        for i in range(seq.num_computed_tokens // bs):
            block = self._blocks[seq.block_table[i]]
            if block.hash is not None:
                prev = block.hash
                continue
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = self._chain_hash(prev, tokens)
            if h not in self._by_hash:      # an equal block computed twice stays anonymous
                block.hash, block.tokens = h, tokens
                self._by_hash[h] = block.block_id
            prev = h

    # ---- allocation -----------------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _allocate_one(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.hash is not None:          # evict it from the prefix cache
            del self._by_hash[block.hash]
            block.hash = block.tokens = None
        block.ref_count = 1
        return block_id

    def reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Make the block table hold `num_tokens` tokens; False (and no change) if blocks run out."""
        need = self.blocks_needed(num_tokens) - len(seq.block_table)
        if need <= 0:
            return True
        if need > len(self._free):
            return False
        seq.block_table.extend(self._allocate_one() for _ in range(need))
        return True

    def free(self, seq: Sequence) -> None:
        self.release(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Keep K/V of the first `num_tokens` tokens only (a session whose new prompt diverges)."""
        bs = self.block_size
        keep_blocks = self.blocks_needed(num_tokens)
        if num_tokens % bs and keep_blocks:
            last = self._blocks[seq.block_table[keep_blocks - 1]]
            if last.ref_count > 1 or last.hash is not None:
                # Writing into a shared or cached block would corrupt others: recompute it instead.
                keep_blocks -= 1
                num_tokens = keep_blocks * bs
        self.release(seq.block_table[keep_blocks:])
        del seq.block_table[keep_blocks:]
        seq.num_computed_tokens = min(seq.num_computed_tokens, num_tokens)

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference to each block: a finished sequence's, or an idle session's KV."""
        # Free the tail first so that, among cached blocks, deeper prefixes are evicted first.
        for block_id in reversed(block_ids):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.hash is None:      # nothing reusable: hand it out before cached blocks
                    self._free.move_to_end(block_id, last=False)

    def reset_prefix_cache(self) -> None:
        for block in self._blocks:
            if block.hash is not None:
                del self._by_hash[block.hash]
                block.hash = block.tokens = None
