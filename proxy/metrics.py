"""Prometheus metrics, one registry per app (so tests can run several proxies in one process).

The `site` label is bounded: `understudy_requests_total` names the `top_sites` sites with the
most requests so far and counts every other site as `other` (its `served_by` then reads `local`
rather than `local:<site>@vN`), so a client that makes thousands of sites cannot grow the label
set past top_sites + 1. The ranking is taken at each scrape; a site's own series is always its
whole count, so when a site enters the top its requests leave `other` (read `other` as the rest,
and sum over `site` for totals).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Seconds; proxy-side latency spans sub-millisecond local answers to minute-long generations.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _RecorderCollector:
    def __init__(self, recorder):
        self.recorder = recorder

    def collect(self):
        yield GaugeMetricFamily(
            "understudy_recorder_queue_depth", "Calls waiting for the next group commit.", value=self.recorder.pending()
        )
        yield CounterMetricFamily(
            "understudy_recorded_calls", "Calls committed to the store.", value=self.recorder.recorded
        )
        yield CounterMetricFamily(
            "understudy_recorder_failed_calls",
            "Calls the store refused (spilled to failed-writes.jsonl).",
            value=self.recorder.failed,
        )
        yield CounterMetricFamily(
            "understudy_recorder_spill_failures",
            "Spills to failed-writes.jsonl that failed too.",
            value=self.recorder.spill_failures,
        )
        yield CounterMetricFamily(
            "understudy_recorder_replayed_rows", "Spilled rows stored at this start.", value=self.recorder.replayed
        )


class _RequestsBySite:
    """understudy_requests_total{site, served_by, status} with at most `top` named sites."""

    def __init__(self, top: int):
        self.top = top
        self._lock = threading.Lock()
        self._counts: dict[str, dict[tuple[str, str], int]] = {}  # site -> (served_by, status) -> n
        self._totals: dict[str, int] = {}  # one entry per site: bounded by the site registry's cap

    def inc(self, site: str, served_by: str, status: str) -> None:
        with self._lock:
            by_outcome = self._counts.setdefault(site, {})
            by_outcome[(served_by, status)] = by_outcome.get((served_by, status), 0) + 1
            self._totals[site] = self._totals.get(site, 0) + 1

    def collect(self):
        with self._lock:
            named = set(heapq.nlargest(self.top, self._totals, key=lambda site: (self._totals[site], site)))
            series: dict[tuple[str, str, str], int] = {}
            for site, by_outcome in self._counts.items():
                for (served_by, status), n in by_outcome.items():
                    if site in named:
                        key = (site, served_by, status)
                    else:
                        key = ("other", "local" if served_by.startswith("local:") else served_by, status)
                    series[key] = series.get(key, 0) + n
        family = CounterMetricFamily(
            "understudy_requests",
            "Chat completion requests answered (sites beyond the top by traffic as `other`).",
            labels=["site", "served_by", "status"],
        )
        for labels, n in sorted(series.items()):
            family.add_metric(list(labels), n)
        yield family


class _RoutingCollector:
    """Each site with a version: its routing state, and a partial site's confidence threshold.
    (Its local share is `understudy_requests_total` by `served_by`.) Sites without a version are
    left out, so the label set grows with trained sites only."""

    def __init__(self, routing: Callable[[], Iterable[tuple[str, str, float | None]]]):
        self.routing = routing  # () -> (site id, state, partial threshold) per site with a version

    def collect(self):
        states = GaugeMetricFamily(
            "understudy_site_state", "1 for the state each site with a version is in.", labels=["site", "state"]
        )
        thresholds = GaugeMetricFamily(
            "understudy_site_partial_threshold",
            "Confidence at or above which a partial site serves its local answers.",
            labels=["site"],
        )
        for site, state, threshold in self.routing():
            states.add_metric([site, state], 1)
            if threshold is not None:
                thresholds.add_metric([site], threshold)
        yield states
        yield thresholds


class ProxyMetrics:
    def __init__(
        self,
        recorder,
        top_sites: int = 50,
        routing: Callable[[], Iterable[tuple[str, str, float | None]]] | None = None,
    ):
        self.registry = CollectorRegistry()
        if routing is not None:
            self.registry.register(_RoutingCollector(routing))
        self.requests = _RequestsBySite(top_sites)
        self.registry.register(self.requests)
        self.latency = Histogram(
            "understudy_request_latency_seconds",
            "Time to the full answer (streams: to the last chunk).",
            ["served_by"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "understudy_rejected_requests", "Requests refused before forwarding.", ["reason"], registry=self.registry
        )
        self.upstream_errors = Counter(
            "understudy_upstream_errors", "Upstream failures by kind.", ["kind"], registry=self.registry
        )
        self.upstream_retries = Counter(
            "understudy_upstream_retries",
            "Upstream attempts retried (before the first byte to the client).",
            registry=self.registry,
        )
        self.local_fallbacks = Counter(
            "understudy_local_fallbacks", "Local answers refused (invalid) and served upstream.", registry=self.registry
        )
        self.local_tries = Histogram(
            "understudy_local_tries",
            "Local draws per local answer (checked sampling), by "
            "outcome: served, or refused (fallback) and answered upstream.",
            ["outcome"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=self.registry,
        )
        self.registry.register(_RecorderCollector(recorder))

    def observe(self, site: str, served_by: str, status: int, seconds: float) -> None:
        self.requests.inc(site, served_by, str(status))
        self.latency.labels(served_by).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
