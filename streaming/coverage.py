"""How much of the events topic the offline event log holds: its watermark, read back.

The processor writes the offline log a couple of seconds behind the online store, and
records with every flush a watermark in Redis (``RedisState.record_offline``): per
partition the highest offset the log covers (written, or rejected as a dead letter) and
the newest event time written. Readers that must judge complete data ask
:func:`offline_coverage` ("does the log hold everything published so far / every event
before time T?"), wait for it with :func:`wait_for_offline_log`, and keep only the rows
the watermark vouches for with :func:`covered_rows`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rtrec.streaming.event_log import LOG_ID
from rtrec.streaming.watermark import PartitionMark, Watermark, read_watermark

from rtrec.config import Settings
from rtrec.errors import InvalidInput, Unavailable

# The watermark's types live in watermark; they stay importable from here.
__all__ = [
    "BROKER_TIMEOUT_MS",
    "OfflineCoverage",
    "PartitionMark",
    "Watermark",
    "covered_rows",
    "offline_coverage",
    "read_watermark",
    "wait_for_offline_log",
]


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


def _topic_ends(settings: Settings) -> tuple[dict[int, int], str]:
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


def _watermark(settings: Settings, client: Any) -> Watermark:
    from redis.exceptions import RedisError

    try:
        return read_watermark(client, settings)
    except RedisError as exc:
        raise Unavailable(
            f"Redis {settings.redis.url} unreachable: cannot read the offline log's "
            f"watermark ({type(exc).__name__}: {exc})"
        ) from exc


def offline_coverage(settings: Settings, *, until_ms: int | None = None) -> OfflineCoverage:
    """Does the offline log cover the events topic up to its current end offsets (and,
    with ``until_ms``, up to that event time)? See :class:`OfflineCoverage`.

    Raises :class:`rtrec.errors.Unavailable` when the broker or Redis cannot be reached.
    """
    from rtrec.redis_clients import redis_client

    ends, topic_id = _topic_ends(settings)
    asked = int(time.time() * 1000)
    client = redis_client(settings)
    try:
        mark = _watermark(settings, client)
    finally:
        client.close()
    return OfflineCoverage(
        settings.kafka.events_topic, topic_id, mark, ends, asked, until_ms=until_ms
    )


def wait_for_offline_log(
    settings: Settings,
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
    from rtrec.redis_clients import redis_client

    if timeout_s < 0:
        raise InvalidInput(f"timeout_s must be >= 0, got {timeout_s}", field="timeout_s")
    ends, topic_id = _topic_ends(settings)
    asked = int(time.time() * 1000)
    started = time.monotonic()
    client = redis_client(settings)
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
