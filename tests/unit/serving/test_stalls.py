"""The stall instruments name what held the loop: the frames of a blocking call, a collection."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from rtrec.serving import metrics
from rtrec.serving.stalls import LoopWatch, heartbeat, time_collections


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[_Kept]:
    """The stall log's records, taken at its own logger (whatever propagation other
    tests' logging set-up left)."""
    handler, logger = _Kept(), logging.getLogger("rtrec.serving.stalls")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _block_the_loop() -> None:
    time.sleep(0.4)  # a blocking call on the loop: what the watch must catch and name


def test_a_blocking_call_on_the_loop_is_logged_with_its_frames(kept: _Kept) -> None:
    watch = LoopWatch(period_s=0.005, warn_s=0.05)

    async def serve() -> None:
        watch.start()
        await asyncio.sleep(0.05)
        _block_the_loop()
        await asyncio.sleep(0.05)
        watch.stop()

    asyncio.run(serve())
    assert watch.stalls >= 1 and watch.max_lag_s >= 0.15
    # The frames: in the record's ``held_by``, or folded into its message by a logging
    # set-up that renders extras there (one of the other tests' may have left one).
    said = [f"{r.getMessage()} {getattr(r, 'held_by', '')}" for r in kept.records]
    assert any("event loop stalled" in text and "_block_the_loop" in text for text in said)


def test_a_quiet_loop_records_lags_without_warnings(kept: _Kept) -> None:
    before = REGISTRY.get_sample_value("rtrec_serving_loop_lag_seconds_count") or 0.0
    watch = LoopWatch(period_s=0.005, warn_s=0.5)

    async def idle() -> None:
        watch.start()
        await asyncio.sleep(0.1)
        watch.stop()

    asyncio.run(idle())
    assert watch.stalls == 0 and not kept.records
    metrics.flush()
    assert (REGISTRY.get_sample_value("rtrec_serving_loop_lag_seconds_count") or 0.0) > before


def test_collections_are_timed_by_generation(kept: _Kept) -> None:
    metrics.flush()  # collections record in memory; what came before is written out first
    before = REGISTRY.get_sample_value("rtrec_serving_gc_pause_seconds_count", {"generation": "2"})
    time_collections(warn_s=0.0)  # every collection is "long": its warning shows the fields
    time_collections(warn_s=0.0)  # idempotent: one timer per process
    try:
        gc.collect()
        logged = [r for r in kept.records if r.getMessage().startswith("garbage collection")]
    finally:
        gc.callbacks[:] = [cb for cb in gc.callbacks if type(cb).__name__ != "_CollectionTimer"]
    metrics.flush()
    after = REGISTRY.get_sample_value("rtrec_serving_gc_pause_seconds_count", {"generation": "2"})
    assert after == (before or 0.0) + 1
    (record,) = logged
    assert record.generation == 2  # type: ignore[attr-defined]


def test_heartbeat_reports_when_its_own_loop_was_held() -> None:
    stalls: list[tuple[float, float]] = []

    async def client() -> None:
        start = time.perf_counter()
        beat = asyncio.create_task(heartbeat(start, stalls, min_lag_s=0.02))
        await asyncio.sleep(0.03)
        time.sleep(0.1)
        await asyncio.sleep(0.03)
        beat.cancel()

    asyncio.run(client())
    assert any(0.0 < at < 0.1 and lag >= 0.07 for at, lag in stalls)


def test_recorded_observations_flush_to_the_same_series_as_direct_ones() -> None:
    """record() + flush() leaves a histogram and a counter as observe()/inc() would."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1)
    direct = Histogram("direct_seconds", "d", ["stage"], buckets=buckets, registry=registry)
    batched = Histogram("batched_seconds", "b", ["stage"], buckets=buckets, registry=registry)
    hits = Counter("hits_total", "h", ["variant"], registry=registry)
    values = [0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 3.0]  # on and between the bounds
    for v in values:
        direct.labels("x").observe(v)
        metrics.record(batched, v, "x")
        metrics.record(hits, 1, "champion")
    assert registry.get_sample_value("batched_seconds_count", {"stage": "x"}) == 0.0
    metrics.flush()
    metrics.flush()  # nothing new: nothing written twice
    for le in ("0.001", "0.01", "0.1", "+Inf"):
        labels = {"stage": "x", "le": le}
        assert registry.get_sample_value("batched_seconds_bucket", labels) == (
            registry.get_sample_value("direct_seconds_bucket", labels)
        )
    assert registry.get_sample_value("batched_seconds_sum", {"stage": "x"}) == sum(values)
    assert registry.get_sample_value("hits_total", {"variant": "champion"}) == len(values)
