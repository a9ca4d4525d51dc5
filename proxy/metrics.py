"""Prometheus metrics, one registry per app (so tests can run several proxies in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Seconds; proxy-side latency spans sub-millisecond local answers to minute-long generations.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _RecorderCollector:
    def __init__(self, recorder):
        self.recorder = recorder

    def collect(self):
        yield GaugeMetricFamily("understudy_recorder_queue_depth", "Calls waiting for the next group commit.",
                                value=self.recorder.pending())
        yield CounterMetricFamily("understudy_recorded_calls", "Calls committed to the store.", value=self.recorder.recorded)
        yield CounterMetricFamily("understudy_recorder_failed_calls", "Calls the store refused (spilled to failed-writes.jsonl).",
                                  value=self.recorder.failed)


class ProxyMetrics:
    def __init__(self, recorder):
        self.registry = CollectorRegistry()
        self.requests = Counter("understudy_requests", "Chat completion requests answered.",
                                ["site", "served_by", "status"], registry=self.registry)
        self.latency = Histogram("understudy_request_latency_seconds", "Time to the full answer (streams: to the last chunk).",
                                 ["served_by"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.rejected = Counter("understudy_rejected_requests", "Requests refused before forwarding.", ["reason"],
                                registry=self.registry)
        self.upstream_errors = Counter("understudy_upstream_errors", "Upstream failures by kind.", ["kind"],
                                       registry=self.registry)
        self.upstream_retries = Counter("understudy_upstream_retries", "Upstream attempts retried (before the first "
                                        "byte to the client).", registry=self.registry)
        self.local_fallbacks = Counter("understudy_local_fallbacks", "Local answers refused (invalid) and served upstream.",
                                       registry=self.registry)
        self.registry.register(_RecorderCollector(recorder))

    def observe(self, site: str, served_by: str, status: int, seconds: float) -> None:
        self.requests.labels(site, served_by, str(status)).inc()
        self.latency.labels(served_by).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
