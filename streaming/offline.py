"""The append-only offline event log: what training reads (``rtrec.training.dataset``).

The processor's side of it: :class:`OfflineLog` buffers events between flushes and
:class:`OfflineSink` runs the flushes (files, feature rows, watermark); the files' schema,
writer and reader are in ``rtrec.streaming.event_log`` (re-exported here). Kafka offsets
are committed only up to what has been written here, so a crash never loses a row; a
crash between a file write and the recorded progress can repeat rows (same log,
partition and offset, which :func:`read_events` and training drop).

Files are written a couple of seconds after their events were applied to the online
store, so "the processor has applied everything" does not mean "the log holds it". Each
flush therefore records a watermark in Redis (``rtrec.streaming.state``): per partition the
highest offset the log covers and the newest event time written; ``rtrec.streaming.coverage``
reads it back for readers that must judge complete data.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from rtrec.streaming.event_log import (
    LOG_ID,
    SCHEMA,
    SOURCE,
    log_table,
    read_events,
    write_events,
    write_log_file,
)

# The log's file format lives in event_log; its names stay importable from here.
__all__ = ["LOG_ID", "SCHEMA", "SOURCE", "OfflineLog", "OfflineSink", "read_events", "write_events"]

logger = logging.getLogger(__name__)

_BUFFER = (*SCHEMA.names, SOURCE)
"""The buffer's columns: the schema's, then each event's source (null for most)."""


class OfflineLog:
    """Buffers validated events and writes them as one parquet file per flush.

    The processor flushes every couple of seconds (not every batch: thousands of tiny
    files would slow every reader) and commits Kafka offsets only up to what a flush
    wrote, so events still in the buffer at a crash are redelivered and logged then.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._cols: tuple[list[Any], ...] = tuple([] for _ in _BUFFER)
        self.first_added: float | None = None

    def __len__(self) -> int:
        return len(self._cols[0])

    def add(self, partition: int, offset: int, event: Any) -> None:
        """Buffer one validated event (``user_id, item_id, event_type, ts, value``)."""
        u, i, t, ts, _event_time, v, p, o, src = self._cols
        src.append(getattr(event, "source", None))
        u.append(event.user_id)
        i.append(event.item_id)
        t.append(event.event_type)
        ts.append(event.ts)
        v.append(event.value)
        p.append(partition)
        o.append(offset)
        if self.first_added is None:
            self.first_added = time.monotonic()

    def truncate(self, n: int) -> None:
        """Forget everything added after the first ``n`` rows (a batch that was undone)."""
        for col in self._cols:
            del col[n:]
        if not n:
            self.first_added = None

    def take(self) -> tuple[list[Any], ...]:
        """Hand the buffered columns over (for :meth:`write`) and start a fresh buffer."""
        cols = self._cols
        self._cols = tuple([] for _ in _BUFFER)
        self.first_added = None
        return cols

    def flush(self, *, log_id: str = "") -> dict[int, int]:
        """Write the buffer as one file; returns the highest offset written per partition."""
        return self.write(self.take(), log_id=log_id)

    def write(self, cols: tuple[list[Any], ...], *, log_id: str = "") -> dict[int, int]:
        """Write taken columns as one file (safe off the processing thread); returns the
        highest offset written per partition."""
        return {p: off for p, (off, _) in self.write_marks(cols, log_id=log_id).items()}

    def write_marks(
        self, cols: tuple[list[Any], ...], *, log_id: str = ""
    ) -> dict[int, tuple[int, int]]:
        """:meth:`write`, returning per partition (highest offset, newest event ``ts``):
        the flush's contribution to the watermark."""
        if not cols[0]:
            return {}
        u, i, t, ts, _, v, p, o, src = cols
        table = log_table(
            u,
            i,
            t,
            pa.array(ts, pa.int64()),
            pa.array(v, pa.float64()),
            pa.array(p, pa.int32()),
            pa.array(o, pa.int64()),
            log_id=log_id,
            source=src,
        )
        grouped = table.group_by("partition").aggregate([("offset", "max"), ("ts", "max")])
        marks = {
            int(part): (int(off), int(newest))
            for part, off, newest in zip(
                grouped["partition"].to_pylist(),
                grouped["offset_max"].to_pylist(),
                grouped["ts_max"].to_pylist(),
                strict=True,
            )
        }
        write_log_file(self.directory, table)
        return marks


class OfflineSink:
    """The processor's offline side between flushes: the event log buffer, every
    stream-feature row since the last flush (Feast's offline store), and what is
    already logged per partition (kept in Redis, so a new owner of a partition skips it).

    Every row, not each entity's latest per flush: the rows written online and, for the
    users, their states at the hours a batch's events cross (``batch._Fold.between``).
    Feast's point-in-time join then finds, at a moment, the user's state after its last
    event before it (rows are stamped with that event's time; see ``_Fold.between`` for
    when it cannot), so a training state at ``now`` is what a request at ``now`` read.
    With one row per flush, a user active on both sides of ``now`` within one flush had
    only its previous flush's row before ``now``, or none (``rtrec.training.pit_states``).
    Never more user rows than events.

    Files are written on a background thread (a flush took 40-100 ms, a pause every
    processed batch behind it waited out); one flush is in flight at a time and its
    offsets count as logged only once :meth:`collect` has seen it finish.

    Each flush also records the watermark (``RedisState.record_offline``): the offsets
    of the batches committed before it started (``RedisState.committed``: their valid
    events are all in this flush or an earlier one; their invalid ones went to the
    dead-letter topic) and the newest event time written. A batch of dead letters alone
    adds no row but still moves the watermark, by a flush without a file.
    """

    def __init__(self, settings: Any, state: Any, *, flush_s: float, flush_rows: int) -> None:
        self.settings = settings
        self.state = state
        self.flush_s = flush_s
        self.flush_rows = flush_rows
        self.log = OfflineLog(settings.events_log_dir)
        self.done: dict[int, int] = {}
        self.rows: dict[str, list[Any]] = {}
        self._job: threading.Thread | None = None
        self._job_log = ""
        self._result: dict[int, int] | BaseException = {}
        self.log_id = ""
        """The topic incarnation buffered rows belong to (the processor flushes before it
        changes this, so a buffer never mixes two)."""
        self._through: dict[int, int] = {}
        """Committed offsets handed to the last flush started (its watermark)."""
        self._uncovered_since: float | None = None
        """When committed offsets first went beyond ``_through`` with no row buffered."""

    def add(self, partition: int, offset: int, event: Any) -> None:
        """Buffer an event unless an earlier run already logged its offset."""
        if offset > self.done.get(partition, -1):
            self.log.add(partition, offset, event)

    def remember(self, view: str, rows: list[Any]) -> None:
        """Rows for the next flush: those just written online, and for the users the
        batch's in-between states (``batch._Fold.between``)."""
        if rows:
            self.rows.setdefault(view, []).extend(rows)

    def mark(self) -> int:
        return len(self.log)

    def undo(self, mark: int) -> None:
        self.log.truncate(mark)

    def pending(self) -> bool:
        return bool(len(self.log) or any(self.rows.values()) or self._uncovered())

    def _uncovered(self) -> bool:
        """Batches were committed since the last flush started (the watermark lags)."""
        through = self._through
        return any(off > through.get(p, -1) for p, off in self.state.committed.items())

    def due(self) -> bool:
        started = self.log.first_added
        if started is None:
            if not self._uncovered():
                self._uncovered_since = None
                return False
            if self._uncovered_since is None:
                self._uncovered_since = time.monotonic()
            started = self._uncovered_since
        return len(self.log) >= self.flush_rows or time.monotonic() - started >= self.flush_s

    def start(self) -> bool:
        """Start writing what is buffered; False while the previous flush still runs."""
        if self._job is not None:
            return False
        cols, rows = self.log.take(), self.rows
        self.rows = {}
        # Every batch committed so far has its valid events in ``cols`` or in the log.
        through = self._through = dict(self.state.committed)
        self._uncovered_since = None
        self._job_log = self.log_id
        self._job = threading.Thread(
            target=self._write,
            args=(cols, rows, self.log_id, through),
            name="offline-flush",
            daemon=True,
        )
        self._job.start()
        return True

    def _write(
        self,
        cols: tuple[list[Any], ...],
        rows: dict[str, list[Any]],
        log_id: str,
        through: dict[int, int],
    ) -> None:
        from rtrec.features import append_offline_rows

        try:
            for view, view_rows in rows.items():
                append_offline_rows(self.settings, view, view_rows)
            marks = self.log.write_marks(cols, log_id=log_id)
            if not self.state.record_offline(marks, through, log_id=log_id):
                logger.warning(
                    "offline flush of topic log %s not recorded: the stream state now "
                    "belongs to another incarnation of the topic (its rows stay, marked)",
                    log_id,
                )
            self._result = {p: off for p, (off, _) in marks.items()}
        except BaseException as exc:  # re-raised on the processing thread by collect()
            self._result = exc

    def collect(self, *, wait: bool = False) -> dict[int, int]:
        """Offsets logged by a finished flush ({} if none finished); raises its error."""
        job = self._job
        if job is None or (job.is_alive() and not wait):
            return {}
        job.join()
        self._job = None
        result, self._result = self._result, {}
        if isinstance(result, BaseException):
            raise result
        if self._job_log != self.log_id:  # offsets of the topic's previous log: not ours
            return {}
        self.done.update(result)
        return result

    def flush(self) -> dict[int, int]:
        """Write everything buffered now and wait for it (stop, revocation)."""
        high = self.collect(wait=True)
        if self.pending() and self.start():
            for p, o in self.collect(wait=True).items():
                high[p] = max(o, high.get(p, -1))
        return high

    def load(self, partitions: list[int]) -> None:
        self.done.update(self.state.offline_offsets(partitions))

    def forget(self, partitions: list[int] | None = None) -> None:
        """Drop the buffer; with ``partitions``, reload their progress from Redis."""
        try:
            self.collect(wait=True)
        except Exception as exc:  # its rows are redelivered: nothing was committed
            logger.warning("offline flush failed (%s); its events will be redelivered", exc)
        self.log.truncate(0)
        self.rows = {}
        self.done.clear()
        # What was committed but not flushed is read again (or by another member).
        self.state.forget_committed()
        self._through = {}
        self._uncovered_since = None
        if partitions:
            self.load(partitions)
