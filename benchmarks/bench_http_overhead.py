"""What the HTTP layer adds to a request: `Pipeline.generate` in-process vs the same request through
`lmserve serve api_server` (non-streamed and streamed), for an answer of a fixed length.

    python benchmarks/bench_http_overhead.py [MODEL] [--tokens 64] [--runs 5] [--json out.json]

Both paths drive the same engine: the server (uvicorn on a thread, as `api_server` runs it beside
the engine thread) serves the very Pipeline that the in-process runs use, so engine-to-engine
variance drops out. The HTTP client runs in this process too, so its own CPU time counts against
HTTP: the overhead shown is an upper bound. One request at a time; runs alternate between the paths
so drift hits all alike; the table shows medians, and overhead = (HTTP - in-process) / HTTP.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import httpx

from lmserve.api import Pipeline
from lmserve.config import GenerationConfig
from lmserve.serve.app import create_app
from lmserve.serve.server import BackgroundServer

PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


def in_process(pipe: Pipeline, tokens: int) -> tuple[float, int]:
    gen = GenerationConfig(max_new_tokens=tokens, ignore_eos=True)

    async def run():
        last = None
        async for out in pipe.generate(PROMPT, gen):
            last = out
        return last
    start = time.perf_counter()
    out = asyncio.run(run())
    return time.perf_counter() - start, len(out.token_ids)


def over_http(http: httpx.Client, url: str, tokens: int, stream: bool) -> tuple[float, int]:
    body = {"messages": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}
    start = time.perf_counter()
    if not stream:
        r = http.post(url + "/v1/chat/completions", json=body)
        r.raise_for_status()
        return time.perf_counter() - start, r.json()["usage"]["completion_tokens"]
    used = 0
    with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                used = usage["completion_tokens"] if usage else used
    return time.perf_counter() - start, used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    pipe = Pipeline(args.model)
    with BackgroundServer(create_app(pipe)) as server:
        url = server.url
        times: dict[str, list[float]] = {"in-process Pipeline.generate": [], "HTTP non-streamed": [],
                                         "HTTP streamed (SSE)": []}
        with httpx.Client(timeout=600) as http:
            runners = [lambda: in_process(pipe, args.tokens), lambda: over_http(http, url, args.tokens, False),
                       lambda: over_http(http, url, args.tokens, True)]
            for run in runners:            # warm-up: first-call costs are not the steady state
                run()
            for _ in range(args.runs):
                for name, run in zip(times, runners):
                    seconds, produced = run()
                    if produced != args.tokens:
                        raise SystemExit(f"{name}: {produced} tokens instead of {args.tokens}")
                    times[name].append(seconds)
    pipe.close()

    base = statistics.median(times["in-process Pipeline.generate"])
    rows = []
    print(f"\n{args.tokens}-token answers, {args.runs} runs each, medians ({os.cpu_count()} CPUs)")
    print(f"{'path':32} {'median s':>9} {'min s':>8} {'+ms vs in-process':>18} {'overhead':>9}")
    for name, values in times.items():
        med = statistics.median(values)
        extra = med - base
        share = extra / med if name != "in-process Pipeline.generate" else 0.0
        rows.append({"path": name, "median_s": med, "min_s": min(values), "extra_ms": extra * 1e3,
                     "overhead": share, "runs": values})
        print(f"{name:32} {med:9.3f} {min(values):8.3f} {extra * 1e3:18.1f} {share:9.2%}")
    worst = max(r["overhead"] for r in rows)
    print(f"HTTP overhead: {worst:.2%} of end-to-end at most (target < 5%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tokens": args.tokens, "runs": args.runs, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
