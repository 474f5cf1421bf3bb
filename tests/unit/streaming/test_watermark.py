"""The offline log's watermark: what a flush contributes, and what a reader concludes.

Redis's side (the atomic record script, its fencing and reset) runs against a real Redis
in ``tests/integration/test_offline_watermark.py``; these are the pure parts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rtrec.streaming.coverage import OfflineCoverage, covered_rows
from rtrec.streaming.event_log import LOG_ID
from rtrec.streaming.offline import OfflineLog
from rtrec.streaming.validate import Event
from rtrec.streaming.watermark import PartitionMark, Watermark


def coverage(
    through: dict[int, tuple[int, int]],
    ends: dict[int, int],
    *,
    log: str = "L1",
    topic_id: str = "L1",
    until_ms: int | None = None,
) -> OfflineCoverage:
    """``through``: partition -> (offset covered, newest event time)."""
    marks = {p: PartitionMark(o, o, t) for p, (o, t) in through.items()}
    return OfflineCoverage("ev", topic_id, Watermark(log, marks, 123), ends, 456, until_ms)


def test_a_flush_reports_each_partitions_highest_offset_and_newest_event_time(
    tmp_path: Path,
) -> None:
    log = OfflineLog(tmp_path)
    log.add(0, 10, Event("u1", "i1", "view", 5_000, None))
    log.add(1, 4, Event("u2", "i2", "view", 9_000, None))
    log.add(0, 11, Event("u1", "i3", "click", 3_000, None))  # late event: older time
    assert log.write_marks(log.take()) == {0: (11, 5_000), 1: (4, 9_000)}
    assert log.write_marks(log.take()) == {}  # nothing buffered: no file, no marks
    assert len(list(tmp_path.glob("*.parquet"))) == 1


def test_complete_only_when_every_partition_reaches_the_end_offsets_asked_for() -> None:
    cov = coverage({0: (99, 5_000), 1: (40, 7_000)}, {0: 100, 1: 50, 2: 0})
    assert cov.behind == {1: (41, 50)}  # offsets 41..49 of partition 1 not logged
    assert not cov.complete and not cov.covers()
    assert cov.event_time_ms == 5_000  # the partition furthest behind in event time
    done = coverage({0: (99, 5_000), 1: (49, 7_000)}, {0: 100, 1: 50, 2: 0})
    assert done.complete and done.covers() and done.behind == {}


def test_event_time_covers_a_window_before_the_end_offsets_are_reached() -> None:
    cov = coverage({0: (99, 5_000), 1: (40, 7_000)}, {0: 100, 1: 50})
    assert cov.covers(5_000) and not cov.covers(5_001)
    assert coverage({0: (99, 5_000)}, {0: 100, 1: 50}, until_ms=10).event_time_ms is None
    assert not coverage({0: (99, 5_000)}, {0: 100, 1: 50}, until_ms=10).covers()  # 1: nothing


def test_an_empty_topic_is_covered_and_has_no_event_time() -> None:
    cov = coverage({}, {0: 0, 1: 0}, log="", topic_id="T")
    assert cov.complete and cov.covers(10**13) is True and cov.event_time_ms is None


def test_a_watermark_of_an_earlier_topic_incarnation_covers_nothing() -> None:
    cov = coverage({0: (999, 5_000)}, {0: 10}, log="old", topic_id="new")
    assert not cov.same_log and cov.through == {0: -1} and cov.behind == {0: (0, 10)}
    assert not cov.covers(0)
    assert "created again" in cov.describe()
    assert coverage({0: (9, 5)}, {0: 10}, log="L", topic_id="").same_log  # id unknown


def test_describe_and_to_dict_name_what_is_missing() -> None:
    cov = coverage({0: (99, 5_000), 1: (40, 7_000)}, {0: 100, 1: 50}, until_ms=6_000)
    text = cov.describe()
    assert "1: 41/50" in text and "event time reached 1970-01-01T00:00:05.000Z" in text
    assert "needed 1970-01-01T00:00:06.000Z" in text
    out = json.loads(json.dumps(cov.to_dict()))  # JSON-native (XCom, alerts)
    assert out["behind"] == {"1": [41, 50]} and out["through"] == {"0": 99, "1": 40}
    assert out["complete"] is False and out["covered"] is False and out["event_time_ms"] == 5_000


def _log(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    """(log_id, partition, offset) rows of an offline log."""
    frame = pd.DataFrame(rows, columns=[LOG_ID, "partition", "offset"])
    frame["ts"] = range(len(frame))
    return frame


def test_covered_rows_leaves_out_rows_flushed_after_the_watermark_was_read() -> None:
    events = _log(
        [
            ("L1", 0, 5),
            ("L1", 0, 6),  # beyond partition 0's watermark (5)
            ("L1", 1, 2),  # partition 1: nothing covered yet
            ("L0", 0, 50),  # an earlier incarnation of the topic: complete, kept
            ("L1", -1, 0),  # never went through Kafka: kept
            ("L1", 2, 7),  # a partition without data on the broker: not this log's
        ]
    )
    cov = coverage({0: (5, 100)}, {0: 10, 1: 3, 2: 0})
    kept = covered_rows(events, cov)
    assert list(zip(kept[LOG_ID], kept["partition"], kept["offset"], strict=True)) == [
        ("L1", 0, 5),
        ("L0", 0, 50),
        ("L1", -1, 0),
        ("L1", 2, 7),
    ]


def test_covered_rows_without_log_ids_applies_to_a_broker_without_topic_ids() -> None:
    events = _log([("", 0, 1), ("", 0, 2)]).drop(columns=[LOG_ID])
    assert len(covered_rows(events, coverage({0: (1, 9)}, {0: 3}, log="", topic_id=""))) == 1
    # With topic ids, rows written without one are not the current log's: kept.
    assert len(covered_rows(events, coverage({0: (1, 9)}, {0: 3}))) == 2


@pytest.mark.parametrize("empty", [pd.DataFrame(columns=["partition", "offset", "ts"])])
def test_covered_rows_of_an_empty_log(empty: pd.DataFrame) -> None:
    assert covered_rows(empty, coverage({}, {0: 5})).empty
