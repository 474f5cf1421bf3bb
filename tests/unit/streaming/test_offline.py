"""The buffered offline event log: schema training reads, offsets it reports, no repeats."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from rtrec.streaming import write_events
from rtrec.streaming.event_log import SCHEMA, read_events
from rtrec.streaming.offline import OfflineLog
from rtrec.streaming.validate import Event

from rtrec.errors import InvalidInput


def test_flush_writes_the_training_schema_and_reports_offsets(tmp_path: Path) -> None:
    log = OfflineLog(tmp_path)
    log.add(0, 10, Event("u1", "i1", "view", 1_700_000_000_123, None))
    log.add(1, 4, Event("u2", "i2", "rating", 1_700_000_000_456, 4.0))
    log.add(0, 11, Event("u1", "i3", "click", 1_700_000_001_000, None))
    assert log.flush() == {0: 11, 1: 4}
    assert len(log) == 0 and log.first_added is None
    files = list(tmp_path.glob("*.parquet"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    table = pq.read_table(files[0])
    assert table.schema.names == SCHEMA.names
    assert str(table.schema.field("event_time").type) == "timestamp[us, tz=UTC]"
    frame = table.to_pandas()
    assert frame["ts"].tolist() == [1_700_000_000_123, 1_700_000_000_456, 1_700_000_001_000]
    assert frame["value"].isna().tolist() == [True, False, True]


def test_truncate_undoes_a_batch_and_read_events_drops_repeats(tmp_path: Path) -> None:
    log = OfflineLog(tmp_path)
    log.add(0, 1, Event("u1", "i1", "view", 1, None))
    log.add(0, 2, Event("u1", "i2", "view", 2, None))
    log.truncate(1)
    assert log.flush() == {0: 1}
    log.add(0, 1, Event("u1", "i1", "view", 1, None))  # redelivered after a crash
    log.add(0, 2, Event("u1", "i2", "view", 2, None))
    log.flush()
    frame = read_events(tmp_path)
    assert sorted(frame["offset"].tolist()) == [1, 2]
    assert read_events(tmp_path / "missing").empty


def test_a_recreated_topic_keeps_its_rows_apart_from_the_old_log(tmp_path: Path) -> None:
    log = OfflineLog(tmp_path)
    log.add(0, 0, Event("u1", "i1", "view", 1, None))
    log.flush()  # a file from before log ids (no log_id column)
    log.add(0, 0, Event("u1", "i2", "view", 2, None))
    log.flush(log_id="old")
    log.add(0, 0, Event("u1", "i2", "view", 2, None))  # repeated by a crash
    log.flush(log_id="old")
    log.add(0, 0, Event("u2", "i3", "view", 3, None))  # the topic created again: offset 0
    log.flush(log_id="new")
    frame = read_events(tmp_path)
    assert sorted(frame["item_id"]) == ["i1", "i2", "i3"]
    assert sorted(frame["log_id"]) == ["", "new", "old"]


def test_write_events_writes_a_frame_as_the_processor_would(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1"],
            "item_id": ["i1", "i2", "i3"],
            "event_type": ["view", "rating", "click"],
            "ts": [1_700_000_000_123, 1_700_000_000_456, 1_700_000_001_000],
            "value": [float("nan"), 4.0, float("nan")],
        }
    )
    path = write_events(tmp_path / "from-frame", frame)
    log = OfflineLog(tmp_path / "from-stream")
    for offset, row in enumerate(frame.itertuples(index=False)):
        value = None if pd.isna(row.value) else row.value
        log.add(-1, offset, Event(row.user_id, row.item_id, row.event_type, row.ts, value))
    log.flush()
    written = pq.read_table(path)
    streamed = pq.read_table(next((tmp_path / "from-stream").glob("*.parquet")))
    assert written.schema == streamed.schema
    assert written.equals(streamed)
    kept = read_events(tmp_path / "from-frame")
    assert kept["partition"].tolist() == [-1, -1, -1] and kept["offset"].tolist() == [0, 1, 2]
    with pytest.raises(InvalidInput, match="value"):
        write_events(tmp_path, frame.drop(columns="value"))


def test_the_sender_stamped_in_context_is_kept_in_the_log(tmp_path: Path) -> None:
    """``context.source_key`` (the API key name the service stamps on /feedback events)
    reaches the log's ``source`` column through validation; files without any source keep
    the plain schema, and a reader of both sees null for the unstamped rows."""
    import orjson
    from rtrec.streaming.validate import validate

    now = 1_700_000_010_000
    stamped = {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": now - 5}
    raw = orjson.dumps({**stamped, "context": {"source_key": "web-app", "device": "ios"}})
    plain = orjson.dumps({**stamped, "user_id": "u2"})
    log = OfflineLog(tmp_path / "a")
    log.add(0, 1, validate(raw, now))
    log.add(0, 2, validate(plain, now))
    log.flush()
    other = OfflineLog(tmp_path / "b")
    other.add(0, 3, validate(plain, now))
    other.flush()
    (file_b,) = (tmp_path / "b").glob("*.parquet")
    assert pq.read_schema(file_b).names == SCHEMA.names  # nothing stamped: no column
    file_b.rename(tmp_path / "a" / file_b.name)
    frame = read_events(tmp_path / "a").sort_values("offset")
    assert frame["source"].tolist()[0] == "web-app"
    assert frame["source"].isna().tolist() == [False, True, True]
