"""Prometheus metrics of the stream processor."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

EVENTS = Counter("rtrec_stream_events_total", "Events seen by outcome", ["outcome"])
BATCH = Histogram(
    "rtrec_stream_batch_seconds",
    "Batch processing time",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FRESHNESS = Histogram(
    "rtrec_stream_freshness_seconds",
    "Produce time to readable in the online store",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10),
)
LAG = Gauge("rtrec_stream_consumer_lag", "Events behind the end of the topic", ["partition"])
BROKER = Gauge(
    "rtrec_stream_broker_info",
    "The broker kind the processor runs against (1), and how it was decided",
    ["kind", "how"],
)
GUARD_DISABLED = Gauge(
    "rtrec_stream_guard_disabled",
    "1 for each processor guard turned off because a kafka-python internal it reads is missing",
    ["guard", "attribute"],
)
LAG_UNKNOWN = Counter(
    "rtrec_stream_lag_unknown_total", "Batches whose consumer lag could not be read", ["error"]
)
_lag_errors_logged: set[str] = set()
"""Error types already logged: each is logged once, then only counted."""


def count_events(applied: int, redelivered: int, dead_lettered: int) -> None:
    """Outcomes of a committed batch (counted at the commit, even if a later step fails)."""
    EVENTS.labels("applied").inc(applied)
    EVENTS.labels("redelivered").inc(redelivered)
    EVENTS.labels("dead_lettered").inc(dead_lettered)


def observe_batch(result: Any, consumer: Any) -> None:
    BATCH.observe(result.seconds)
    for ms in result.freshness_ms[:: max(1, len(result.freshness_ms) // 100)]:
        FRESHNESS.observe(ms / 1000)
    try:
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            pos = consumer.position(tp)
            if end is not None and pos is not None:
                LAG.labels(str(tp.partition)).set(max(end - pos, 0))
    except Exception as exc:  # lag is best effort: never fail a batch over it, but say so
        name = type(exc).__name__
        LAG_UNKNOWN.labels(name).inc()
        if name not in _lag_errors_logged:
            _lag_errors_logged.add(name)
            logger.warning("consumer lag not measured (%s: %s); counted from now on", name, exc)


def serve(port: int) -> None:
    start_http_server(port, addr="127.0.0.1")


EXPERIMENT_IMPRESSIONS = Counter(
    "rtrec_experiment_impressions_total",
    "Impressions joined by the stream processor, per experiment and variant",
    ["experiment", "variant"],
)
EXPERIMENT_OUTCOMES = Counter(
    "rtrec_experiment_outcomes_total",
    "Clicks, add-to-carts and purchases attributed to an answer, per experiment and variant",
    ["experiment", "variant", "event_type"],
)
EXPERIMENT_CLICKED = Counter(
    "rtrec_experiment_clicked_impressions_total",
    "Impressions with at least one attributed click, per experiment and variant",
    ["experiment", "variant"],
)
UNATTRIBUTED = Counter(
    "rtrec_experiment_unattributed_total",
    "Outcomes that found no answer when read (some are taken over later: see _late_)",
    ["event_type"],
)
LATE_ATTRIBUTED = Counter(
    "rtrec_experiment_late_attributed_total",
    "Outcomes first unattributed, then attributed when their answer's impression arrived",
    ["event_type"],
)

EXPERIMENT_JOIN_ERRORS = Counter(
    "rtrec_experiment_join_errors_total",
    "Experiment join rounds that failed (Redis, broker, a topic missing) and were retried",
    ["error"],
)


def count_tally(tally: Any) -> None:
    """A committed join batch's tally (``rtrec.streaming.attribution.Tally``)."""
    for (experiment, variant), arm in tally.arms.items():
        counts = arm.counts
        if counts.get("impressions"):
            EXPERIMENT_IMPRESSIONS.labels(experiment, variant).inc(counts["impressions"])
        if counts.get("clicked_impressions"):
            EXPERIMENT_CLICKED.labels(experiment, variant).inc(counts["clicked_impressions"])
        for etype in ("click", "add_to_cart", "purchase"):
            if counts.get(etype):
                EXPERIMENT_OUTCOMES.labels(experiment, variant, etype).inc(counts[etype])
    for etype, late in tally.late.items():
        LATE_ATTRIBUTED.labels(etype).inc(late)
    for etype, moved in tally.unattributed.items():
        arrived = moved + tally.late.get(etype, 0)  # outcomes that found nothing on arrival
        if arrived > 0:
            UNATTRIBUTED.labels(etype).inc(arrived)
