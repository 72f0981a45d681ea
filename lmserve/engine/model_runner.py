"""Owns the model and its KV cache: turns a scheduled batch into tensors, runs it, samples.

On CPU the model runs in float32 unless told otherwise: these CPUs have no fast half-precision
matmul (measured: bf16 GEMM at batch 64 is 5x slower than fp32), and fp32 matches the reference.
"""
from __future__ import annotations

import logging
import math
import mmap
import os

import torch

from lmserve.config import EngineConfig
from lmserve.engine.cuda_graphs import maybe_decode_graphs
from lmserve.engine.scheduler import ScheduledBatch
from lmserve.engine.sequence import Sequence
from lmserve.model.config import ModelConfig
from lmserve.model.llama import LlamaForCausalLM
from lmserve.nn.attention import AttentionMetadata, PrefillChunk
from lmserve.nn.parallel import ParallelContext
from lmserve.nn.sampler import SampleResult, SampleRow, sample

logger = logging.getLogger(__name__)

_CPU_CACHE_CAP = 4 << 30   # CPU KV budget is a fraction of min(available RAM, 4 GiB)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(cfg: EngineConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(cfg.device)


def resolve_dtype(cfg: EngineConfig, model_cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        return _DTYPES[cfg.dtype]
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if model_cfg.torch_dtype == "bfloat16" else torch.float16


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _move_loaded_weights(model: torch.nn.Module, device: torch.device) -> None:
    """Linear and embedding layers hold their loaded weights as plain attributes (a tensor or a
    QuantWeight, made on CPU by the loader), which the device context the model was built in does
    not reach: move them to the model's device."""
    if device.type == "cpu":
        return
    for module in model.modules():
        for name in ("weight", "_weight", "bias"):   # _weight: an untied lm_head
            value = module.__dict__.get(name)
            if value is not None and hasattr(value, "to"):
                setattr(module, name, value.to(device))


class ModelRunner:
    def __init__(self, model_cfg: ModelConfig, weights, cfg: EngineConfig, session_len: int,
                 parallel: ParallelContext = ParallelContext()):
        self.cfg, self.model_cfg = cfg, model_cfg
        self.device = resolve_device(cfg)
        self.dtype = resolve_dtype(cfg, model_cfg, self.device)
        self.block_size = cfg.cache_block_seq_len
        with torch.device(self.device):
            self.model = LlamaForCausalLM(model_cfg, self.dtype, session_len, parallel)
        self.model.load_weights(weights)
        _move_loaded_weights(self.model, self.device)
        self.model.eval()
        kv_heads, d = self.model.num_local_kv_heads, model_cfg.head_dim
        elem = torch.finfo(self.dtype).bits // 8
        self.kv_bytes_per_token = 2 * model_cfg.num_layers * kv_heads * d * elem
        self.num_blocks = self._count_blocks()
        shape = (self.num_blocks, self.block_size, kv_heads, d)
        self.kv_caches = [(self._zeros(shape), self._zeros(shape)) for _ in range(model_cfg.num_layers)]
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.decode_graphs = maybe_decode_graphs(self.model, self.kv_caches, cfg, self.device,
                                                 session_len, self.block_size)

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.device.type != "cpu":
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Anonymous mmap pages read as zero and are committed on first write, so start-up does not
        # memset gigabytes of cache (torch.zeros took 7 s for the default 3.2 GB CPU budget).
        nbytes = math.prod(shape) * torch.finfo(self.dtype).bits // 8
        return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=self.dtype).view(shape)

    def _count_blocks(self) -> int:
        if self.cfg.num_blocks is not None:
            return self.cfg.num_blocks
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free * self.cfg.cache_max_entry_count
        else:
            budget = min(_available_ram(), _CPU_CACHE_CAP) * self.cfg.cache_max_entry_count
        blocks = int(budget // (self.kv_bytes_per_token * self.block_size))
        if blocks < 1:
            raise ValueError("not enough memory for a single KV block; lower the model size or set --num-blocks")
        return blocks

    # ---- one step -------------------------------------------------------------------------------
    def _slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[t // bs] * bs + t % bs for t in range(start, end)]

    def _prepare(self, batch: ScheduledBatch):
        ids, positions, slots = [], [], []
        decode_rows, decode_tables, decode_lens = [], [], []
        prefills, sample_rows = [], []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, row = seq.num_computed_tokens, len(ids)
            ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            slots.extend(self._slots(seq, start, start + n))
            if n == 1:
                decode_rows.append(row)
                decode_tables.append(seq.block_table)
                decode_lens.append(start + 1)
            else:
                prefills.append(PrefillChunk(row, n, start + n, torch.tensor(seq.block_table, device=self.device)))
            if start + n == seq.num_tokens:
                sample_rows.append(row + n - 1)
        dev = self.device
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev), prefills=prefills)
        if decode_rows:
            width = max(len(t) for t in decode_tables)
            padded = [t + [0] * (width - len(t)) for t in decode_tables]
            meta.decode_rows = torch.tensor(decode_rows, dtype=torch.long, device=dev)
            meta.decode_block_tables = torch.tensor(padded, dtype=torch.long, device=dev)
            meta.decode_context_lens = torch.tensor(decode_lens, dtype=torch.long, device=dev)
        return (torch.tensor(ids, dtype=torch.long, device=dev),
                torch.tensor(positions, dtype=torch.long, device=dev), meta, sample_rows)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, rows: list[SampleRow]) -> SampleResult | None:
        """Run the batch; sample one token for each sequence whose prompt is fully computed.

        `rows` describes those sequences, in batch order.
        """
        input_ids, positions, meta, sample_rows = self._prepare(batch)
        if self.decode_graphs is not None and self.decode_graphs.can_run(meta, len(input_ids)):
            hidden = self.decode_graphs.run(input_ids, positions, meta)
        else:
            hidden = self.model(input_ids, positions, self.kv_caches, meta)
        if not sample_rows:
            return None
        logits = self.model.compute_logits(hidden[sample_rows])
        return sample(logits, rows, self.generator)
