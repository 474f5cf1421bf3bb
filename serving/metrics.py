"""Prometheus metrics of the service (served on /metrics by ``serving.edge.RouteMetrics``)."""

from __future__ import annotations

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
    call, and the request path records five or six series per request."""
    key = (id(metric), labels)
    out = _children.get(key)
    if out is None:
        out = _children[key] = metric.labels(*labels)
    return out


def observe_stage(stage: str, seconds: float) -> None:
    child(STAGE, stage).observe(seconds)
