"""`lmserve bench serving`: load on any OpenAI-compatible server over HTTP, streamed (in the manner of
vLLM's benchmark_serving): Poisson request rate or all at once, optionally capped concurrency;
TTFT/TPOT/ITL/E2E, throughputs and goodput for given latency limits.

Token counts come from the server's `usage` (requested with stream_options.include_usage) where it
sends one; otherwise output tokens are counted as streamed chunks that carried text.
"""
from __future__ import annotations

import asyncio
import json
import time

import httpx

from lmserve.bench.datasets import SampleRequest
from lmserve.bench.load import check_load, run_load
from lmserve.bench.metrics import RequestRecord, parse_goodput, per_request, record_from_arrivals, summarize
from lmserve.bench.report import environment, format_summary, write_json

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def request_body(endpoint: str, model: str, request: SampleRequest, ignore_eos: bool) -> dict:
    body = {"model": model, "max_tokens": request.output_len, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    if ignore_eos:
        body["ignore_eos"] = True     # vLLM's and lmserve's extension: generate exactly max_tokens
    return body


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def send_streamed(client: httpx.AsyncClient, url: str, body: dict, prompt_len: int) -> RequestRecord:
    arrivals: list[tuple[float, int]] = []
    usage = None
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                return RequestRecord(prompt_len, success=False, error=f"HTTP {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return RequestRecord(prompt_len, success=False, error=str(chunk["error"])[:300])
                usage = chunk.get("usage") or usage
                if _chunk_text(chunk):
                    arrivals.append((time.perf_counter(), 1))
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return RequestRecord(prompt_len, success=False, error=f"{type(e).__name__}: {e}")
    record = record_from_arrivals(prompt_len, start, arrivals)
    if usage and record.success:
        record.prompt_len = usage.get("prompt_tokens", prompt_len)
        record.output_len = usage.get("completion_tokens", record.output_len)
    return record


def served_model(base_url: str, headers: dict) -> str:
    """The first model the server lists under /v1/models."""
    response = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{base_url}/v1/models lists no model; pass --model")
    return models[0]["id"]


async def benchmark(base_url: str, model: str, requests: list[SampleRequest], endpoint: str = "completions",
                    request_rate: float = float("inf"), max_concurrency: int | None = None, ignore_eos: bool = False,
                    goodput_limits: dict | None = None, api_key: str | None = None, seed: int = 0,
                    progress: bool = True, timeout_s: float = 6 * 3600) -> dict:
    url = base_url.rstrip("/") + ENDPOINTS[endpoint]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # one connection per request in flight: httpx's default pool of 100 would queue the rest client-side
    limits = httpx.Limits(max_connections=max_concurrency or len(requests), max_keepalive_connections=None)
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as client:
        first = requests[0]
        warm = await send_streamed(client, url, request_body(endpoint, model, SampleRequest(
            first.prompt, first.prompt_ids, 2), ignore_eos), first.prompt_len)
        if not warm.success:
            raise RuntimeError(f"the warm-up request to {url} failed: {warm.error}")

        async def send(request: SampleRequest) -> RequestRecord:
            return await send_streamed(client, url, request_body(endpoint, model, request, ignore_eos),
                                       request.prompt_len)
        records, duration = await run_load(requests, send, request_rate, max_concurrency, seed, "serving", progress)
    return {"kind": "serving", "summary": summarize(records, duration, goodput_limits),
            "requests": per_request(records)}


def main(args) -> None:
    from lmserve.bench.throughput import load_requests
    from lmserve.model.loader import load_model
    try:
        check_load(args.request_rate, args.max_concurrency)
        limits = parse_goodput(args.goodput)
    except ValueError as e:
        raise SystemExit(f"lmserve bench serving: {e}") from e
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        model = args.model or served_model(args.base_url, headers)
    except (httpx.HTTPError, ValueError) as e:
        raise SystemExit(f"lmserve bench serving: cannot list the models of {args.base_url}: {e}") from e
    tokenizer = load_model(args.tokenizer).tokenizer      # metadata and tokenizer only; weights stay on disk
    try:
        requests = load_requests(args, tokenizer, args.session_len)
    except (ValueError, OSError) as e:
        raise SystemExit(f"lmserve bench serving: {e}") from e
    result = asyncio.run(benchmark(args.base_url, model, requests, args.endpoint, args.request_rate,
                                   args.max_concurrency, args.ignore_eos, limits, args.api_key, args.seed,
                                   not args.no_progress))
    result["config"] = {"base_url": args.base_url, "model": model, "endpoint": args.endpoint,
                        "dataset": args.dataset, "num_prompts": len(requests), "request_rate": args.request_rate,
                        "max_concurrency": args.max_concurrency, "ignore_eos": args.ignore_eos}
    result["environment"] = environment()
    print(format_summary("Serving Benchmark Result", result["summary"]))
    if result["summary"]["failed"]:
        errors = sorted({e for e in result["requests"]["errors"] if e})
        print(f"{result['summary']['failed']} request(s) failed, e.g.: {errors[0]}")
    if args.save_result:
        write_json(args.save_result, result)
        print(f"result written to {args.save_result}")
