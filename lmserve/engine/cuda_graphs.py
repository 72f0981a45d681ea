"""CUDA graphs of decode steps: one captured forward per padded batch size, replayed per step.

A decode step of a small batch is a few hundred short kernel launches; launching them costs more
than running them. Replaying a captured graph launches them all at once. A graph fixes its tensors'
addresses and shapes, so every input lives in a static buffer sized for the largest batch, a step of
n sequences runs the graph of the smallest captured size >= n, and the padding rows are made
harmless: slot -1 (the Triton store skips it), context length 1 in block 0, outputs dropped.
The block-table width is fixed at the session's block count, so decode always takes the split-K
attention grid sized for the longest session (splits past a sequence's end return at once).

Used only on CUDA with the Triton kernels (the torch reference cannot skip slot -1), and not with
--eager-mode. Prompt chunks always run eagerly.
"""
from __future__ import annotations

import logging

import torch

from lmserve.nn.attention import AttentionMetadata

logger = logging.getLogger(__name__)


def capture_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16, up to and including max_batch_size."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch_size]
    sizes += list(range(16, max_batch_size, 16))
    return sizes + [max_batch_size]


class DecodeGraphs:
    def __init__(self, model, kv_caches, max_batch_size: int, max_blocks_per_seq: int,
                 device: torch.device):
        self.model, self.kv_caches, self.device = model, kv_caches, device
        self.sizes = capture_sizes(max_batch_size)
        n, long = self.sizes[-1], dict(dtype=torch.long, device=device)
        self.input_ids = torch.zeros(n, **long)
        self.positions = torch.zeros(n, **long)
        self.slots = torch.full((n,), -1, **long)
        self.rows = torch.arange(n, **long)
        self.block_tables = torch.zeros((n, max_blocks_per_seq), **long)
        self.context_lens = torch.ones(n, **long)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slots[:size], decode_rows=self.rows[:size],
                                 decode_block_tables=self.block_tables[:size],
                                 decode_context_lens=self.context_lens[:size])

    def _forward(self, size: int) -> torch.Tensor:
        return self.model(self.input_ids[:size], self.positions[:size], self.kv_caches,
                          self._meta(size))

    @torch.inference_mode()
    def capture(self) -> None:
        """Largest first, all in one memory pool: smaller graphs reuse the largest one's memory."""
        pool = None
        for size in reversed(self.sizes):
            self._forward(size)                       # warm-up: compiles the Triton kernels
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = (graph, out)
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def can_run(self, meta: AttentionMetadata, num_tokens: int) -> bool:
        """A pure decode step (one token per sequence) that a captured graph can hold."""
        return (not meta.prefills and meta.decode_rows is not None and num_tokens <= self.sizes[-1]
                and meta.decode_block_tables.shape[1] <= self.block_tables.shape[1])

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [n, hidden] of a decode step, by replaying the graph of the next size up.

        meta.decode_rows is 0..n-1 in a pure decode step, so row i of the inputs is sequence i.
        """
        n = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        width = meta.decode_block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(meta.slot_mapping)
        self.slots[n:size].fill_(-1)
        self.block_tables[:n, :width].copy_(meta.decode_block_tables)
        self.context_lens[:n].copy_(meta.decode_context_lens)
        self.context_lens[n:size].fill_(1)
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]


def maybe_decode_graphs(model, kv_caches, cfg, device: torch.device, session_len: int,
                        block_size: int) -> DecodeGraphs | None:
    """Captured decode graphs on CUDA with the Triton kernels unless --eager-mode; else None."""
    from lmserve.kernels.triton_support import triton_importable
    if device.type != "cuda" or cfg.eager_mode or not triton_importable():
        return None
    graphs = DecodeGraphs(model, kv_caches, cfg.max_batch_size, -(-session_len // block_size),
                          device)
    graphs.capture()
    return graphs
