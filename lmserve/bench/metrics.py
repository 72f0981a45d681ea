"""Latency and throughput metrics of a benchmark run, as pure functions of per-request records.

Definitions follow vLLM's benchmark_serving, so numbers compare across tools:
- TTFT: time from sending a request to receiving its first generated token.
- ITL (inter-token latency): every gap between two consecutive token arrivals of a request, after
  the first; all requests' gaps are pooled before taking statistics.
- TPOT (time per output token): per request, (E2E - TTFT) / (output tokens - 1), for requests that
  produced more than one token; statistics are over requests.
- E2E: time from sending a request to receiving its last token.
- Goodput: completed requests per second whose TTFT, TPOT and E2E all meet the given limits.
Percentiles are numpy's linear interpolation; statistics of an empty set are 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass(slots=True)
class RequestRecord:
    """What one request measured. Times in seconds; `itl` holds its inter-token gaps."""
    prompt_len: int
    output_len: int = 0
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    success: bool = True
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if not self.success or self.output_len < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_len - 1)


def record_from_arrivals(prompt_len: int, start: float, arrivals: list[tuple[float, int]]) -> RequestRecord:
    """A record from the send time and (time, tokens in that chunk) of every chunk that carried tokens."""
    arrivals = [(t, n) for t, n in arrivals if n > 0]
    if not arrivals:
        return RequestRecord(prompt_len, success=False, error="no token was generated")
    times = [t for t, _ in arrivals]
    return RequestRecord(prompt_len, sum(n for _, n in arrivals), times[0] - start, times[-1] - start,
                         [b - a for a, b in zip(times, times[1:])])


def percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def distribution(values, percentiles=PERCENTILES, scale: float = 1.0) -> dict[str, float]:
    """mean, median (p50), std and the given percentiles, multiplied by `scale` (1000 for ms)."""
    arr = np.asarray(values, dtype=float) * scale
    out = {"mean": mean(arr), "median": percentile(arr, 50), "std": float(np.std(arr)) if len(arr) else 0.0}
    out.update({f"p{q:g}": percentile(arr, q) for q in percentiles})
    return out


def parse_goodput(specs: list[str] | None) -> dict[str, float]:
    """`["ttft:200", "tpot:50"]` -> {"ttft": 0.2, "tpot": 0.05} (limits given in ms, kept in s)."""
    limits: dict[str, float] = {}
    for spec in specs or []:
        name, sep, value = spec.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(f"--goodput takes NAME:MS with NAME one of {', '.join(GOODPUT_METRICS)}, got {spec!r}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput limit of {name} must be a number of milliseconds, got {value!r}") from None
        if ms <= 0:
            raise ValueError(f"--goodput limit of {name} must be > 0 ms, got {ms:g}")
        limits[name] = ms / 1000.0
    return limits


def meets_limits(record: RequestRecord, limits: dict[str, float]) -> bool:
    if not record.success:
        return False
    values = {"ttft": record.ttft, "tpot": record.tpot or 0.0, "e2el": record.e2el}
    return all(values[name] <= limit for name, limit in limits.items())


def summarize(records: list[RequestRecord], duration: float, goodput_limits: dict[str, float] | None = None,
              percentiles=PERCENTILES) -> dict:
    """Everything a benchmark reports, from its records and its wall time in seconds.

    Latencies come back in milliseconds (`ttft_ms`: mean/median/std/pNN), throughputs per second.
    """
    if duration <= 0:
        raise ValueError(f"the benchmark duration must be > 0 s, got {duration}")
    done = [r for r in records if r.success]
    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_len for r in done)
    summary = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration,
        "input_throughput": input_tokens / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
        "ttft_ms": distribution([r.ttft for r in done], percentiles, 1000.0),
        "tpot_ms": distribution([t for r in done if (t := r.tpot) is not None], percentiles, 1000.0),
        "itl_ms": distribution([gap for r in done for gap in r.itl], percentiles, 1000.0),
        "e2el_ms": distribution([r.e2el for r in done], percentiles, 1000.0),
    }
    if goodput_limits:
        good = sum(meets_limits(r, goodput_limits) for r in done)
        summary["goodput_limits_ms"] = {k: v * 1000.0 for k, v in goodput_limits.items()}
        summary["good_requests"] = good
        summary["request_goodput"] = good / duration
    return summary


def per_request(records: list[RequestRecord]) -> dict[str, list]:
    """Column-wise per-request data for result files (what `bench plot` draws CDFs from)."""
    return {"prompt_lens": [r.prompt_len for r in records], "output_lens": [r.output_len for r in records],
            "ttfts": [r.ttft for r in records], "tpots": [r.tpot for r in records],
            "e2els": [r.e2el for r in records], "itls": [r.itl for r in records],
            "errors": [r.error for r in records]}
