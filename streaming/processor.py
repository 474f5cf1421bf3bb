"""The stream processor: Kafka events -> validated -> aggregates -> Feast online store.

Each polled batch:

1. validate every event (``rtrec.streaming.validate``); invalid ones above the partition's
   applied offset go to the dead-letter topic with the reason and the original bytes;
2. fold events above the applied offset (kept in Redis) into the user states and item
   buckets; events at or below it are redeliveries and are not counted again;
3. one atomic Redis script writes states, item buckets, trending scores and the applied
   offsets, fenced on the offsets read in step 1 (``rtrec.streaming.state``);
4. write the touched users' and items' features into Feast's online store (an upsert
   recomputed from state, so a crash between 3 and 4 is repaired on redelivery);
5. buffer the events for the offline log; every couple of seconds write it (and each
   touched entity's latest feature row for Feast's offline store, so historical
   retrieval is point in time) and commit the Kafka offsets it covers. Kafka offsets
   never pass what is durable in both stores.

Several processors may run in one consumer group; events are keyed by user id, so a
user's state has one writer at a time. Revoked partitions flush the log first.

Outages (``tests/reliability``): a Redis or broker that goes away makes batches fail; the
processor backs off, rewinds to the committed offsets and carries on when it is back.
Redis that lost writes or all its data, and a topic created again by a broker that
restarted empty, are handled in ``rtrec.streaming.recovery``.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError
from redis.exceptions import RedisError
from rtrec.features import (
    TRENDING_EPOCH_KEY,
    get_store,
    prepare_rows,
    trending_weight,
    write_prepared,
)
from rtrec.features.definitions import ITEM_STREAM_VIEW, USER_STREAM_VIEW, WINDOWS
from rtrec.streaming import metrics
from rtrec.streaming.aggregates import HOUR_MS, WINDOW_HOURS, UserState
from rtrec.streaming.dlq import DeadLetter, send
from rtrec.streaming.kafka_compat import (
    ASSIGNMENT_SNAPSHOT,
    MEMBER_ID,
    PARTITIONS_FOR_TOPIC,
    REQUEST_REJOIN,
    announce,
    broker_kind,
    disabled_guards,
    internal,
)
from rtrec.streaming.offline import OfflineSink
from rtrec.streaming.recovery import Recovery
from rtrec.streaming.state import LOST, ItemDelta, RedisState
from rtrec.streaming.validate import validate

from rtrec.config import Settings
from rtrec.errors import InvalidInput

logger = logging.getLogger(__name__)

OFFLINE_FLUSH_S = 2.0
"""Longest time validated events wait for the offline log (and their Kafka commit)."""
OFFLINE_FLUSH_ROWS = 200_000
FETCH_MAX_WAIT_MS = 20
"""How long the broker may hold a fetch waiting for data. With the 500 ms default,
freshness against Tansu showed a ~150 ms stall every half second (measured at 5k
events/s); 20 ms removed it at no throughput cost."""
METADATA_MAX_AGE_MS = 5_000
UNASSIGNED_IDLE_S = 30.0
"""With ``max_idle_s``: how long waiting for partitions does not count as idle."""
_ITEM_NAMES = [f"item_cnt_{w}" for w in WINDOWS]


def offsets_key(settings: Settings) -> str:
    """Redis hash partition -> last applied offset (the processor's progress)."""
    return f"rtrec:offsets:{settings.kafka.consumer_group}:{settings.kafka.events_topic}"


@dataclass
class BatchResult:
    polled: int = 0
    applied: int = 0
    skipped: int = 0
    dead: int = 0
    users: int = 0
    seconds: float = 0.0
    freshness_ms: list[float] = field(default_factory=list)


class StreamProcessor(Recovery):
    """One consumer-group member; ``run()`` until ``stop()`` (or SIGTERM via ``run_forever``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_records: int = 20_000,
        poll_ms: int = 50,
        stop: threading.Event | None = None,
    ) -> None:
        import redis
        from kafka import KafkaConsumer, KafkaProducer

        self.settings = settings
        self.max_records = max_records
        self.poll_ms = poll_ms
        self._stop = stop or threading.Event()
        self.redis = redis.Redis.from_url(settings.redis.url)
        self.state = RedisState(settings, self.redis, WINDOW_HOURS)
        get_store(settings)  # registers the feature repo on first use
        k = settings.kafka
        self._assignor = _RecordingRange()
        self._stale_assignment = False
        """The broker answered the leader with an assignment other than the one it sent."""
        self.consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=k.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=max(k.session_timeout_ms // 4, 300),
            max_poll_records=max_records,
            fetch_max_bytes=64 * 1024 * 1024,
            # 1 MB a partition (the default) is ~7k events: a backlog then costs a fetch
            # round trip every few thousand events.
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            reconnect_backoff_max_ms=2000,
            # Partitions added to the topic (or a topic created again with another count,
            # as the embedded broker does after a restart) are only noticed at a metadata
            # refresh; the 5-minute default left new partitions unread that long.
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            partition_assignment_strategy=[self._assignor],
        )
        self.broker = broker_kind(settings)
        """Tansu or Kafka: the stale-assignment workaround runs against Tansu only."""
        announce(self.broker)
        self.consumer.subscribe([k.events_topic], listener=_Rebalance(self))
        # Not idempotent: an idempotent producer fails fatally for good when the broker
        # forgets its producer id (an embedded broker restart), and dead letters are at
        # least once anyway (``rtrec.streaming.dlq``).
        self.producer = KafkaProducer(
            bootstrap_servers=k.bootstrap_servers, linger_ms=5, enable_idempotence=False
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

    def process(self, records: list[Any]) -> BatchResult:
        """One batch through steps 1–4 of the module docstring (5 is ``maybe_flush``)."""
        start = time.perf_counter()
        out = BatchResult(polled=len(records))
        if self._log_changed(records):
            return out
        now_ms = int(time.time() * 1000)
        events: list[Any] = []
        for r in records:
            try:
                events.append(validate(r.value, now_ms))
            except InvalidInput as exc:
                events.append(exc)
            except Exception as exc:  # a record no rule foresaw must not crash-loop us
                logger.exception(
                    "validation raised on partition %s offset %s", r.partition, r.offset
                )
                events.append(InvalidInput(f"unvalidatable record ({type(exc).__name__}: {exc})"))
        users = {e.user_id for e in events if not isinstance(e, InvalidInput)}
        missing = [u for u in users if u not in self.cache]
        applied, raws = self.state.read(missing)
        for u, raw in zip(missing, raws, strict=True):
            self.cache[u] = UserState.loads(raw)
        mark = self.sink.mark()
        dead: list[DeadLetter] = []
        changed: set[str] = set()
        items: dict[str, ItemDelta] = {}
        first: dict[int, int] = {}
        high: dict[int, int] = {}
        cache, sink = self.cache, self.sink
        epoch = self._trending_epoch(events)
        for r, e in zip(records, events, strict=True):
            p, off = r.partition, r.offset
            if p not in first:
                first[p] = off
            high[p] = off
            is_new = off > applied.get(p, -1)
            if isinstance(e, InvalidInput):
                if is_new:
                    dead.append(DeadLetter(r.topic, p, off, r.key, r.value, str(e), e.field))
                continue
            delta = items.get(e.item_id)
            if delta is None:
                delta = items[e.item_id] = ItemDelta()
            sink.add(p, off, e)
            if not is_new:
                out.skipped += 1
                continue
            cache[e.user_id].apply(e.item_id, e.event_type, e.ts)
            changed.add(e.user_id)
            hour = e.ts // HOUR_MS
            delta.buckets[hour] = delta.buckets.get(hour, 0) + 1
            delta.weight += trending_weight(e.ts, epoch)
            out.applied += 1
        if dead:
            send(self.producer, self.settings.kafka.dlq_topic, dead)
        valid = [e for e in events if not isinstance(e, InvalidInput)]
        batch_hour = max((e.ts for e in valid), default=0) // HOUR_MS
        pending = self.state.commit_send(
            offsets={p: (applied.get(p, -1), high[p]) for p in high},
            states={u: cache[u].dumps() for u in changed},
            batch_hour=batch_hour,
            items=items,
            log_id=self._log_id or "",
        )
        try:  # encode the user rows while Redis runs the commit script
            user_list = self._user_rows(users, now_ms)
            user_rows = prepare_rows(self.settings, USER_STREAM_VIEW, user_list)
        finally:
            item_out = self.state.commit_receive(pending)
        if isinstance(item_out, str):  # nothing was written
            self.sink.undo(mark)
            if item_out == LOST:
                self._state_lost()
                return out
            # FENCED: another member owns these partitions, or the topic's log changed
            logger.warning("batch fenced off (partitions %s moved); re-reading", sorted(first))
            self.cache.clear()
            self._log_id = None  # re-read which log the state belongs to
            topic = self.settings.kafka.events_topic
            for p, off in first.items():
                self.consumer.seek(TopicPartition(topic, p), off)
            return out
        out.dead, out.users = len(dead), len(users)
        self._count_committed(out)
        item_list = _item_rows(item_out, now_ms)
        item_rows = prepare_rows(self.settings, ITEM_STREAM_VIEW, item_list)
        write_prepared(self.settings, [user_rows, item_rows])
        sink.remember(USER_STREAM_VIEW, user_list)
        sink.remember(ITEM_STREAM_VIEW, item_list)
        done_ms = time.time() * 1000
        out.freshness_ms = [done_ms - r.timestamp for r in records if r.timestamp > 0]
        out.seconds = time.perf_counter() - start
        metrics.observe_batch(out, self.consumer)
        self.total.seconds += out.seconds
        return out

    def _trending_epoch(self, events: list[Any]) -> int:
        if self._epoch is None:
            valid = [e.ts for e in events if not isinstance(e, InvalidInput)]
            if valid:
                self.redis.setnx(TRENDING_EPOCH_KEY, min(valid))
            raw = self.redis.get(TRENDING_EPOCH_KEY)
            if raw is None:
                return 0
            self._epoch = int(raw)
        return self._epoch

    def _user_rows(self, users: set[str], now_ms: int) -> list[tuple[str, dict[str, Any], int]]:
        rows = []
        for u in users:
            state = self.cache[u]
            row = state.features()
            row["written_ms"] = now_ms
            rows.append((u, row, state.last_ts))
        return rows

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

    def _count_committed(self, out: BatchResult) -> None:
        """Totals and counters move when the state commit lands, not when the batch ends:
        a failure after the commit leaves these events applied (and skipped on replay)."""
        t = self.total
        t.polled += out.polled
        t.applied += out.applied
        t.skipped += out.skipped
        t.dead += out.dead
        metrics.count_events(out.applied, out.skipped, out.dead)

    def _partition_count(self) -> int:
        """Partitions of the events topic in the consumer's cached metadata (0: unknown)."""
        lookup = internal(self.consumer, PARTITIONS_FOR_TOPIC)
        found = lookup(self.settings.kafka.events_topic) if lookup is not None else None
        return len(found or ())

    def _rejoin_if_partitions_changed(self) -> None:
        """Rejoin the group when the topic's partitions differ from those the group's
        last assignment was computed from (partitions added; a topic created again with
        another count, as the embedded broker does after a restart). kafka-python
        compares against a metadata snapshot it does not always refresh; a partition
        nobody is assigned is never read. The leader (which computed the assignment)
        checks its snapshot; every member checks the count it saw when assigned."""
        now = self._partition_count()
        if not now:
            return
        snapshot = internal(self.consumer, ASSIGNMENT_SNAPSHOT) or {}
        planned = snapshot.get(self.settings.kafka.events_topic)
        was = len(planned) if planned is not None else self._known_partitions
        if not was or now == was:
            return
        logger.warning(
            "topic %s has %d partitions, the assignment saw %d: rejoining the group",
            self.settings.kafka.events_topic,
            now,
            was,
        )
        self._known_partitions = now
        rejoin = internal(self.consumer, REQUEST_REJOIN)
        if rejoin is None:
            return
        if snapshot:
            self.consumer._coordinator._assignment_snapshot = None  # judged: rejoin once
        rejoin()

    def _assignment_is_stale(self, partitions: list[int]) -> bool:
        """As the group's leader: did the broker hand back the assignment we computed?

        The embedded broker (Tansu) keeps a group's generation when its only member
        rejoins, and answers every later SyncGroup of that generation with the first
        assignment it stored: after a topic came back with more partitions, the leader
        sends all of them and is given the old ones, and the rest are never read. A
        Kafka broker hands back what the leader sent, so only Tansu is checked.
        """
        computed, self._assignor.computed = self._assignor.computed, None
        if self.broker.kind != "tansu" or computed is None:
            return False
        member = internal(self.consumer, MEMBER_ID)
        if member not in computed:
            return False  # not the leader this round: nothing to compare with
        if computed[member] == set(partitions):
            return False
        logger.warning(
            "the broker assigned partitions %s, the leader computed %s (a stale group "
            "generation): rejoining the group as a new member",
            sorted(partitions),
            sorted(computed[member]),
        )
        return True

    def _rejoin_as_new_member(self) -> None:
        """Leave the group and subscribe again: a new member id makes the broker start
        a new generation, which takes the leader's assignment."""
        self._stale_assignment = False
        self.on_revoked()  # unsubscribing revokes without calling the listener
        self.consumer.unsubscribe()
        self.consumer.subscribe([self.settings.kafka.events_topic], listener=_Rebalance(self))

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


def _item_rows(
    items: dict[str, tuple[list[int], float]], now_ms: int
) -> list[tuple[str, dict[str, Any], int]]:
    rows = []
    for item, (counts, score) in items.items():
        row: dict[str, Any] = dict(zip(_ITEM_NAMES, counts, strict=True))
        row["trending_score"] = score
        row["written_ms"] = now_ms
        rows.append((item, row, now_ms))
    return rows


class _RecordingRange(RangePartitionAssignor):
    """The range assignor, remembering what it computed (per member: this topic's
    partitions) so that the leader can check what the broker hands back."""

    def __init__(self) -> None:
        self.computed: dict[str, set[int]] | None = None

    def assign(self, cluster: Any, members: Any) -> Any:  # type: ignore[override]
        out = RangePartitionAssignor.assign(cluster, members)
        self.computed = {
            member: {p for _topic, parts in a.assigned_partitions for p in parts}
            for member, a in out.items()
        }
        return out


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, processor: StreamProcessor) -> None:
        self.processor = processor

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.processor.on_revoked()

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.processor.on_assigned([tp.partition for tp in assigned])


GC_THRESHOLDS = (50_000, 50, 100)
"""Allocations between young collections, and young (middle) collections between older
ones. The processor allocates a few short-lived objects per event and keeps every active
user's state; at Python's default (700, 10, 10) the collector rescanned that state so
often that it took a third of the time (bench/streaming.py: 21k -> 33k events/s)."""


def tune_gc() -> None:
    """Collector settings for a long-running processor: what exists once it has started
    (modules, the feature store, the consumer) is frozen out of collections, and
    collections run at :data:`GC_THRESHOLDS`. Process-wide, hence called by the entry
    point (:func:`run_forever`), not by :class:`StreamProcessor`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_forever(
    settings: Settings,
    *,
    metrics_port: int | None = None,
    stop: threading.Event | None = None,
) -> BatchResult:
    """Entry point of ``rtrec stream run``: process until SIGTERM/SIGINT, then stop cleanly.

    ``stop``: an event the caller's signal handlers already set (so a signal during
    start-up is not lost); without one, handlers are installed here.
    """
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    if metrics_port:
        metrics.serve(metrics_port)
    if stop.is_set():
        return BatchResult()
    processor = StreamProcessor(settings, stop=stop)
    tune_gc()
    return processor.run()
