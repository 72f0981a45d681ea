"""What one engine step computes, as plain integers: the tokens, where their K/V goes, and which
rows are sampled.

The scheduler's batch becomes a StepPlan on rank 0. Under tensor parallelism the plan travels to
the worker ranks as one flat int64 tensor (`pack`/`unpack`), so every rank builds identical model
inputs from it (`inputs`) and runs the same forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmserve.engine.scheduler import ScheduledBatch
from lmserve.nn.attention import AttentionMetadata, PrefillChunk

# header: input tokens, decoding rows, widest decode block table, prefill chunks,
# total prefill block-table length, sampled rows
HEADER_LEN = 6


@dataclass(slots=True)
class StepPlan:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    decode_rows: list[int] = field(default_factory=list)
    decode_tables: list[list[int]] = field(default_factory=list)
    decode_lens: list[int] = field(default_factory=list)
    prefills: list[tuple[int, int, int, list[int]]] = field(default_factory=list)  # q_start, q_len, ctx, table
    sample_rows: list[int] = field(default_factory=list)

    @classmethod
    def from_batch(cls, batch: ScheduledBatch, block_size: int) -> StepPlan:
        plan = cls()
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, row, table = seq.num_computed_tokens, len(plan.input_ids), seq.block_table
            plan.input_ids.extend(seq.token_ids[start:start + n])
            plan.positions.extend(range(start, start + n))
            plan.slots.extend(table[t // block_size] * block_size + t % block_size for t in range(start, start + n))
            if n == 1:
                plan.decode_rows.append(row)
                plan.decode_tables.append(list(table))
                plan.decode_lens.append(start + 1)
            else:
                plan.prefills.append((row, n, start + n, list(table)))
            if start + n == seq.num_tokens:
                plan.sample_rows.append(row + n - 1)
        return plan

    def inputs(self, device: torch.device):
        """-> (input_ids, positions, AttentionMetadata, sample_rows) on `device`."""
        def tensor(values):
            return torch.tensor(values, dtype=torch.long, device=device)
        prefills = [PrefillChunk(q_start, q_len, ctx, tensor(table)) for q_start, q_len, ctx, table in self.prefills]
        meta = AttentionMetadata(slot_mapping=tensor(self.slots), prefills=prefills)
        if self.decode_rows:
            width = max(len(t) for t in self.decode_tables)
            meta.decode_rows = tensor(self.decode_rows)
            meta.decode_block_tables = tensor([t + [0] * (width - len(t)) for t in self.decode_tables])
            meta.decode_context_lens = tensor(self.decode_lens)
        return tensor(self.input_ids), tensor(self.positions), meta, self.sample_rows

    # ---- the wire form ---------------------------------------------------------------------------
    def pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (header [HEADER_LEN], payload) int64 CPU tensors; the header sizes the payload."""
        width = max((len(t) for t in self.decode_tables), default=0)
        prefill_tables = [b for *_, table in self.prefills for b in table]
        header = [len(self.input_ids), len(self.decode_rows), width, len(self.prefills),
                  len(prefill_tables), len(self.sample_rows)]
        payload = [*self.input_ids, *self.positions, *self.slots, *self.decode_rows, *self.decode_lens]
        for table in self.decode_tables:
            payload.extend(table + [-1] * (width - len(table)))
        for q_start, q_len, ctx, table in self.prefills:
            payload.extend((q_start, q_len, ctx, len(table)))
        payload.extend(prefill_tables)
        payload.extend(self.sample_rows)
        return torch.tensor(header, dtype=torch.long), torch.tensor(payload, dtype=torch.long)

    @staticmethod
    def payload_len(header: torch.Tensor) -> int:
        tokens, decodes, width, prefills, prefill_blocks, samples = header.tolist()
        return 3 * tokens + 2 * decodes + decodes * width + 4 * prefills + prefill_blocks + samples

    @classmethod
    def unpack(cls, header: torch.Tensor, payload: torch.Tensor) -> StepPlan:
        tokens, decodes, width, prefills, _, samples = header.tolist()
        values, at = payload.tolist(), 0

        def take(n: int) -> list[int]:
            nonlocal at
            at += n
            return values[at - n:at]
        plan = cls(input_ids=take(tokens), positions=take(tokens), slots=take(tokens),
                   decode_rows=take(decodes), decode_lens=take(decodes))
        plan.decode_tables = [[b for b in take(width) if b >= 0] for _ in range(decodes)]
        heads = [take(4) for _ in range(prefills)]
        plan.prefills = [(q_start, q_len, ctx, take(n)) for q_start, q_len, ctx, n in heads]
        plan.sample_rows = take(samples)
        return plan
