"""The offline log's watermark against a real broker, Redis and stream processor.

The race it closes: the processor applies events to Redis at once but writes the offline
log a couple of seconds later, so a drift check started in between judged windows with
their newest events missing. Here the flush is held back deterministically (a gate in
front of the file write), the check is started while the events are applied but not
logged, and it must wait for the watermark, or judge as of it and say so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rtrec.monitoring import monitor_offline_log
from rtrec.streaming import offline_coverage, publish, wait_for_offline_log
from rtrec.streaming.processor import StreamProcessor

from rtrec.config import Settings
from rtrec.errors import Unavailable
from tests.stream_helpers import isolated, wait_applied

pytestmark = pytest.mark.integration

DAY = 86_400_000
NOW = 1_750_000_000_000
"""End of the current window: a day that validation accepts (in the past)."""
N_REF, N_CUR = 900, 400


def _events(n: int, start: int, span: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    ts = np.sort(start + rng.integers(0, span, n))
    return [
        {
            "user_id": f"u{int(u)}",
            "item_id": f"i{int(i)}",
            "event_type": str(t),
            "ts": int(stamp),
        }
        for u, i, t, stamp in zip(
            rng.integers(0, 60, n),
            rng.integers(0, 40, n),
            rng.choice(["view", "click"], n, p=[0.8, 0.2]),
            ts,
            strict=True,
        )
    ]


def _publish(s: Settings, events: list[dict[str, Any]]) -> None:
    pairs = [(e["user_id"].encode(), json.dumps(e).encode()) for e in events]
    publish(s, pairs, total=len(pairs), progress=False)


class Gate:
    """Holds the processor's offline file writes while closed (the flush thread waits)."""

    def __init__(self, processor: StreamProcessor) -> None:
        self.open = threading.Event()
        self.open.set()
        self.held = threading.Event()
        log = processor.sink.log
        real = log.write_marks

        def gated(*args: Any, **kwargs: Any) -> Any:
            if not self.open.is_set():
                self.held.set()
                assert self.open.wait(120), "gate never opened"
            return real(*args, **kwargs)

        log.write_marks = gated  # type: ignore[method-assign]


@pytest.fixture
def running(stack: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Gate]]:
    """An isolated topic with an in-process processor whose flushes can be held."""
    s = isolated(stack, tmp_path)
    processor = StreamProcessor(s)
    gate = Gate(processor)
    thread = threading.Thread(target=processor.run, name="processor", daemon=True)
    thread.start()
    try:
        yield s, gate
    finally:
        gate.open.set()
        processor.stop()
        thread.join(60)


def _check(s: Settings, **kw: Any):
    return monitor_offline_log(
        s, now_ms=NOW, scores=False, alert=False, record=False, reference_days=7, **kw
    )


def test_a_check_started_before_the_flush_waits_for_the_watermark(running) -> None:
    s, gate = running
    ref = _events(N_REF, NOW - 8 * DAY, 7 * DAY, seed=1)  # the reference window
    cur = _events(N_CUR, NOW - DAY, DAY, seed=2)  # the current window
    _publish(s, ref)
    first = wait_for_offline_log(s, timeout_s=60)
    assert first.complete and sum(e for e in first.end_offsets.values()) == N_REF

    # The current window arrives and is applied, but its offline flush is held back:
    # where the demo's drift check used to start.
    gate.open.clear()
    _publish(s, cur)
    wait_applied(s, N_REF + N_CUR, timeout=60)
    assert gate.held.wait(30), "the processor never tried to flush"
    behind = offline_coverage(s, until_ms=NOW)
    assert not behind.complete and not behind.covers()
    assert sum(end - got for got, end in behind.behind.values()) == N_CUR

    # Judged at once, as of the watermark: the current window is empty, and the verdict
    # says it was judged as of a watermark that does not cover it.
    early = _check(s, coverage="as_of")
    assert (early.reference_rows, early.current_rows) == (N_REF, 0)
    assert early.status == "not judged"
    assert early.as_of is not None and early.as_of["covered"] is False
    assert "as of the offline log's watermark" in early.summary
    assert "partitions behind" in early.summary

    # Waiting in vain fails loudly, naming what is missing.
    with pytest.raises(Unavailable, match=r"did not cover topic .* partitions behind"):
        _check(s, coverage="wait", wait_s=0.5)

    # A waiting check started now cannot finish while the flush is held ...
    result: dict[str, Any] = {}

    def check() -> None:
        try:
            result["verdict"] = _check(s, coverage="wait", wait_s=120)
        except BaseException as exc:  # reported below
            result["error"] = exc

    waiter = threading.Thread(target=check, name="drift-check")
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and not result  # still waiting for the watermark
    gate.open.set()  # ... and judges both whole windows once it is written
    waiter.join(120)
    assert "error" not in result, result.get("error")
    verdict = result["verdict"]
    assert (verdict.reference_rows, verdict.current_rows) == (N_REF, N_CUR)
    assert verdict.judged and verdict.as_of is not None
    assert verdict.as_of["mode"] == "wait" and verdict.as_of["complete"] is True
    assert verdict.as_of["waited_s"] >= 0.5  # it did wait (alive after 1 s, above)
    assert verdict.as_of["end_offsets"] == {str(p): end for p, end in behind.end_offsets.items()}


def test_dead_letters_at_the_end_of_a_partition_are_covered(running) -> None:
    """Rejected events are never written, yet the log covers their offsets: a reader
    waiting for the end offsets is not left waiting for rows that will never come."""
    s, _ = running
    from kafka import KafkaProducer

    _publish(s, _events(50, NOW - DAY, DAY, seed=3))
    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers)
    for p in range(s.kafka.partitions):  # one malformed record last on every partition
        producer.send(s.kafka.events_topic, value=b"{not json", partition=p)
    producer.flush()
    producer.close()
    cov = wait_for_offline_log(s, timeout_s=60)
    assert cov.complete
    marks = cov.watermark.partitions
    assert all(marks[p].written < marks[p].through == end - 1 for p, end in cov.end_offsets.items())
    assert cov.event_time_ms is not None and cov.event_time_ms < NOW


def test_the_watermark_only_moves_forward_and_belongs_to_one_topic_log(
    stack: Settings, tmp_path: Path
) -> None:
    import redis
    from rtrec.streaming.aggregates import WINDOW_HOURS
    from rtrec.streaming.coverage import read_watermark
    from rtrec.streaming.state import RedisState

    s = isolated(stack, tmp_path)
    client = redis.Redis.from_url(s.redis.url)
    state = RedisState(s, client, WINDOW_HOURS)
    assert state.adopt_log("log-A") == "log-A"
    assert state.record_offline({0: (10, 5_000)}, {0: 12, 1: 3}, log_id="log-A")
    assert state.record_offline({0: (8, 4_000)}, {0: 9}, log_id="log-A")  # a stale flush
    mark = read_watermark(client, s)
    assert mark.log_id == "log-A" and mark.updated_ms > 0
    assert {p: (m.written, m.through, m.newest_ms) for p, m in mark.partitions.items()} == {
        0: (10, 12, 5_000),
        1: (-1, 3, -1),
    }
    assert state.offline_offsets([0, 1]) == {0: 10, 1: -1}  # what a new owner skips
    # A flush of another incarnation of the topic is not recorded against this one.
    assert not state.record_offline({0: (50, 9_000)}, {0: 50}, log_id="log-B")
    assert read_watermark(client, s).partitions[0].through == 12
    # The topic created again: its offsets restart, so does its watermark.
    assert state.reset_log("log-A", "log-B")
    assert read_watermark(client, s).partitions == {}
    assert state.record_offline({0: (0, 9_000)}, {0: 0}, log_id="log-B")
    assert read_watermark(client, s).partitions[0].through == 0
