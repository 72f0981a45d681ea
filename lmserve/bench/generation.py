"""`lmserve bench generation`: static batches of fixed-length requests (LMDeploy's profile_generation).

For each combination of concurrency x prompt tokens x completion tokens, `test_round` rounds each
start `concurrency` requests of random prompt tokens at once and wait for all of them. Reported per
combination: first-token latency min/max/avg over requests, per-token latency (the gaps between a
request's consecutive tokens, pooled) p50/p75/p95/p99, output and total (prompt + output)
throughput over the rounds' wall time, and the peak memory (GPU, or process RSS on CPU).
"""
from __future__ import annotations

import asyncio
import itertools
import time

from tqdm.auto import tqdm

from lmserve.bench.datasets import random_requests
from lmserve.bench.inprocess import engine_device, generate_timed
from lmserve.bench.load import run_load
from lmserve.bench.memory import PeakMemory
from lmserve.bench.metrics import percentile
from lmserve.bench.report import engine_flags, environment, format_table, write_csv, write_json

TABLE = [("concurrency", "batch"), ("prompt_tokens", "prompt"), ("completion_tokens", "output"),
         ("first_token_latency_min_s", "ftl min s"), ("first_token_latency_max_s", "ftl max s"),
         ("first_token_latency_avg_s", "ftl avg s"), ("per_token_latency_p50_ms", "ptl p50 ms"),
         ("per_token_latency_p75_ms", "p75"), ("per_token_latency_p95_ms", "p95"),
         ("per_token_latency_p99_ms", "p99"), ("output_throughput", "out tok/s"),
         ("total_throughput", "total tok/s"), ("peak_memory_gib", "mem GiB")]


def check_grid(concurrency: list[int], prompt_tokens: list[int], completion_tokens: list[int], rounds: int,
               session_len: int | None = None) -> None:
    for flag, values in (("--concurrency", concurrency), ("--completion-tokens", completion_tokens)):
        if not values or min(values) < 1:
            raise ValueError(f"{flag} values must be >= 1, got {values}")
    if not prompt_tokens or min(prompt_tokens) < 1:
        raise ValueError(f"--prompt-tokens values must be >= 1, got {prompt_tokens}")
    if rounds < 1:
        raise ValueError(f"--test-round must be >= 1, got {rounds}")
    if session_len is not None and max(prompt_tokens) + max(completion_tokens) > session_len:
        raise ValueError(f"--prompt-tokens {max(prompt_tokens)} + --completion-tokens {max(completion_tokens)} "
                         f"exceeds the session length {session_len}")


def profile_combination(pipe, concurrency: int, prompt_tokens: int, completion_tokens: int, rounds: int,
                        seed: int = 0) -> dict:
    records = []
    elapsed = 0.0
    with PeakMemory(engine_device(pipe)) as peak:
        for r in range(rounds):
            batch = random_requests(pipe.tokenizer, concurrency, prompt_tokens, completion_tokens, seed + r)
            start = time.perf_counter()
            got, _ = asyncio.run(run_load(batch, lambda q: generate_timed(pipe, q), progress=False))
            elapsed += time.perf_counter() - start
            records += got
    failed = [r for r in records if not r.success]
    if failed:
        raise RuntimeError(f"{len(failed)} request(s) failed: {failed[0].error}")
    ftl = [r.ttft for r in records]
    gaps = [g * 1000.0 for r in records for g in r.itl]
    generated = sum(r.output_len for r in records)
    row = {"concurrency": concurrency, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "rounds": rounds, "first_token_latency_min_s": min(ftl), "first_token_latency_max_s": max(ftl),
           "first_token_latency_avg_s": sum(ftl) / len(ftl)}
    row.update({f"per_token_latency_p{q}_ms": percentile(gaps, q) for q in (50, 75, 95, 99)})
    row.update(output_throughput=generated / elapsed,
               total_throughput=(generated + prompt_tokens * len(records)) / elapsed,
               generated_tokens=generated, elapsed_s=elapsed, peak_memory_gib=peak.gib, peak_memory_kind=peak.kind)
    return row


def run_generation(pipe, concurrency: list[int], prompt_tokens: list[int], completion_tokens: list[int],
                   rounds: int, progress: bool = True) -> list[dict]:
    """Every combination, after one short warm-up request; returns one row per combination."""
    check_grid(concurrency, prompt_tokens, completion_tokens, rounds, pipe.engine.session_len)
    warm = random_requests(pipe.tokenizer, 1, 8, 2)[0]
    asyncio.run(generate_timed(pipe, warm))
    grid = list(itertools.product(concurrency, prompt_tokens, completion_tokens))
    rows = []
    for c, p, n in tqdm(grid, desc="generation", unit="combination", disable=not progress, leave=False):
        rows.append(profile_combination(pipe, c, p, n, rounds))
    return rows


def main(args) -> None:
    from lmserve.api import pipeline
    from lmserve.cli.args import chat_template_config_from_args, engine_config_from_args
    try:
        check_grid(args.concurrency, args.prompt_tokens, args.completion_tokens, args.test_round)
    except ValueError as e:
        raise SystemExit(f"lmserve bench generation: {e}") from e
    pipe = pipeline(args.model_path, engine_config_from_args(args), chat_template_config_from_args(args),
                    log_level=args.log_level)
    try:
        rows = run_generation(pipe, args.concurrency, args.prompt_tokens, args.completion_tokens, args.test_round,
                              not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"lmserve bench generation: {e}") from e
    finally:
        pipe.close()
    print(format_table([h for _, h in TABLE], [[row[k] for k, _ in TABLE] for row in rows]))
    print(f"ftl = first-token latency, ptl = per-token latency; memory = peak {rows[0]['peak_memory_kind']}")
    result = {"kind": "generation", "config": {"model": pipe.model_name, "test_round": args.test_round,
                                               "engine": engine_flags(args)},
              "rows": rows, "environment": environment()}
    if args.json:
        write_json(args.json, result)
    if args.csv:
        write_csv(args.csv, rows)
