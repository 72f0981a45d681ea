"""Refuse a --tp that cannot work, before any worker process starts, with the reason and the fix.

Heads: each rank holds num_heads / tp query heads, so tp must divide them; KV heads are split the
same way when there are at least tp of them, and otherwise each is replicated over tp / kv ranks,
so the two must divide one another. Placement: on CUDA one GPU per rank of a node; on CPU one core
per rank, since ranks meet in every layer's all-reduce and a rank without a core stalls all others.
--tp-oversubscribe lifts the CPU rule (CI's 2 cores run a tp 3 test with it).
"""
from __future__ import annotations

import os

from lmserve.config import EngineConfig
from lmserve.model.config import ModelConfig


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def valid_tp_sizes(model_cfg: ModelConfig) -> list[int]:
    heads, kv, inter = model_cfg.num_heads, model_cfg.num_kv_heads, model_cfg.intermediate_size
    return [t for t in range(1, heads + 1)
            if heads % t == 0 and (kv % t == 0 or t % kv == 0) and inter % t == 0]


def check_model_split(tp: int, model_cfg: ModelConfig) -> None:
    heads, kv = model_cfg.num_heads, model_cfg.num_kv_heads
    choices = ", ".join(map(str, valid_tp_sizes(model_cfg)))
    if heads % tp:
        raise ValueError(f"--tp {tp} does not divide the model's {heads} attention heads (each rank "
                         f"holds heads/tp of them); valid --tp for this model: {choices}")
    if kv % tp and tp % kv:
        raise ValueError(f"--tp {tp} and the model's {kv} KV heads must divide one another (each rank "
                         f"holds kv/tp of them, or one shared by tp/kv ranks); valid --tp for this "
                         f"model: {choices}")
    if model_cfg.intermediate_size % tp:
        raise ValueError(f"--tp {tp} does not divide the model's MLP width "
                         f"{model_cfg.intermediate_size}; valid --tp for this model: {choices}")


def check_placement(cfg: EngineConfig, device_type: str, cuda_devices: int | None = None,
                    cpus: int | None = None) -> None:
    """The ranks this node runs must each get a GPU (CUDA) or a core (CPU)."""
    local = cfg.tp // cfg.nnodes
    where = "this node" if cfg.nnodes > 1 else "this machine"
    if device_type == "cuda":
        if cuda_devices is None:
            import torch
            cuda_devices = torch.cuda.device_count()
        if local > cuda_devices:
            raise ValueError(f"--tp {cfg.tp} runs {local} ranks on {where}, one GPU each, but torch "
                             f"sees {cuda_devices} GPU(s); lower --tp or add --nnodes")
        return
    cpus = usable_cpus() if cpus is None else cpus
    if local > cpus and not cfg.tp_oversubscribe:
        raise ValueError(f"--tp {cfg.tp} runs {local} ranks on {where} but only {cpus} CPU core(s) "
                         f"are usable; each rank needs a core of its own (pass --tp-oversubscribe to "
                         f"run anyway, much slower)")


def check_tp(cfg: EngineConfig, model_cfg: ModelConfig, device_type: str) -> None:
    if cfg.tp == 1:
        return
    check_model_split(cfg.tp, model_cfg)
    check_placement(cfg, device_type)


def threads_per_rank(cfg: EngineConfig) -> int:
    """CPU threads each rank of a node uses: the node's cores shared out, at least one."""
    return max(1, usable_cpus() // (cfg.tp // cfg.nnodes))
