"""Prometheus metrics of the service (served on /metrics by ``serving.edge.RouteMetrics``)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

from bentoml import metrics

STAGE = metrics.Histogram(
    name="rtrec_serving_stage_seconds",
    documentation="Latency per stage of /recommend",
    labelnames=["stage"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
REQUESTS = metrics.Counter(
    name="rtrec_serving_recommendations_total",
    documentation="Recommendations served by variant and fallback",
    labelnames=["variant", "fallback"],
)
FALLBACKS = metrics.Counter(
    name="rtrec_serving_fallbacks_total",
    documentation="Answers served from the fallback list, by reason",
    labelnames=["reason"],
)
DEGRADATIONS = metrics.Counter(
    name="rtrec_serving_degradations_total",
    documentation="Other by-design degradations (a list topped up from the fallback, a "
    "trending refresh that kept the cached list, a registry watch that failed), by reason",
    labelnames=["reason"],
)
MODEL_VERSION = metrics.Gauge(
    name="rtrec_serving_model_version",
    documentation="Loaded registry version",
    labelnames=["variant"],
)
SHADOW_OVERLAP = metrics.Histogram(
    name="rtrec_serving_shadow_overlap",
    documentation="Share of champion items the shadow challenger also returned",
    buckets=(0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0),
)
LIFECYCLE_ERRORS = metrics.Counter(
    name="rtrec_serving_lifecycle_errors_total",
    documentation="Model lifecycle problems: a version refused (broken artifact), the "
    "champion alias gone, no champion at start, an unusable last-good cache",
    labelnames=["kind"],
)
BREAKER_OPEN = metrics.Gauge(
    name="rtrec_serving_breaker_open",
    documentation="1 while the circuit breaker in front of a dependency (online store, event "
    "broker) is open and calls to it fail at once",
    labelnames=["dependency"],
)
BREAKER_TRIPS = metrics.Counter(
    name="rtrec_serving_breaker_trips_total",
    documentation="Times a dependency's circuit breaker opened",
    labelnames=["dependency"],
)
ONLINE_NODE_DOWN = metrics.Gauge(
    name="rtrec_serving_online_node_down",
    documentation="1 while a node of a Redis Cluster online store is marked down: the users "
    "whose slots it serves get the flagged fallback, the others are read as usual",
    labelnames=["node"],
)
ONLINE_NODE_TRIPS = metrics.Counter(
    name="rtrec_serving_online_node_trips_total",
    documentation="Times a Redis Cluster online store node was marked down",
    labelnames=["node"],
)

IMPRESSIONS = metrics.Counter(
    name="rtrec_serving_impressions_total",
    documentation="Impressions (logged /recommend answers) the broker acknowledged on the "
    "impressions topic",
)
IMPRESSIONS_DROPPED = metrics.Counter(
    name="rtrec_serving_impressions_dropped_total",
    documentation="Impressions not logged, by reason: the in-memory queue full, the broker "
    "down (breaker open or a send failed), the service stopping before they were sent",
    labelnames=["reason"],
)

_STALL_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LOOP_LAG = metrics.Histogram(
    name="rtrec_serving_loop_lag_seconds",
    documentation="How late the event loop ran a heartbeat scheduled every few ms: the "
    "time every request in flight waited on something else holding the loop",
    buckets=_STALL_BUCKETS,
)
GC_PAUSE = metrics.Histogram(
    name="rtrec_serving_gc_pause_seconds",
    documentation="Garbage collections of the service process, by generation (each one "
    "stops every thread, the event loop included)",
    labelnames=["generation"],
    buckets=_STALL_BUCKETS,
)

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, kept: ``labels()`` takes a lock and builds a key on each
    call."""
    key = (id(metric), labels)
    out = _children.get(key)
    if out is None:
        out = _children[key] = metric.labels(*labels) if labels else metric
    return out


class _Pending:
    """What one counter or histogram series gathered since the last flush."""

    __slots__ = ("bounds", "counts", "series", "total")

    def __init__(self, series: Any) -> None:
        self.series = series
        self.bounds: list[float] | None = getattr(series, "_upper_bounds", None)
        self.counts = [0] * len(self.bounds) if self.bounds is not None else []
        self.total = 0.0


_pending: dict[tuple[int, tuple[str, ...]], _Pending] = {}
_pending_lock = threading.RLock()  # a collection's callback may record while held


def record(metric: Any, value: float, *labels: str) -> None:
    """Observe ``value`` (a histogram) or add it (a counter), in memory until :func:`flush`.

    Under BentoML every metric value is a multiprocess one: each update takes a lock,
    checks the pid (a system call) and writes an mmapped file, about 5 us, twice per
    histogram observation; the request path makes seven or eight. Summing them here costs
    a fraction of that, and the shared values are written once per flush (every second,
    and before each /metrics answer), so a scrape never misses what was recorded.
    """
    key = (id(metric), labels)
    with _pending_lock:
        entry = _pending.get(key)
        if entry is None:
            entry = _pending[key] = _Pending(child(metric, *labels))
        entry.total += value
        if entry.bounds is not None:  # the first bucket whose upper bound holds it
            entry.counts[bisect_left(entry.bounds, value)] += 1


def flush() -> None:
    """Write what :func:`record` gathered into the metrics' own values."""
    batch = []
    with _pending_lock:
        # A copy: a collection's callback may record a new series while this runs.
        for e in list(_pending.values()):
            if e.total or any(e.counts):
                batch.append((e.series, e.bounds, e.counts, e.total))
                e.total, e.counts = 0.0, [0] * len(e.counts)
    for series, bounds, counts, total in batch:
        if bounds is None:
            series.inc(total)
            continue
        series._sum.inc(total)
        for bucket, count in zip(series._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


def start_flushing(period_s: float = 1.0) -> threading.Event:
    """Flush every ``period_s`` on a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            flush()
        flush()

    threading.Thread(target=loop, name="metrics-flush", daemon=True).start()
    return stop


def observe_stage(stage: str, seconds: float) -> None:
    record(STAGE, seconds, stage)
