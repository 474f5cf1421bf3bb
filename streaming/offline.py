"""The append-only offline event log: what training reads (``training.dataset``).

Parquet files under ``<offline_dir>/events``, columns ``user_id, item_id, event_type,
ts (ms), event_time (µs UTC), value, partition, offset`` and, where the broker reports
topic ids, ``log_id``. Kafka offsets are committed only up to what has been written here,
so a crash never loses a row; a crash between a file write and the recorded progress can
repeat rows (same log, partition and offset, which :func:`read_events` and training drop).

Files are written a couple of seconds after their events were applied to the online
store, so "the processor has applied everything" does not mean "the log holds it". Each
flush therefore records a watermark in Redis (``streaming.state``): per partition the
highest offset the log covers and the newest event time written. Readers that must judge
complete data ask :func:`offline_coverage` ("does the log cover everything published /
event time T?") or wait with :func:`wait_for_offline_log`, and judge only the rows the
watermark vouches for (:func:`covered_rows`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rtrec.errors import InvalidInput, Unavailable
from streaming.state import Watermark, read_watermark

logger = logging.getLogger(__name__)

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


class OfflineLog:
    """Buffers validated events and writes them as one parquet file per flush.

    The processor flushes every couple of seconds (not every batch: thousands of tiny
    files would slow every reader) and commits Kafka offsets only up to what a flush
    wrote, so events still in the buffer at a crash are redelivered and logged then.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._cols: tuple[list[Any], ...] = tuple([] for _ in SCHEMA.names)
        self.first_added: float | None = None

    def __len__(self) -> int:
        return len(self._cols[0])

    def add(self, partition: int, offset: int, event: Any) -> None:
        """Buffer one validated event (``user_id, item_id, event_type, ts, value``)."""
        u, i, t, ts, _event_time, v, p, o = self._cols
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
        self._cols = tuple([] for _ in SCHEMA.names)
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
        u, i, t, ts, _, v, p, o = cols
        stamps = pa.array(ts, pa.int64())
        table = pa.table(
            [
                pa.array(u, pa.string()),
                pa.array(i, pa.string()),
                pa.array(t, pa.string()),
                stamps,
                stamps.cast(pa.timestamp("ms", tz="UTC")),
                pa.array(v, pa.float64()),
                pa.array(p, pa.int32()),
                pa.array(o, pa.int64()),
            ],
            schema=SCHEMA,
        )
        if log_id:
            table = table.append_column(LOG_ID, pa.array([log_id] * len(u), pa.string()))
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
        path = self.directory / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, coerce_timestamps="us", allow_truncated_timestamps=True)
        tmp.rename(path)  # readers never see a half-written file
        return marks


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


class OfflineSink:
    """The processor's offline side between flushes: the event log buffer, each entity's
    latest stream-feature row (Feast's offline store), and what is already logged per
    partition (kept in Redis, so a new owner of a partition skips it).

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
        self.log = OfflineLog(settings.offline_dir / "events")
        self.done: dict[int, int] = {}
        self.latest: dict[str, dict[str, Any]] = {}
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
        """The feature rows just written online: the newest per entity is kept."""
        latest = self.latest.setdefault(view, {})
        for row in rows:
            latest[row[0]] = row

    def mark(self) -> int:
        return len(self.log)

    def undo(self, mark: int) -> None:
        self.log.truncate(mark)

    def pending(self) -> bool:
        return bool(len(self.log) or any(self.latest.values()) or self._uncovered())

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
        cols, latest = self.log.take(), self.latest
        self.latest = {}
        # Every batch committed so far has its valid events in ``cols`` or in the log.
        through = self._through = dict(self.state.committed)
        self._uncovered_since = None
        self._job_log = self.log_id
        self._job = threading.Thread(
            target=self._write,
            args=(cols, latest, self.log_id, through),
            name="offline-flush",
            daemon=True,
        )
        self._job.start()
        return True

    def _write(
        self,
        cols: tuple[list[Any], ...],
        latest: dict[str, dict[str, Any]],
        log_id: str,
        through: dict[int, int],
    ) -> None:
        from features import append_offline_rows

        try:
            for view, rows in latest.items():
                append_offline_rows(self.settings, view, list(rows.values()))
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
        self.latest = {}
        self.done.clear()
        # What was committed but not flushed is read again (or by another member).
        self.state.forget_committed()
        self._through = {}
        self._uncovered_since = None
        if partitions:
            self.load(partitions)


@dataclass(frozen=True)
class OfflineCoverage:
    """How much of the events topic the offline log holds, as of one moment.

    ``end_offsets`` are the topic's end offsets when the question was asked: the log is
    **complete** when every partition is covered up to them (everything published by
    then is logged or was rejected). Its **event time** is the newest event time logged,
    taken at the partition that is furthest behind: with events arriving in about their
    time order per partition (a user's events are keyed to one partition), the log holds
    every event before it.
    """

    topic: str
    topic_id: str
    """The broker's id of the topic when asked ("" where the broker reports none)."""
    watermark: Watermark
    end_offsets: dict[int, int]
    asked_ms: int
    until_ms: int | None = None
    """The event time the caller needs covered (None: only completeness counts)."""
    waited_s: float = 0.0

    @property
    def same_log(self) -> bool:
        """The watermark belongs to the topic the broker has now (not to an earlier
        incarnation of it, which the processor has not noticed being replaced yet)."""
        mine, now = self.watermark.log_id, self.topic_id
        return not mine or not now or mine == now

    @property
    def through(self) -> dict[int, int]:
        """Per partition, the highest offset the log covers (-1: none)."""
        if not self.same_log:
            return {p: -1 for p in self.end_offsets}
        return {p: self.watermark.through.get(p, -1) for p in self.end_offsets}

    @property
    def behind(self) -> dict[int, tuple[int, int]]:
        """Partitions not yet covered: partition -> (offsets covered, end offset)."""
        through = self.through
        return {
            p: (through.get(p, -1) + 1, end)
            for p, end in sorted(self.end_offsets.items())
            if through.get(p, -1) + 1 < end
        }

    @property
    def complete(self) -> bool:
        return not self.behind

    @property
    def event_time_ms(self) -> int | None:
        """Event time covered on every partition holding data (None: one of them has
        no event logged yet, or the topic is empty)."""
        parts = [p for p, end in self.end_offsets.items() if end > 0]
        marks = self.watermark.partitions if self.same_log else {}
        newest = [marks[p].newest_ms if p in marks else -1 for p in parts]
        if not newest or min(newest) < 0:
            return None
        return min(newest)

    def covers(self, until_ms: int | None = None) -> bool:
        """True when the log holds everything published when asked, or (with an event
        time, default ``self.until_ms``) every event before ``until_ms``."""
        until = self.until_ms if until_ms is None else until_ms
        if self.complete:
            return True
        reached = self.event_time_ms
        return until is not None and reached is not None and reached >= until

    def describe(self) -> str:
        """One line for logs and errors: what is missing, what was reached."""
        parts = []
        if not self.same_log:
            parts.append(
                f"the topic was created again (id {self.topic_id}); the stream has logged "
                f"nothing of it yet (watermark of id {self.watermark.log_id})"
            )
        behind = self.behind
        if behind:
            parts.append(
                "partitions behind (offsets logged/published): "
                + ", ".join(f"{p}: {got}/{end}" for p, (got, end) in behind.items())
            )
        else:
            parts.append(f"all {len(self.end_offsets)} partitions logged to their end offsets")
        parts.append(f"event time reached {_iso(self.event_time_ms)}")
        if self.until_ms is not None:
            parts.append(f"needed {_iso(self.until_ms)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native summary (partition keys as strings), e.g. a verdict's ``as_of``."""
        return {
            "topic": self.topic,
            "log_id": self.watermark.log_id or self.topic_id,
            "complete": self.complete,
            "covered": self.covers(),
            "until_ms": self.until_ms,
            "event_time_ms": self.event_time_ms,
            "through": {str(p): o for p, o in self.through.items()},
            "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
            "behind": {str(p): list(v) for p, v in self.behind.items()},
            "flushed_ms": self.watermark.updated_ms,
            "asked_ms": self.asked_ms,
            "waited_s": round(self.waited_s, 3),
        }


BROKER_TIMEOUT_MS = 10_000
"""How long a coverage question waits for the broker to answer at all."""


def _iso(ms: int | None) -> str:
    if ms is None:
        return "none"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _topic_ends(settings: Any) -> tuple[dict[int, int], str]:
    """The events topic's end offsets and broker id (one short-lived consumer).

    The end offsets come from a fetch's high watermark, not from ListOffsets alone: the
    embedded Tansu broker answers ListOffsets "latest" with the first offset of the
    partition's last record batch (measured: 256 for a partition holding offsets 0-269),
    which would call the log complete with that batch still unlogged.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    topic = settings.kafka.events_topic
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
            bootstrap_timeout_ms=BROKER_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise Unavailable(
            f"broker {settings.kafka.bootstrap_servers} unreachable: cannot tell how much of "
            f"topic {topic} the offline log holds ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        listed = consumer.end_offsets(parts) if parts else {}
        ends = {tp.partition: int(off) for tp, off in listed.items()}
        consumer.assign(parts)
        for tp in parts:  # from there on a fetch returns at most the last batch
            consumer.seek(tp, listed[tp])
        deadline = time.monotonic() + BROKER_TIMEOUT_MS / 1000
        while any(consumer.highwater(tp) is None for tp in parts):
            if time.monotonic() > deadline:
                unknown = [tp.partition for tp in parts if consumer.highwater(tp) is None]
                raise Unavailable(
                    f"topic {topic}: no high watermark from the broker for partitions {unknown}"
                )
            consumer.poll(timeout_ms=50)
        for tp in parts:
            ends[tp.partition] = max(ends[tp.partition], int(consumer.highwater(tp)))
        cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
        found = cluster.topic_id(topic) if cluster is not None else None
    except KafkaError as exc:
        raise Unavailable(f"end offsets of topic {topic}: {type(exc).__name__}: {exc}") from exc
    finally:
        consumer.close()
    topic_id = "" if found is None or getattr(found, "int", 1) == 0 else str(found)
    return ends, topic_id


def _watermark(settings: Any, client: Any) -> Watermark:
    from redis.exceptions import RedisError

    try:
        return read_watermark(client, settings)
    except RedisError as exc:
        raise Unavailable(
            f"Redis {settings.redis.url} unreachable: cannot read the offline log's "
            f"watermark ({type(exc).__name__}: {exc})"
        ) from exc


def offline_coverage(settings: Any, *, until_ms: int | None = None) -> OfflineCoverage:
    """Does the offline log cover the events topic up to its current end offsets (and,
    with ``until_ms``, up to that event time)? See :class:`OfflineCoverage`.

    Raises :class:`rtrec.errors.Unavailable` when the broker or Redis cannot be reached.
    """
    import redis

    ends, topic_id = _topic_ends(settings)
    asked = int(time.time() * 1000)
    client = redis.Redis.from_url(settings.redis.url)
    try:
        mark = _watermark(settings, client)
    finally:
        client.close()
    return OfflineCoverage(
        settings.kafka.events_topic, topic_id, mark, ends, asked, until_ms=until_ms
    )


def wait_for_offline_log(
    settings: Any,
    *,
    until_ms: int | None = None,
    timeout_s: float = 300.0,
    poll_s: float = 0.1,
) -> OfflineCoverage:
    """Block until the offline log covers the events topic up to its end offsets as of
    this call (or, with ``until_ms``, every event before that time); returns the
    coverage reached, with ``waited_s``.

    Raises :class:`rtrec.errors.Unavailable` after ``timeout_s`` naming the partitions,
    offsets and event time still missing — a stream processor that is not running, is
    stuck, or is far behind must not make a reader judge partial data.
    """
    import redis

    if timeout_s < 0:
        raise InvalidInput(f"timeout_s must be >= 0, got {timeout_s}", field="timeout_s")
    ends, topic_id = _topic_ends(settings)
    asked = int(time.time() * 1000)
    started = time.monotonic()
    client = redis.Redis.from_url(settings.redis.url)
    try:
        while True:
            mark = _watermark(settings, client)
            waited = time.monotonic() - started
            cov = OfflineCoverage(
                settings.kafka.events_topic, topic_id, mark, ends, asked, until_ms, waited
            )
            if cov.covers():
                return cov
            if waited >= timeout_s:
                raise Unavailable(
                    f"the offline event log ({settings.offline_dir / 'events'}) did not cover "
                    f"topic {cov.topic} within {timeout_s:g} s: {cov.describe()}. Is a "
                    f"stream processor of group {settings.kafka.consumer_group} running "
                    "(rtrec stream run)?"
                )
            time.sleep(min(poll_s, max(timeout_s - waited, 0.0)))
    finally:
        client.close()


def covered_rows(events: Any, coverage: OfflineCoverage) -> Any:
    """The rows of ``events`` (from :func:`read_events`) the watermark vouches for.

    Files written after the watermark was read may hold newer rows of the topic's current
    log; dropping them makes a judgement reproducible "as of" the watermark. Rows of
    earlier incarnations of the topic, of partitions without data on the broker, and
    rows that never went through Kafka (partition -1) are kept as they are.
    """
    if not len(events):
        return events
    log_id = coverage.topic_id or coverage.watermark.log_id  # the topic's current log
    logs = events[LOG_ID] if LOG_ID in events.columns else None
    mine = (logs == log_id) if logs is not None else (log_id == "")
    limit = events["partition"].map(
        {p: coverage.through.get(p, -1) for p, end in coverage.end_offsets.items() if end > 0}
    )
    beyond = mine & limit.notna() & (events["offset"] > limit)
    if not beyond.any():
        return events
    return events[~beyond].reset_index(drop=True)
