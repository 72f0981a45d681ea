"""Metric definitions (vLLM's TTFT/TPOT/ITL/E2E and goodput), percentiles and the load generator."""
from __future__ import annotations

import asyncio
import math

import pytest

from lmserve.bench.load import poisson_delays, run_load
from lmserve.bench.metrics import (RequestRecord, distribution, parse_goodput, percentile,
                                   record_from_arrivals, summarize)


def test_record_from_arrivals_measures_from_the_send_time_and_skips_empty_chunks():
    r = record_from_arrivals(7, start=10.0, arrivals=[(10.5, 1), (10.6, 0), (10.7, 2), (11.0, 1)])
    assert (r.prompt_len, r.output_len) == (7, 4)
    assert r.ttft == pytest.approx(0.5) and r.e2el == pytest.approx(1.0)
    assert r.itl == pytest.approx([0.2, 0.3])
    # TPOT spreads the time after the first token over the tokens after the first
    assert r.tpot == pytest.approx((1.0 - 0.5) / 3)
    failed = record_from_arrivals(7, 10.0, [(10.5, 0)])
    assert not failed.success and failed.tpot is None


def test_tpot_is_undefined_for_a_single_token():
    assert RequestRecord(5, output_len=1, ttft=0.2, e2el=0.2).tpot is None


def test_percentiles_interpolate_linearly_and_empty_sets_are_zero():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([], 99) == 0.0
    d = distribution([0.001, 0.003], scale=1000.0)
    assert d["mean"] == pytest.approx(2.0) and d["p99"] == pytest.approx(2.98) and d["median"] == pytest.approx(2.0)


def test_summary_pools_itl_over_requests_and_counts_only_successes():
    records = [RequestRecord(10, 3, ttft=0.1, e2el=0.5, itl=[0.1, 0.3]),
               RequestRecord(20, 2, ttft=0.3, e2el=0.4, itl=[0.1]),
               RequestRecord(99, success=False, error="boom")]
    s = summarize(records, duration=2.0)
    assert (s["completed"], s["failed"]) == (2, 1)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (30, 5)
    assert s["request_throughput"] == 1.0 and s["output_throughput"] == 2.5 and s["total_token_throughput"] == 17.5
    assert s["ttft_ms"]["mean"] == pytest.approx(200.0)
    # TPOT per request: 0.4/2 = 0.2 s and 0.1/1 = 0.1 s; ITL pooled: 0.1, 0.3, 0.1
    assert s["tpot_ms"]["mean"] == pytest.approx(150.0)
    assert s["itl_ms"]["mean"] == pytest.approx(500.0 / 3) and s["itl_ms"]["p50"] == pytest.approx(100.0)
    assert s["e2el_ms"]["p50"] == pytest.approx(450.0)
    assert "request_goodput" not in s
    with pytest.raises(ValueError, match="duration"):
        summarize(records, duration=0.0)


def test_goodput_counts_requests_that_meet_every_limit():
    records = [RequestRecord(1, 11, ttft=0.1, e2el=1.1),     # tpot 0.1
               RequestRecord(1, 11, ttft=0.3, e2el=0.8),     # ttft too slow
               RequestRecord(1, 11, ttft=0.1, e2el=2.1),     # tpot 0.2 too slow
               RequestRecord(1, 1, ttft=0.1, e2el=0.1)]      # one token: no TPOT, passes
    limits = parse_goodput(["ttft:200", "tpot:150"])
    assert limits == {"ttft": pytest.approx(0.2), "tpot": pytest.approx(0.15)}
    s = summarize(records, duration=4.0, goodput_limits=limits)
    assert s["good_requests"] == 2 and s["request_goodput"] == 0.5
    assert summarize(records, 4.0, parse_goodput(["e2el:1200"]))["good_requests"] == 3


@pytest.mark.parametrize("spec, message", [("ttft", "NAME:MS"), ("latency:5", "NAME:MS"),
                                           ("tpot:fast", "must be a number"), ("ttft:0", "must be > 0")])
def test_goodput_spec_errors_name_the_flag(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_goodput([spec])
    assert "--goodput" in str(e.value)


def test_poisson_delays_follow_the_rate_and_the_seed():
    assert poisson_delays(4, math.inf) == [0.0] * 4
    delays = poisson_delays(4000, 8.0, seed=3)
    assert delays == poisson_delays(4000, 8.0, seed=3) != poisson_delays(4000, 8.0, seed=4)
    assert sum(delays) / len(delays) == pytest.approx(1 / 8.0, rel=0.08)


def test_load_respects_max_concurrency_and_keeps_request_order():
    in_flight, peak = 0, 0

    async def send(i):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01 * (5 - i % 5))
        in_flight -= 1
        return RequestRecord(i)
    records, duration = asyncio.run(run_load(list(range(12)), send, max_concurrency=3, progress=False))
    assert [r.prompt_len for r in records] == list(range(12))
    assert peak == 3 and duration > 0
    with pytest.raises(ValueError, match="--max-concurrency must be >= 1"):
        asyncio.run(run_load([1], send, max_concurrency=0, progress=False))
    with pytest.raises(ValueError, match="--request-rate must be > 0"):
        asyncio.run(run_load([1], send, request_rate=0, progress=False))
