"""Prometheus metrics, all named `lmserve:*` (vLLM's convention with our prefix).

Each app owns its registry (no process-wide default registry), so two servers in one process, as in
the tests, count separately. Engine gauges are read at scrape time, so they are never stale.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lmserve.serve.stats import read_load

PREFIX = "lmserve:"
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _EngineCollector:
    """Live engine load, read on the engine thread at each scrape."""

    def __init__(self, pipeline, model_name: str):
        self.pipeline, self.model_name = pipeline, model_name

    def describe(self):
        return []      # nothing to check at registration; collecting then would wait on the engine

    def collect(self):
        if not self.pipeline.loop.alive:     # reading a stopped engine would wait forever
            return
        load = read_load(self.pipeline)
        labels, values = ["model_name"], [self.model_name]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge("num_requests_running", "Requests in the running batch.", load.running)
        yield gauge("num_requests_waiting", "Requests queued for the running batch.", load.waiting)
        yield gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", load.kv_cache_usage)
        yield gauge("prefix_cache_hit_rate", "Prefix-cache hits / queries, in full blocks, since start.",
                    load.prefix_hit_rate)
        yield counter("prefix_cache_queries", "Full KV blocks looked up in the prefix cache.", load.prefix_queries)
        yield counter("prefix_cache_hits", "Full KV blocks found in the prefix cache.", load.prefix_hits)
        yield counter("num_preemptions", "Requests preempted for lack of KV blocks.", load.preemptions)


class ServerMetrics:
    def __init__(self, pipeline, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of finished requests.",
                                     labels, registry=self.registry).labels(model_name)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Generated tokens.",
                                         labels, registry=self.registry).labels(model_name)
        self._finished = Counter(PREFIX + "request_success", "Finished generations by finish reason.",
                                 labels + ["finished_reason"], registry=self.registry)
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds", "Seconds from a request's arrival to its first token.",
            labels, buckets=_TTFT_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e_latency = Histogram(
            PREFIX + "e2e_request_latency_seconds", "Seconds from a request's arrival to its last token.",
            labels, buckets=_E2E_BUCKETS, registry=self.registry).labels(model_name)
        self.registry.register(_EngineCollector(pipeline, model_name))

    def finished(self, reason: str | None) -> None:
        self._finished.labels(self.model_name, reason or "none").inc()

    def render(self) -> bytes:
        """The exposition text; blocks up to one engine step, so call it from a worker thread."""
        return generate_latest(self.registry)
