"""`lmserve bench throughput`: a dataset of requests through the in-process engine (LMDeploy's
profile_throughput), at a fixed concurrency or a Poisson request rate.

Reports request throughput, input/output tok/s and TTFT/TPOT/ITL/E2E (see metrics.py).
"""
from __future__ import annotations

import asyncio
import logging
import math

from lmserve.bench.datasets import SampleRequest, load_sharegpt, random_requests
from lmserve.bench.inprocess import engine_device, generate_timed
from lmserve.bench.load import check_load, run_load
from lmserve.bench.memory import PeakMemory
from lmserve.bench.metrics import parse_goodput, per_request, summarize
from lmserve.bench.report import engine_flags, environment, format_summary, write_csv, write_json

logger = logging.getLogger(__name__)


def load_requests(args, tokenizer, session_len: int) -> list[SampleRequest]:
    """The requests of --dataset (a ShareGPT file or `random`), checked against the session length."""
    if args.dataset == "random":
        if args.input_len + args.output_len > session_len:
            raise ValueError(f"--input-len + --output-len = {args.input_len + args.output_len} exceeds the "
                             f"session length {session_len}")
        return random_requests(tokenizer, args.num_prompts, args.input_len, args.output_len, args.seed)
    requests, report = load_sharegpt(args.dataset, tokenizer, args.num_prompts, session_len,
                                     args.sharegpt_output_len)
    print(report.line())
    return requests


def run_throughput(pipe, requests: list[SampleRequest], concurrency: int | None, request_rate: float = math.inf,
                   goodput_limits: dict | None = None, progress: bool = True) -> dict:
    """Runs the requests (after one short warm-up request) and returns the result dict."""
    async def go():
        warm = SampleRequest(requests[0].prompt, requests[0].prompt_ids, 2)
        await generate_timed(pipe, warm)         # first-call costs (allocations, lazy init) are not steady state
        return await run_load(requests, lambda r: generate_timed(pipe, r), request_rate, concurrency,
                              desc="throughput", progress=progress)
    with PeakMemory(engine_device(pipe)) as peak:
        records, duration = asyncio.run(go())
    summary = summarize(records, duration, goodput_limits)
    summary.update(peak_memory_gib=peak.gib, peak_memory_kind=peak.kind)
    errors = {r.error for r in records if not r.success}
    if errors:
        logger.warning("%d request(s) failed: %s", summary["failed"], "; ".join(sorted(errors))[:500])
    return {"kind": "throughput", "summary": summary, "requests": per_request(records)}


def main(args) -> None:
    from lmserve.api import pipeline
    from lmserve.cli.args import chat_template_config_from_args, engine_config_from_args
    try:
        check_load(args.request_rate, args.concurrency)
        limits = parse_goodput(args.goodput)
    except ValueError as e:
        raise SystemExit(f"lmserve bench throughput: {e}") from e
    pipe = pipeline(args.model_path, engine_config_from_args(args), chat_template_config_from_args(args),
                    log_level=args.log_level)
    try:
        try:
            requests = load_requests(args, pipe.tokenizer, pipe.engine.session_len)
        except (ValueError, OSError) as e:
            raise SystemExit(f"lmserve bench throughput: {e}") from e
        result = run_throughput(pipe, requests, args.concurrency, args.request_rate, limits, not args.no_progress)
    finally:
        pipe.close()
    result["config"] = {"model": pipe.model_name, "dataset": args.dataset, "num_prompts": len(requests),
                        "concurrency": args.concurrency, "request_rate": args.request_rate,
                        "engine": engine_flags(args)}
    result["environment"] = environment()
    print(format_summary("Throughput Benchmark Result", result["summary"]))
    print(f"Peak memory ({result['summary']['peak_memory_kind']}): {result['summary']['peak_memory_gib']:.2f} GiB")
    if args.json:
        write_json(args.json, result)
    if args.csv:
        write_csv(args.csv, [{**result["config"], **result["summary"]}])

