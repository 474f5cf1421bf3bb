"""The stream processor: Kafka events -> validated -> aggregates -> Feast online store.

Each polled batch goes through steps 1–4 of ``rtrec.streaming.batch`` (validate, fold
into the user states and item buckets, one fenced Redis commit, the Feast online write).
Step 5 is here (:meth:`StreamProcessor.maybe_flush`): the events wait in a buffer for the
offline log; every couple of seconds it is written (with each touched entity's latest
feature row for Feast's offline store, so historical retrieval is point in time) and the
Kafka offsets it covers are committed. Kafka offsets never pass what is durable in both
stores.

Several processors may run in one consumer group; events are keyed by user id, so a
user's state has one writer at a time. Revoked partitions flush the log first.

Outages (``tests/reliability``): a Redis or broker that goes away makes batches fail; the
processor backs off, rewinds to the committed offsets and carries on when it is back.
Redis that lost writes or all its data, and a topic created again by a broker that
restarted empty, are handled in ``rtrec.streaming.recovery``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError
from redis.exceptions import RedisError
from rtrec.features import get_store
from rtrec.streaming.aggregates import WINDOW_HOURS, UserState
from rtrec.streaming.batch import BatchResult, BatchSteps
from rtrec.streaming.kafka_compat import (
    GroupMembership,
    RecordingRange,
    announce,
    broker_kind,
    disabled_guards,
    group_consumer,
)
from rtrec.streaming.offline import OfflineSink
from rtrec.streaming.state import RedisState, state_keys

from rtrec.config import Settings

logger = logging.getLogger(__name__)

OFFLINE_FLUSH_S = 2.0
"""Longest time validated events wait for the offline log (and their Kafka commit)."""
OFFLINE_FLUSH_ROWS = 200_000
UNASSIGNED_IDLE_S = 30.0
"""With ``max_idle_s``: how long waiting for partitions does not count as idle."""


def offsets_key(settings: Settings) -> str:
    """Redis hash partition -> last applied offset (the processor's progress)."""
    return state_keys(settings)["offsets"]


class StreamProcessor(BatchSteps, GroupMembership):
    """One consumer-group member; ``run()`` until ``stop()`` (or SIGTERM via
    ``rtrec.streaming.service.run_forever``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_records: int = 20_000,
        poll_ms: int = 50,
        stop: threading.Event | None = None,
    ) -> None:
        from kafka import KafkaProducer

        from rtrec.redis_clients import redis_client

        self.settings = settings
        self.max_records = max_records
        self.poll_ms = poll_ms
        self._stop = stop or threading.Event()
        self.redis = redis_client(settings)
        self.state = RedisState(settings, self.redis, WINDOW_HOURS)
        get_store(settings)  # registers the feature repo on first use
        self._assignor = RecordingRange()
        self._stale_assignment = False
        """The broker answered the leader with an assignment other than the one it sent."""
        self.consumer = group_consumer(settings, max_records=max_records, assignor=self._assignor)
        self.broker = broker_kind(settings)
        """Tansu or Kafka: the stale-assignment workaround runs against Tansu only."""
        announce(self.broker)
        self._subscribe()
        # Not idempotent: an idempotent producer fails fatally for good when the broker
        # forgets its producer id (an embedded broker restart), and dead letters are at
        # least once anyway (``rtrec.streaming.dlq``).
        self.producer = KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            linger_ms=5,
            enable_idempotence=False,
        )
        self.sink = OfflineSink(
            settings, self.state, flush_s=OFFLINE_FLUSH_S, flush_rows=OFFLINE_FLUSH_ROWS
        )
        self.cache: dict[str, UserState] = {}
        self._epoch: int | None = None
        self._log_id: str | None = None
        """Topic incarnation the cached state belongs to (None: not checked yet)."""
        self._check_gap: set[int] = set()
        """Partitions just positioned at a committed offset: compare with Redis's progress."""
        self._assigned = False
        """Partitions were just assigned: refresh metadata (a recreated topic's new id)."""
        self._known_partitions = 0
        """The topic's partition count when partitions were last assigned (0: unknown)."""
        self.total = BatchResult()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """The broker kind (and what it rests on), guards turned off for want of a
        kafka-python internal, and the running totals."""
        return {
            "broker_kind": self.broker.kind,
            "broker_kind_source": f"{self.broker.how}: {self.broker.source}",
            "disabled_guards": disabled_guards(),
            "applied": self.total.applied,
            "dead_lettered": self.total.dead,
        }

    def run(self, *, max_idle_s: float | None = None) -> BatchResult:
        """Process until stopped (or idle for ``max_idle_s``); returns running totals.

        Idle time counts only while partitions are assigned: a group join that takes
        longer than ``max_idle_s`` (a loaded machine, a rebalance) is not "nothing to do".
        A member left without partitions (more members than partitions) still stops
        after ``UNASSIGNED_IDLE_S``.
        """
        idle_since = time.monotonic()
        unassigned_since: float | None = None
        backoff = 0.5
        try:
            while not self._stop.is_set():
                try:
                    polled = self.consumer.poll(
                        timeout_ms=self.poll_ms, max_records=self.max_records
                    )
                    records = [r for rs in polled.values() for r in rs]
                    if self._stale_assignment:
                        self._rejoin_as_new_member()
                        continue  # these records belong to the stale assignment
                    self._rejoin_if_partitions_changed()
                    if self._assigned:  # fresh metadata: a recreated topic shows its new id
                        self.consumer.topics()
                        self._assigned = False
                        if self._log_changed(records):
                            continue  # positions moved: these records come again
                    if self._check_gap and self._behind(records):
                        continue  # positions moved back: these records come again
                    now = time.monotonic()
                    if records or self.consumer.assignment():
                        unassigned_since = None
                    elif unassigned_since is None:
                        unassigned_since = now
                    if records or (
                        unassigned_since is not None and now - unassigned_since < UNASSIGNED_IDLE_S
                    ):
                        idle_since = now
                    if records:
                        self.process(records)
                    self.maybe_flush()
                    backoff = 0.5
                except (RedisError, KafkaError, OSError) as exc:
                    logger.warning("batch failed, rewinding to committed offsets: %s", exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    self._rewind()
                    continue
                idle = time.monotonic() - idle_since
                if not records and max_idle_s is not None and idle > max_idle_s:
                    break
        finally:
            self.close()
        return self.total

    def maybe_flush(self, *, force: bool = False, commit: bool = True) -> None:
        """Start an offline flush when due; commit the Kafka offsets a finished one covers.

        ``force`` writes everything now and waits (stop, revocation). ``commit=False``
        inside rebalance callbacks: kafka-python 3 runs them on its IO thread, where a
        blocking commit raises. Nothing is lost: the next owner reads the offline
        progress from Redis and skips what is already logged and applied.
        """
        if force:
            high = self.sink.flush()
        else:
            high = self.sink.collect()
            if self.sink.due():
                self.sink.start()
        if not high or not commit:
            return
        topic = self.settings.kafka.events_topic
        offsets = {
            TopicPartition(topic, p): OffsetAndMetadata(o + 1, "", -1) for p, o in high.items()
        }
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance in between: the next owner redelivers
            logger.warning("offset commit failed (%s); redelivery is idempotent", exc)

    def on_assigned(self, partitions: list[int]) -> None:
        if self._assignment_is_stale(partitions):
            self._stale_assignment = True
            return
        self.sink.load(partitions)
        self._check_gap = set(partitions)
        self._assigned = True
        # The metadata the assignment was computed from (not yet refreshed): a count
        # that differs after the refresh means partitions nobody was given.
        self._known_partitions = self._partition_count()
        logger.info("partitions assigned: %s", sorted(partitions))

    def on_revoked(self) -> None:
        """Another member may own these users next: make our work durable, drop caches."""
        try:
            self.maybe_flush(force=True, commit=False)
        except (RedisError, OSError) as exc:
            logger.warning("flush on revoke failed (%s); the next owner redelivers", exc)
        self.sink.forget()
        self.cache.clear()

    def close(self) -> None:
        for closer in (
            lambda: self.maybe_flush(force=True),
            lambda: self.consumer.close(autocommit=False),
            lambda: self.producer.close(timeout=5),
        ):
            try:
                closer()
            except Exception as exc:  # closing must not mask the reason we stop
                logger.warning("close failed: %s", exc)
