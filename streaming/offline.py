"""The append-only offline event log: what training reads (``training.dataset``).

One parquet file per processed batch under ``<offline_dir>/events``, columns
``user_id, item_id, event_type, ts (ms), event_time (µs UTC), value, partition, offset``.
Written before the batch's state is committed, so a crash can only duplicate rows
(training drops duplicates by content), never lose them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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


class OfflineLog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def append(self, batch: list[tuple[Any, Any]]) -> Path:
        """Write one batch of ``(kafka record, Interaction)`` pairs as one file."""
        ts = [e.ts for _, e in batch]
        table = pa.table(
            [
                pa.array([e.user_id for _, e in batch], pa.string()),
                pa.array([e.item_id for _, e in batch], pa.string()),
                pa.array([e.event_type.value for _, e in batch], pa.string()),
                pa.array(ts, pa.int64()),
                pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                pa.array([e.value for _, e in batch], pa.float64()),
                pa.array([r.partition for r, _ in batch], pa.int32()),
                pa.array([r.offset for r, _ in batch], pa.int64()),
            ],
            schema=SCHEMA,
        )
        path = self.directory / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, coerce_timestamps="us", allow_truncated_timestamps=True)
        tmp.rename(path)  # readers never see a half-written file
        return path

    def flush(self) -> None:
        """Files are written per batch; nothing is buffered."""


def read_events(directory: Path) -> Any:
    """The whole log as pandas (monitoring and tests; training reads it with Spark)."""
    import pandas as pd

    files = sorted(directory.glob("*.parquet"))
    if not files:
        return pd.DataFrame(columns=SCHEMA.names)
    return pq.read_table(files).to_pandas()
