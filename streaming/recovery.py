"""The stream processor's way back from outages (mixed into ``StreamProcessor``).

A failed batch rewinds to the committed Kafka offsets (:meth:`Recovery._rewind`). After
every such positioning, Redis's progress must reach the committed offset, else Redis lost
its last writes and the partition is re-read from Redis's progress (``_behind``). The
state records which incarnation of the topic its offsets belong to (the broker's topic
id): a topic created again — the embedded broker keeps nothing across a restart — is read
from its start with the old offsets forgotten and the aggregates kept (``_log_changed``);
a marker that vanished means Redis lost the state, which is rebuilt from the start of the
retained log (``_state_lost``).
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from redis.exceptions import RedisError
from rtrec.streaming.kafka_compat import (
    METADATA_SEND,
    METADATA_WAIT,
    NET_RUN,
    TOPIC_ID,
    internal,
)

logger = logging.getLogger(__name__)


METADATA_TIMEOUT_MS = 10_000
"""How long a batch's topic-id check waits for the broker (then the batch fails and is
read again, as after any broker error)."""


def _named(topic_id: Any) -> str | None:
    """A topic id as text; None for none, or the nil id of a topic missing from the
    metadata."""
    if topic_id is None or getattr(topic_id, "int", 1) == 0:
        return None
    return str(topic_id)


class Recovery:
    """Outage handling over the processor's consumer, Redis state, caches and sink."""

    settings: Any
    consumer: Any
    state: Any
    sink: Any
    cache: dict[str, Any]
    _epoch: int | None
    _log_id: str | None
    _check_gap: set[int]

    def maybe_flush(self, *, force: bool = False, commit: bool = True) -> None:
        """Provided by ``StreamProcessor``: write out the offline buffer."""
        raise NotImplementedError

    def _topic_id(self) -> str | None:
        """The broker's id of the events topic (from the consumer's cached metadata; a
        new id means the topic was created again). None where the broker reports none."""
        lookup = internal(self.consumer, TOPIC_ID)
        return _named(lookup(self.settings.kafka.events_topic) if lookup is not None else None)

    def _log_changed(self, records: list[Any] | None = None) -> bool:
        """Check (once per topic incarnation) that the Redis state belongs to the log
        being read. On a recreated topic (offsets from 0 again): write out what is
        buffered, forget the old offsets, read the new log from its start. True when the
        batch in hand must be dropped (positions moved).

        Checked on every batch and right after every assignment: after an embedded
        broker restart the consumer may hold (or have committed to the new broker) the
        old log's positions, beyond the new log's end, and then polls nothing at all —
        waiting for a batch to notice would wait forever. While the id is unknown again
        (the topic is being created), the batch waits for it rather than be judged
        against the old log.

        With records in hand the id is taken from metadata fetched after them
        (:meth:`_confirmed_topic_id`): the cached one may predate a recreation.
        """
        now = self._confirmed_topic_id(records)
        if now is None:
            if self._log_id is None:
                return False  # a broker without topic ids: nothing to compare
            self.consumer.topics()  # refresh; until then, read nothing of this log
            self._seek_to_first(records or [])
            return bool(records)
        if now == self._log_id:
            return False
        stored = self.state.adopt_log(now)
        if stored != now:
            logger.warning(
                "topic %s was created again (id %s, was %s): its offsets restart at 0; "
                "forgetting the applied offsets, keeping the aggregates",
                self.settings.kafka.events_topic,
                now,
                stored,
            )
            self.maybe_flush(force=True, commit=False)  # the old log's rows, under its id
            self.state.reset_log(stored, now)
        had = self._log_id
        self._log_id = self.sink.log_id = now
        if had is None and stored == now:
            return False  # first look: nothing cached from another log
        self.maybe_flush(force=True, commit=False)
        self._rewind(from_start=stored != now)
        return True

    def _confirmed_topic_id(self, records: list[Any] | None) -> str | None:
        """The topic id that ``records`` were read from.

        kafka-python fetches by topic name, and its cached metadata is refreshed only
        every few seconds or after an error. After the embedded broker restarted empty,
        the consumer still holds the old log's positions; once the topic is created
        again and filled past them, a fetch at those positions returns the new log's
        events, while the cached id still names the old log. Judged against the old
        log's applied offsets they count as new: they were applied, then applied again
        when the new id showed and the new log was read from its start. Metadata
        fetched after the records is authoritative for them (a topic id is never
        reused), so with records in hand the id is read from a fresh metadata response:
        one request for this topic (a couple of ms), sent past kafka-python's metadata
        refresh, which runs at most once per ``retry_backoff_ms`` (100 ms): a refresh per
        batch would hold every batch up to that long. Without those internals, the
        refresh it is.
        """
        if not records:
            return self._topic_id()
        send, wait, run = (
            internal(self.consumer, p) for p in (METADATA_SEND, METADATA_WAIT, NET_RUN)
        )
        if send is None or wait is None or run is None:
            self.consumer.topics()
            return self._topic_id()
        from kafka.protocol.metadata import MetadataRequest

        topic = self.settings.kafka.events_topic
        request = MetadataRequest(
            topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
            allow_auto_topic_creation=False,  # a check, not a subscription
            include_cluster_authorized_operations=False,
            include_topic_authorized_operations=False,
        )
        response = run(wait, send(request), METADATA_TIMEOUT_MS)
        return _named(next((t.topic_id for t in response.topics if t.name == topic), None))

    def _seek_to_first(self, records: list[Any]) -> None:
        """Position each partition of ``records`` at its first record: the batch is
        read again (records of a partition come in offset order)."""
        first: dict[TopicPartition, int] = {}
        for r in records:
            first.setdefault(TopicPartition(r.topic, r.partition), r.offset)
        for tp, off in first.items():
            self.consumer.seek(tp, off)

    def _behind(self, records: list[Any]) -> bool:
        """After positioning at a committed Kafka offset: does Redis's progress reach it?

        Kafka offsets are committed only after the state and the offline log hold the
        events, so a position past them means Redis lost its last writes (a crash with
        ``appendfsync everysec``, a restart without persistence). Those partitions are
        re-read from Redis's progress, once per positioning (a log that no longer holds
        those offsets, or a control record there, must not loop). True: positions moved.
        """
        topic = self.settings.kafka.events_topic
        first: dict[int, int] = {}
        for r in records:
            first.setdefault(r.partition, r.offset)
        assigned = {tp.partition for tp in self.consumer.assignment()}
        applied, item_applied, _ = self.state.read([])
        back = {}
        for p in self._check_gap & assigned:
            at = first.get(p)
            if at is None:  # nothing new polled: where the consumer stands
                at = self.consumer.position(TopicPartition(topic, p))
            # Each slot of the state must hold it (a Redis Cluster node may lose its
            # writes alone); a re-read folds into each slot only what it lacks.
            durable = min(applied.get(p, -1), item_applied.get(p, -1), self.sink.done.get(p, -1))
            if at is not None and at > durable + 1:
                back[p] = durable + 1
        self._check_gap.clear()
        if not back:
            return False
        logger.warning(
            "Redis progress is behind the committed Kafka offsets (partition: next -> "
            "re-read from) %s: Redis lost its last writes",
            {p: f"{first.get(p, '?')} -> {o}" for p, o in back.items()},
        )
        self.cache.clear()
        self._epoch = None
        for p, off in first.items():
            self.consumer.seek(TopicPartition(topic, p), back.get(p, off))
        for p, off in back.items():
            self.consumer.seek(TopicPartition(topic, p), off)
        return True

    def _state_lost(self) -> None:
        """The log marker vanished from Redis: it lost the processor's state (restarted
        without persistence, flushed). Rebuild it from the start of the retained log
        (complete while the broker still holds every event; the offline log drops the
        rows read twice)."""
        logger.error(
            "Redis lost the stream state (log marker %s missing): rebuilding from the start "
            "of the retained log",
            self.state.log_key,
        )
        self.cache.clear()
        self._epoch = None
        self._log_id = None
        parts = list(self.consumer.assignment())
        self.sink.forget([tp.partition for tp in parts])
        if parts:
            self.consumer.seek_to_beginning(*parts)

    def _rewind(self, *, from_start: bool = False) -> None:
        """After a failed batch: forget in-memory work, resume from durable positions.

        ``from_start``: a new incarnation of the topic; offsets committed to the broker
        so far may be the old log's (committed before the change was seen), so read it
        from its beginning (its events were applied to nothing yet).
        """
        self.cache.clear()
        self._epoch = None
        try:
            parts = list(self.consumer.assignment())
            self._check_gap.update(tp.partition for tp in parts)
            self.sink.forget([tp.partition for tp in parts])
            for tp in parts:
                committed = None if from_start else self.consumer.committed(tp)
                if committed is None:
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
        except (RedisError, KafkaError, OSError) as exc:
            logger.warning("rewind incomplete (%s); retrying after the next failure", exc)
