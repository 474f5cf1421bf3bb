"""The offline event log's files: their schema, one writer, one reader.

Parquet files under ``<offline_dir>/events``, columns ``user_id, item_id, event_type,
ts (ms), event_time (µs UTC), value, partition, offset`` and, where the broker reports
topic ids, ``log_id``. The processor's flushes (:class:`rtrec.streaming.offline.OfflineLog`)
and :func:`write_events` build their tables with the same :func:`log_table`, so the two
writers cannot drift apart; :func:`read_events` reads any mix of them back.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rtrec.errors import InvalidInput

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("ts", pa.int64()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("value", pa.float64()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)
LOG_ID = "log_id"
"""Extra column: the topic incarnation (broker topic id) ``partition``/``offset`` refer to.
A topic created again (the embedded broker restarted) numbers its offsets from 0 once
more; without this, :func:`read_events` would drop its events as repeats of the old ones.
Absent from files written without a known topic id (read as "")."""
SOURCE = "source"
"""Extra column: who sent the event, where its producer said so (``context.source_key``:
the name of the API key ``POST /feedback`` accepted it under). Absent from files whose
events carried no source (read as null)."""


def log_table(
    user: Any,
    item: Any,
    event_type: Any,
    ts: pa.Array,
    value: pa.Array,
    partition: pa.Array,
    offset: pa.Array,
    *,
    log_id: str = "",
    source: list[str | None] | None = None,
) -> pa.Table:
    """One log file's table in :data:`SCHEMA` (``event_time`` derived from ``ts``), so the
    processor's flushes and :func:`write_events` cannot drift apart."""
    table = pa.table(
        [
            pa.array(user, pa.string()),
            pa.array(item, pa.string()),
            pa.array(event_type, pa.string()),
            ts,
            ts.cast(pa.timestamp("ms", tz="UTC")),
            value,
            partition,
            offset,
        ],
        schema=SCHEMA,
    )
    if log_id:
        table = table.append_column(LOG_ID, pa.array([log_id] * len(table), pa.string()))
    if source is not None and any(s is not None for s in source):
        table = table.append_column(SOURCE, pa.array(source, pa.string()))
    return table


def write_log_file(directory: Path, table: pa.Table) -> Path:
    """Write one log file under a fresh unique name; returns its path."""
    path = directory / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, coerce_timestamps="us", allow_truncated_timestamps=True)
    tmp.rename(path)  # readers never see a half-written file
    return path


def write_events(directory: Path, events: Any, *, partition: int = -1) -> Path:
    """Write a frame of events that did not stream (a data set given to ``rtrec train
    --data``, a benchmark's or a test's history) as one file of the offline event log.

    ``events`` has ``user_id, item_id, event_type, ts`` (ms) and ``value`` (NaN where an
    event has none); offsets are the rows' positions. ``partition`` -1 marks rows that
    never went through Kafka (:func:`read_events` keeps them as they are); a caller that
    stands in for the processor passes a real partition. Returns the file written.
    """
    missing = [c for c in ("user_id", "item_id", "event_type", "ts", "value") if c not in events]
    if missing:
        raise InvalidInput(f"events lack column(s) {', '.join(missing)}", field=missing[0])
    directory.mkdir(parents=True, exist_ok=True)
    n = len(events)
    table = log_table(
        events["user_id"].astype(str),
        events["item_id"].astype(str),
        events["event_type"].astype(str),
        pa.array(events["ts"], pa.int64()),
        pa.array(events["value"], pa.float64(), from_pandas=True),
        pa.array(np.full(n, partition, np.int32)),
        pa.array(np.arange(n, dtype=np.int64)),
    )
    return write_log_file(directory, table)


def read_events(directory: Path) -> Any:
    """The whole log as pandas (monitoring and tests; training reads it with Spark).

    Rows repeated by a crash (same log, Kafka partition and offset) appear once; rows that
    never went through Kafka (``partition`` -1) are kept as they are.
    """
    import pandas as pd
    import pyarrow.dataset as pads

    files = sorted(directory.glob("*.parquet"))
    if not files:
        return pd.DataFrame(columns=SCHEMA.names)
    # One schema for all files: with or without ``log_id`` (read_table would take the first's).
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    frame = pads.dataset([str(f) for f in files], schema=schema).to_table().to_pandas()
    if LOG_ID in frame.columns:
        frame[LOG_ID] = frame[LOG_ID].fillna("")
    key = [c for c in (LOG_ID, "partition", "offset") if c in frame.columns]
    from_kafka = frame["partition"] >= 0
    repeated = from_kafka & frame.duplicated(key)
    return frame[~repeated].reset_index(drop=True) if repeated.any() else frame
