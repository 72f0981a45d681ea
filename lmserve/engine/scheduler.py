"""Continuous batching with chunked prefill, preemption and stateful sessions.

Policy, once per step:
1. Running sequences first, oldest first. A decoding sequence needs one token; one still in its
   prompt gets the next chunk that fits in the step's token budget (`max_prefill_token_num`). If
   the cache has no block for it, the idle sessions' cached K/V is dropped first (they recompute on
   their next turn), then the newest running sequence is preempted: its blocks are freed and it goes
   back to the head of the queue, to be recomputed later (prompt and generated tokens alike). So the
   oldest requests always progress: no crash and no deadlock.
2. Then waiting sequences join, first come first served, while the budget, `max_batch_size` and the
   free blocks allow. A newcomer first takes whatever prefix of it is already cached.

A session keeps its token history and blocks between turns. A new turn keeps the K/V of the longest
common prefix of the history and the new prompt, so only new tokens are prefilled.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from lmserve.engine.block_manager import BlockManager
from lmserve.engine.sequence import Sequence, SeqStatus

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.seqs)


@dataclass(slots=True)
class _SessionState:
    token_ids: list[int]
    block_table: list[int]
    num_computed_tokens: int
    last_used: float
    busy: bool = False


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_batch_size: int, max_tokens_per_step: int):
        self.blocks = block_manager
        self.max_batch_size = max_batch_size
        self.max_tokens_per_step = max_tokens_per_step
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.sessions: dict[int, _SessionState] = {}
        self.num_preemptions = 0

    # ---- requests -------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.session_id is not None:
            self._attach_session(seq)
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> Sequence | None:
        for seq in list(self.running) + list(self.waiting):
            if seq.request_id == request_id:
                self.finish(seq, "abort")
                return seq
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = SeqStatus.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        state = self.sessions.get(seq.session_id) if seq.session_id is not None else None
        if state is not None and state.busy:
            state.busy = False
            state.token_ids, state.block_table = seq.token_ids, seq.block_table
            state.num_computed_tokens, state.last_used = seq.num_computed_tokens, time.monotonic()
            self.blocks.cache_full_blocks(seq)
            seq.block_table = []
        else:
            self.blocks.free(seq)

    # ---- sessions -------------------------------------------------------------------------------
    def _attach_session(self, seq: Sequence) -> None:
        state = self.sessions.get(seq.session_id)
        if state is not None and state.busy:
            raise ValueError(f"session {seq.session_id} is busy with another request")
        if state is None:
            state = self.sessions[seq.session_id] = _SessionState([], [], 0, time.monotonic())
        state.busy = True
        # Reuse the K/V of the longest common prefix; keep one token to compute for logits.
        lcp = 0
        limit = min(state.num_computed_tokens, len(seq.token_ids) - 1)
        while lcp < limit and state.token_ids[lcp] == seq.token_ids[lcp]:
            lcp += 1
        seq.block_table, seq.num_computed_tokens = state.block_table, state.num_computed_tokens
        state.block_table = []
        self.blocks.truncate(seq, lcp)
        seq.num_cached_prefix_tokens = seq.num_computed_tokens

    def end_session(self, session_id: int) -> bool:
        """Forget a session and free its blocks. False if unknown."""
        state = self.sessions.pop(session_id, None)
        if state is None:
            return False
        if state.busy:   # its running request keeps going; its blocks are freed when it ends
            for seq in list(self.running) + list(self.waiting):
                if seq.session_id == session_id:
                    seq.session_id = None
            return True
        self.blocks.release(state.block_table)
        return True

    def _drop_idle_session_cache(self) -> bool:
        idle = [s for s in self.sessions.values() if not s.busy and s.block_table]
        if not idle:
            return False
        state = min(idle, key=lambda s: s.last_used)
        self.blocks.release(state.block_table)
        state.block_table, state.num_computed_tokens = [], 0
        return True

    # ---- the step -------------------------------------------------------------------------------
    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        logger.info("preempted request %s (%d tokens) for lack of KV blocks", seq.request_id, seq.num_tokens)

    def _reserve_or_make_room(self, seq: Sequence, num_tokens: int) -> bool:
        while not self.blocks.reserve(seq, num_tokens):
            if self._drop_idle_session_cache():
                continue
            victim = self.running[-1] if self.running else None
            if victim is None or victim is seq:
                return False
            self._preempt(victim)
        return True

    def schedule(self) -> tuple[ScheduledBatch, list[Sequence]]:
        """Returns the step's batch and the sequences that had to stop because the cache is full."""
        batch, stopped = ScheduledBatch(), []
        budget = self.max_tokens_per_step
        for seq in list(self.running):
            if seq not in self.running or budget <= 0:   # preempted meanwhile, or no budget left
                continue
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self._reserve_or_make_room(seq, seq.num_computed_tokens + num_new):
                if len(self.running) == 1:
                    # Alone and still no room: the cache cannot hold this sequence any longer.
                    self.finish(seq, "length")
                    stopped.append(seq)
                else:
                    self._preempt(seq)
                continue
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            self.blocks.match_prefix(seq)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self._admit(seq, num_new):
                break
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        return batch, stopped

    def _admit(self, seq: Sequence, num_new: int) -> bool:
        total = seq.num_computed_tokens + num_new
        while not self.blocks.reserve(seq, total):
            if not self._drop_idle_session_cache():
                return False
        return True

    def postprocess(self, batch: ScheduledBatch) -> None:
        """Account the tokens the step computed and publish newly full blocks to the prefix cache."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
            self.blocks.cache_full_blocks(seq)
