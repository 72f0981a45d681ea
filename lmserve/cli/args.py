"""Flags shared by every command that runs an engine, mapped onto EngineConfig/GenerationConfig.

Every flag is accepted with dashes and with underscores (`--max-batch-size`, `--max_batch_size`).
"""
from __future__ import annotations

import argparse

from lmserve.config import ChatTemplateConfig, EngineConfig, GenerationConfig


def add_flag(parser, name: str, **kwargs) -> None:
    dashed = "--" + name.replace("_", "-")
    underscored = "--" + name
    names = [dashed] if dashed == underscored else [dashed, underscored]
    parser.add_argument(*names, dest=name, **kwargs)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    add_flag(g, "model_name", default=None, help="built-in chat template (see `lmserve list`)")
    add_flag(g, "meta_instruction", default=None, help="system prompt")
    add_flag(g, "session_len", type=int, default=None, help="max tokens of a session (default: model context)")
    add_flag(g, "cache_max_entry_count", type=float, default=0.8,
             help="KV cache size: fraction of free GPU memory, or on CPU of min(available RAM, 4 GiB)")
    add_flag(g, "cache_block_seq_len", type=int, default=64, help="tokens per KV block")
    add_flag(g, "num_blocks", type=int, default=None, help="explicit KV block count (overrides the fraction)")
    add_flag(g, "max_batch_size", type=int, default=64)
    add_flag(g, "max_prefill_token_num", type=int, default=4096, help="token budget per step (chunked prefill)")
    add_flag(g, "enable_prefix_caching", action="store_true")
    add_kv_quant_args(g)
    add_flag(g, "dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    add_flag(g, "device", default="auto", choices=["auto", "cpu", "cuda"])
    add_flag(g, "load_format", default="auto", choices=["auto", "hf", "gguf", "dummy"])
    add_flag(g, "dequantize_gguf", action="store_true",
             help="run a GGUF's low-bit weights as floats (default on CPU: kept low-bit, faster)")
    add_flag(g, "cpu_gemm_dtype", default="float32", choices=["float32", "bfloat16", "bf16x3"],
             help="CPU: low-bit matmuls above decode size (prefill, big batches): float32 (exact), "
                  "bfloat16 (fast with AMX-BF16, rounded to bf16) or bf16x3 (AMX-BF16, three bf16 "
                  "products of split halves, accurate to ~2^-16)")
    add_flag(g, "eager_mode", action="store_true", help="run decode steps module by module: without CUDA graphs on CUDA, without the fused decode stack on CPU")
    add_flag(g, "log_level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_tp_args(parser)


def add_kv_quant_args(g) -> None:
    """KV-cache quantization flags, shared by the engine commands and `eval ppl`."""
    add_flag(g, "quant_policy", type=int, default=0, choices=[0, 4, 8],
             help="KV cache int4 (4) / int8 (8), LMDeploy's meaning; CPU only (docs/quantization.md)")
    add_flag(g, "kv_cache_dtype", default="auto", choices=["auto", "int8", "int4"],
             help="the same as --quant-policy 8 / 4 (auto: follow --quant-policy)")
    add_flag(g, "kv_rotation", default="auto", choices=["auto", "on", "off"],
             help="rotate K/V rows (Hadamard) before quantizing; auto: on for int4 only")


def quant_policy_from_args(args) -> int:
    """--quant-policy, or --kv-cache-dtype int8|int4 (vLLM's spelling); when both are given they
    must agree."""
    policy = args.quant_policy
    if args.kv_cache_dtype != "auto":
        wanted = {"int8": 8, "int4": 4}[args.kv_cache_dtype]
        if policy and policy != wanted:
            raise SystemExit(f"error: --quant-policy {policy} and --kv-cache-dtype {args.kv_cache_dtype} "
                             f"disagree; give one of them")
        policy = wanted
    return policy


def add_tp_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("tensor parallel (docs/serving.md)")
    add_flag(g, "tp", type=int, default=1, help="tensor parallel size: processes (one GPU or CPU core each)")
    add_flag(g, "nnodes", type=int, default=1, help="machines the --tp ranks are spread over")
    add_flag(g, "node_rank", type=int, default=0, help="this machine's index; 0 runs the engine")
    add_flag(g, "master_addr", default=None, help="address of node 0 (default: $MASTER_ADDR, or 127.0.0.1)")
    add_flag(g, "master_port", type=int, default=None, help="rendezvous port on node 0 (default: $MASTER_PORT, or free)")
    add_flag(g, "tp_timeout", type=float, default=300.0,
             help="seconds to wait for all ranks at start-up, and for a rank inside one step")
    add_flag(g, "tp_oversubscribe", action="store_true", help="CPU: allow more ranks than cores")


def tp_config_kwargs(args) -> dict:
    return dict(tp=args.tp, nnodes=args.nnodes, node_rank=args.node_rank, master_addr=args.master_addr,
                master_port=args.master_port, tp_timeout=args.tp_timeout, tp_oversubscribe=args.tp_oversubscribe)


def add_gen_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation")
    add_flag(g, "max_new_tokens", type=int, default=512)
    add_flag(g, "temperature", type=float, default=None, help="> 0 turns sampling on")
    add_flag(g, "top_p", type=float, default=1.0)
    add_flag(g, "top_k", type=int, default=50)
    add_flag(g, "min_p", type=float, default=0.0)
    add_flag(g, "repetition_penalty", type=float, default=1.0)
    add_flag(g, "seed", type=int, default=None)


def engine_config_from_args(args) -> EngineConfig:
    quant_policy = quant_policy_from_args(args)
    try:
        return EngineConfig(dtype=args.dtype, device=args.device, session_len=args.session_len,
                            max_batch_size=args.max_batch_size, cache_max_entry_count=args.cache_max_entry_count,
                            cache_block_seq_len=args.cache_block_seq_len, num_blocks=args.num_blocks,
                            max_prefill_token_num=args.max_prefill_token_num,
                            enable_prefix_caching=args.enable_prefix_caching, quant_policy=quant_policy,
                            kv_rotation=args.kv_rotation, load_format=args.load_format,
                            dequantize_gguf=args.dequantize_gguf, eager_mode=args.eager_mode,
                            cpu_gemm_dtype=args.cpu_gemm_dtype,
                            **tp_config_kwargs(args))
    except ValueError as e:
        raise SystemExit(f"error: {e}")


def chat_template_config_from_args(args) -> ChatTemplateConfig:
    return ChatTemplateConfig(model_name=args.model_name, meta_instruction=args.meta_instruction)


def gen_config_from_args(args) -> GenerationConfig:
    sampling = args.temperature is not None and args.temperature > 0
    try:
        return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=sampling,
                                temperature=args.temperature if sampling else 0.8, top_p=args.top_p,
                                top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                                random_seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
