"""The processor's experiment side: impressions joined to outcomes, per arm, in Redis.

``rtrec stream run`` runs an :class:`ExperimentJoin` beside the feature processor
(:func:`rtrec.streaming.service.run_forever`). It reads the impressions topic and the
events topic with a consumer of its own, assigned every partition of both: a user's
answers and feedback must meet in one place, and its progress is kept in Redis with the
aggregates (``rtrec.streaming.experiment_state``), not in the broker's group offsets, so
the feature processor's group and fences stay as they are. Several processors run one
join between them: a Redis lease picks the member that joins; the others wait and take
over within :data:`LEASE_MS` if it stops. Each batch:

1. reads the applied offsets and the batch's users' join states (one round trip);
2. folds the records above the applied offsets (``rtrec.streaming.attribution``);
3. commits states, offsets and the arms' tally in one Lua script, fenced on the lease
   and the offsets read in 1, so a redelivered batch adds nothing;
4. counts the committed tally in Prometheus and keeps each touched arm's new totals,
   which are appended to the offline store every :data:`OFFLINE_FLUSH_S`
   (``<offline_dir>/experiments/*.parquet``): cumulative totals, so a row written twice
   says the same thing and the latest row per arm is the arm.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from kafka.errors import KafkaError
from redis.exceptions import RedisError
from rtrec.streaming import metrics
from rtrec.streaming.attribution import UserJoin, attribute
from rtrec.streaming.experiment_state import ExperimentState
from rtrec.streaming.experiment_store import append_arm_rows

from rtrec.config import Settings

logger = logging.getLogger(__name__)

LEASE_MS = 15_000
"""How long the join lease lasts unless renewed (each loop renews it)."""
OFFLINE_FLUSH_S = 2.0
"""Longest time an arm's new totals wait for the offline store."""


class ExperimentJoin:
    """One member's join loop; ``run()`` until ``stop`` is set (or idle)."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        max_records: int = 5_000,
        poll_ms: int = 100,
    ) -> None:
        from rtrec.redis_clients import redis_client

        self.settings = settings
        self.max_records = max_records
        self.poll_ms = poll_ms
        self._stop = stop or threading.Event()
        self.redis = redis_client(settings)
        self.state = ExperimentState(settings, self.redis, uuid.uuid4().hex)
        self.window_ms = int(settings.monitoring.attribution_window_s * 1000)
        self.topics = (settings.kafka.impressions_topic, settings.kafka.events_topic)
        self.consumer: Any = None
        self.pending: dict[tuple[str, str], dict[str, Any]] = {}
        """Arms' totals not yet in the offline store."""
        self._flushed = time.monotonic()
        self.committed = 0
        """Records folded by committed batches (redeliveries not included)."""

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, max_idle_s: float | None = None) -> int:
        """Join until stopped (or, holding the lease, idle for ``max_idle_s``); returns
        the records committed. Redis or broker failures back off and re-read the state."""
        idle_since = time.monotonic()
        backoff = 0.5
        try:
            while not self._stop.is_set():
                try:
                    if not self._lead():
                        self._stop.wait(LEASE_MS / 3000)
                        continue
                    polled = self.consumer.poll(
                        timeout_ms=self.poll_ms, max_records=self.max_records
                    )
                    records = [r for rs in polled.values() for r in rs]
                    if records:
                        idle_since = time.monotonic()
                        self.process(records)
                    self.flush(force=False)
                    backoff = 0.5
                except (RedisError, KafkaError, OSError) as exc:
                    logger.warning("experiment join failed, re-reading its state: %s", exc)
                    metrics.EXPERIMENT_JOIN_ERRORS.labels(type(exc).__name__).inc()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    self._drop_consumer()
                    continue
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
        finally:
            self.close()
        return self.committed

    def _lead(self) -> bool:
        """Hold the lease; on taking it, start reading where the committed state ends."""
        if not self.state.hold_lease(LEASE_MS):
            self._drop_consumer()
            return False
        if self.consumer is None:
            self.consumer = self._consumer()
            self._position()
        return True

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_records,
            reconnect_backoff_max_ms=2000,
        )

    def _position(self) -> None:
        """Assign every partition of both topics and seek past the applied offsets. A
        partition whose applied offset lies beyond its end belongs to a topic created
        again (the embedded broker keeps nothing across a restart): read from 0."""
        from kafka import TopicPartition

        parts = []
        for topic in self.topics:
            found = self.consumer.partitions_for_topic(topic)
            if not found:
                raise KafkaError(f"topic {topic} not found (yet)")
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(parts)
        applied = self.state.applied()
        ends = self.consumer.end_offsets(parts)
        for tp in parts:
            done = applied.get((tp.topic, tp.partition))
            if done is not None and done + 1 > ends[tp]:
                logger.warning(
                    "%s/%d ends at %d before the applied offset %d: the topic was created "
                    "again; reading it from the start",
                    tp.topic,
                    tp.partition,
                    ends[tp],
                    done,
                )
                self.state.reset_partition(tp.topic, tp.partition)
                done = None
            if done is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, done + 1)

    def process(self, records: list[Any]) -> bool:
        """Steps 1-4 of the module docstring; False when fenced (positions re-read)."""
        tally = attribute(
            records,
            load=self._load,
            impressions_topic=self.topics[0],
            window_ms=self.window_ms,
            now_ms=int(time.time() * 1000),
        )
        rows = self.state.commit(
            tally,
            applied=tally.applied,
            states={u: s.dumps() for u, s in tally.joins.items()},
            ttl_s=int(self.window_ms // 1000) + 3600,
        )
        if rows is None:
            logger.warning("experiment batch fenced off (lease or offsets moved); re-reading")
            self._drop_consumer()
            return False
        metrics.count_tally(tally)
        for experiment, variant, row in rows:
            self.pending[(experiment, variant)] = row
        self.committed += len(records) - tally.skipped
        return True

    def _load(self, users: list[str]) -> tuple[dict[tuple[str, int], int], dict[str, UserJoin]]:
        applied, raws = self.state.read(users)
        return applied, {u: UserJoin.loads(raw) for u, raw in zip(users, raws, strict=True)}

    def flush(self, *, force: bool) -> None:
        """Append the arms' new totals to the offline store when due (or ``force``)."""
        due = time.monotonic() - self._flushed >= OFFLINE_FLUSH_S
        if self.pending and (force or due):
            append_arm_rows(self.settings, self.pending, written_ms=int(time.time() * 1000))
            self.pending = {}
            self._flushed = time.monotonic()

    def _drop_consumer(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:  # closing must not mask why we drop it
                logger.warning("closing the experiment consumer failed: %s", exc)

    def close(self) -> None:
        for closer in (
            lambda: self.flush(force=True),
            self._drop_consumer,
            self.state.release_lease,
        ):
            try:
                closer()
            except Exception as exc:  # closing must not mask the reason we stop
                logger.warning("experiment join close failed: %s", exc)
