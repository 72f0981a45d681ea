"""Owns the model and its KV cache: turns a scheduled batch into tensors, runs it, samples.

On CPU the model runs in float32 unless told otherwise: these CPUs have no fast half-precision
matmul (measured: bf16 GEMM at batch 64 is 5x slower than fp32), and fp32 matches the reference.
"""
from __future__ import annotations

import logging
import math
import mmap
import os
from typing import TYPE_CHECKING

import torch

from lmserve.config import EngineConfig
from lmserve.engine.cpu_setup import apply_cpu_gemm_dtype, keep_freed_memory
from lmserve.engine.cuda_graphs import maybe_decode_graphs
from lmserve.engine.scheduler import ScheduledBatch
from lmserve.engine.step_plan import StepPlan
from lmserve.kernels.cpu_decode_stack import build_decode_stack
from lmserve.kernels.kv_quant import QuantKVCache, bytes_per_token_head
from lmserve.model.config import ModelConfig
from lmserve.model.llama import LlamaForCausalLM
from lmserve.nn.parallel import ParallelContext
from lmserve.nn.sampler import SampleResult, SampleRow, sample

if TYPE_CHECKING:
    from lmserve.engine.tp.channel import ControlChannel

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
                 parallel: ParallelContext = ParallelContext(), channel: ControlChannel | None = None):
        self.cfg, self.model_cfg, self.channel = cfg, model_cfg, channel
        self.device = resolve_device(cfg)
        self.dtype = resolve_dtype(cfg, model_cfg, self.device)
        self.kv_bits = cfg.quant_policy
        if self.kv_bits and self.device.type != "cpu":     # checked before the weights are loaded
            raise ValueError(f"--quant-policy {self.kv_bits} (KV cache int{self.kv_bits}) runs on CPU "
                             f"only for now: the CUDA attention kernels do not read a quantized cache; "
                             f"use --quant-policy 0 on {self.device.type}")
        self.block_size = cfg.cache_block_seq_len
        with torch.device(self.device):
            self.model = LlamaForCausalLM(model_cfg, self.dtype, session_len, parallel)
        self.model.load_weights(weights)
        _move_loaded_weights(self.model, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
            apply_cpu_gemm_dtype(self.model, cfg.cpu_gemm_dtype)
        self.model.eval()
        if self.device.type == "cpu" and not cfg.eager_mode:
            self.model.decode_stack = build_decode_stack(self.model, self.kv_bits)
        kv_heads, d = self.model.num_local_kv_heads, model_cfg.head_dim
        per_head = (bytes_per_token_head(d, self.kv_bits) if self.kv_bits
                    else d * torch.finfo(self.dtype).bits // 8)
        self.kv_bytes_per_token = 2 * model_cfg.num_layers * kv_heads * per_head
        self.num_blocks = self._count_blocks()
        if channel is not None:         # every rank's cache must hold the same blocks
            self.num_blocks = channel.agree_startup(self.num_blocks)
        self.kv_caches = [self._layer_cache(kv_heads, d) for _ in range(model_cfg.num_layers)]
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.decode_graphs = maybe_decode_graphs(self.model, self.kv_caches, cfg, self.device,
                                                 session_len, self.block_size)

    @property
    def kv_cache_kind(self) -> str:
        """What one cached element is, for the start-up line."""
        if not self.kv_bits:
            return str(self.dtype).removeprefix("torch.")
        rotated = ", rotated" if self.cfg.kv_rotated else ""
        return f"int{self.kv_bits} + fp16 scale/zero per token and head{rotated}"

    def _layer_cache(self, kv_heads: int, head_dim: int):
        if self.kv_bits:
            return QuantKVCache.allocate(self.num_blocks, self.block_size, kv_heads, head_dim,
                                         self.kv_bits, self.cfg.kv_rotated, self._zeros)
        shape = (self.num_blocks, self.block_size, kv_heads, head_dim)
        return self._zeros(shape), self._zeros(shape)

    def _zeros(self, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if self.device.type != "cpu":
            return torch.zeros(shape, dtype=dtype, device=self.device)
        # Anonymous mmap pages read as zero and are committed on first write, so start-up does not
        # memset gigabytes of cache (torch.zeros took 7 s for the default 3.2 GB CPU budget).
        nbytes = math.prod(shape) * (torch.finfo(dtype).bits if dtype.is_floating_point
                                     else torch.iinfo(dtype).bits) // 8
        return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).view(shape)

    def _count_blocks(self) -> int:
        if self.cfg.num_blocks is not None:
            return self.cfg.num_blocks
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free * self.cfg.cache_max_entry_count
        else:
            # the ranks of one node share its RAM
            budget = min(_available_ram(), _CPU_CACHE_CAP) * self.cfg.cache_max_entry_count
            budget /= self.cfg.tp // self.cfg.nnodes
        blocks = int(budget // (self.kv_bytes_per_token * self.block_size))
        if blocks < 1:
            raise ValueError("not enough memory for a single KV block; lower the model size or set --num-blocks")
        return blocks

    # ---- one step -------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, rows: list[SampleRow]) -> SampleResult | None:
        """Run the batch; sample one token for each sequence whose prompt is fully computed.

        `rows` describes those sequences, in batch order. Under TP the workers run the same plan.
        """
        plan = StepPlan.from_batch(batch, self.block_size)
        if self.channel is not None:
            self.channel.send_step(plan)
        logits = self.execute(plan)
        return None if logits is None else sample(logits, rows, self.generator)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> torch.Tensor | None:
        """The forward of one step on this rank -> logits of the sampled rows (every rank gets them:
        the head's all-gather is a collective all ranks join)."""
        input_ids, positions, meta, sample_rows = plan.inputs(self.device)
        if self.decode_graphs is not None and self.decode_graphs.can_run(meta, len(input_ids)):
            hidden = self.decode_graphs.run(input_ids, positions, meta)
        else:
            hidden = self.model(input_ids, positions, self.kv_caches, meta)
        if not sample_rows:
            return None
        return self.model.compute_logits(hidden[sample_rows])
