"""The stream processor: Kafka events -> validated -> aggregates -> Feast online store.

Exactly-once effect under crashes and redelivery:

1. poll a batch; validate each event (invalid ones are dead-lettered with the reason);
2. fold only events whose offset is above the partition's *applied offset* (kept in
   Redis) into the user states, and append them to the offline event log;
3. one Redis transaction writes the new user states, item hour buckets, trending
   scores and the applied offsets together;
4. write the touched users' and items' features through Feast (an idempotent upsert,
   recomputed from state, so a crash between 3 and 4 is repaired on redelivery);
5. commit the Kafka offsets.

Several processors may run in one consumer group; events are keyed by user id, so a
user's state has one writer at a time. Partition revocation drops the cached states.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from kafka import ConsumerRebalanceListener

from features import (
    TRENDING_EPOCH_KEY,
    TRENDING_KEY,
    get_store,
    trending_weight,
    write_item_features,
    write_user_features,
)
from rtrec.config import Settings
from rtrec.errors import InvalidInput
from rtrec.events import parse_event
from streaming import metrics
from streaming.aggregates import HOUR_MS, UserState, item_window_counts
from streaming.dlq import DeadLetter, send
from streaming.offline import OfflineLog

logger = logging.getLogger(__name__)

STATE_PREFIX = "rtrec:state:user:"
ITEM_PREFIX = "rtrec:item:"
ITEM_TTL_S = 8 * 86_400


def offsets_key(settings: Settings) -> str:
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


class StreamProcessor:
    """One consumer-group member; ``run()`` until ``stop()`` (or SIGTERM via ``main``)."""

    def __init__(self, settings: Settings, *, max_records: int = 5000, poll_ms: int = 50) -> None:
        import redis
        from kafka import KafkaConsumer, KafkaProducer

        self.settings = settings
        self.max_records = max_records
        self.poll_ms = poll_ms
        self._stop = threading.Event()
        self.redis = redis.Redis.from_url(settings.redis.url)
        get_store(settings)  # registers the feature repo on first use
        k = settings.kafka
        self.consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=k.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=max(k.session_timeout_ms // 4, 300),
            max_poll_records=max_records,
            fetch_max_bytes=64 * 1024 * 1024,
            reconnect_backoff_max_ms=2000,
        )
        self.consumer.subscribe([k.events_topic], listener=_Rebalance(self))
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap_servers, linger_ms=5)
        self.offline = OfflineLog(settings.offline_dir / "events")
        self.cache: dict[str, UserState] = {}
        self._epoch: int | None = None
        self.total = BatchResult()

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, max_idle_s: float | None = None) -> BatchResult:
        """Process until stopped (or idle for ``max_idle_s``); returns running totals."""
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                polled = self.consumer.poll(timeout_ms=self.poll_ms, max_records=self.max_records)
                records = [r for rs in polled.values() for r in rs]
                if not records:
                    if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                        break
                    continue
                idle_since = time.monotonic()
                self.process(records)
        finally:
            self.close()
        return self.total

    def process(self, records: list[Any]) -> BatchResult:
        """One batch through steps 1–5 of the module docstring."""
        start = time.perf_counter()
        out = BatchResult(polled=len(records))
        applied = {
            int(p): int(o) for p, o in self.redis.hgetall(offsets_key(self.settings)).items()
        }
        now_ms = int(time.time() * 1000)
        fresh: list[tuple[Any, Any]] = []
        dead: list[DeadLetter] = []
        touched_users: set[str] = set()
        high: dict[int, int] = {}
        for r in records:
            high[r.partition] = max(high.get(r.partition, -1), r.offset)
            is_new = r.offset > applied.get(r.partition, -1)
            try:
                event = parse_event(r.value, now_ms=now_ms)
            except InvalidInput as exc:
                if is_new:
                    dead.append(
                        DeadLetter(
                            r.topic, r.partition, r.offset, r.key, r.value, str(exc), exc.field
                        )
                    )
                continue
            touched_users.add(event.user_id)
            if is_new:
                fresh.append((r, event))
            else:
                out.skipped += 1
        self._load_states(touched_users)
        changed: set[str] = set()
        items: dict[str, list[int]] = defaultdict(list)
        for _, e in fresh:
            self.cache[e.user_id].apply(e.item_id, e.event_type.value, e.ts)
            changed.add(e.user_id)
            items[e.item_id].append(e.ts)
        if dead:
            send(self.producer, self.settings.kafka.dlq_topic, dead)
        if fresh:
            self.offline.append(fresh)
        # Applied offsets only move forward: a redelivered batch must not lower them.
        high = {p: o for p, o in high.items() if o > applied.get(p, -1)}
        self._commit_state(changed, items, high)
        self._write_features(touched_users, set(items), now_ms)
        self.consumer.commit()
        done = time.time() * 1000
        out.applied, out.dead, out.users = len(fresh), len(dead), len(touched_users)
        out.freshness_ms = [done - r.timestamp for r, _ in fresh if r.timestamp and r.timestamp > 0]
        out.seconds = time.perf_counter() - start
        metrics.observe_batch(out, self.consumer)
        self._accumulate(out)
        return out

    def _accumulate(self, out: BatchResult) -> None:
        t = self.total
        t.polled += out.polled
        t.applied += out.applied
        t.skipped += out.skipped
        t.dead += out.dead
        t.seconds += out.seconds

    def _load_states(self, users: set[str]) -> None:
        missing = [u for u in users if u not in self.cache]
        if not missing:
            return
        raws = self.redis.mget([STATE_PREFIX + u for u in missing])
        for u, raw in zip(missing, raws, strict=True):
            self.cache[u] = UserState.loads(raw)

    def _commit_state(
        self, users: set[str], items: dict[str, list[int]], high: dict[int, int]
    ) -> None:
        pipe = self.redis.pipeline(transaction=True)
        if users:
            pipe.mset({STATE_PREFIX + u: self.cache[u].dumps() for u in users})
        trending: dict[str, float] = {}
        if items and self._epoch is None:
            first = min(min(t) for t in items.values())
            self.redis.setnx(TRENDING_EPOCH_KEY, first)
            self._epoch = int(self.redis.get(TRENDING_EPOCH_KEY))
        for item, times in items.items():
            key = ITEM_PREFIX + item
            buckets: dict[int, int] = defaultdict(int)
            for ts in times:
                buckets[ts // HOUR_MS] += 1
            for hour, n in buckets.items():
                pipe.hincrby(key, str(hour), n)
            pipe.expire(key, ITEM_TTL_S)
            trending[item] = sum(trending_weight(ts, self._epoch or 0) for ts in times)
        for item, weight in trending.items():
            pipe.zincrby(TRENDING_KEY, weight, item)
        if high:
            pipe.hset(offsets_key(self.settings), mapping={str(p): o for p, o in high.items()})
        pipe.execute()

    def _write_features(self, users: set[str], items: set[str], now_ms: int) -> None:
        if users:
            rows = []
            for u in users:
                row = self.cache[u].features()
                row["user_id"] = u
                row["written_ms"] = now_ms
                rows.append(row)
            frame = pd.DataFrame(rows)
            frame["event_timestamp"] = pd.to_datetime(frame["last_event_ms"], unit="ms", utc=True)
            write_user_features(self.settings, frame)
        if items:
            names = sorted(items)
            pipe = self.redis.pipeline(transaction=False)
            for item in names:
                pipe.hgetall(ITEM_PREFIX + item)
            buckets = pipe.execute()
            scores = self.redis.zmscore(TRENDING_KEY, names)
            ref = max((max((int(h) for h in b), default=0) for b in buckets), default=0)
            rows = [
                {
                    "item_id": item,
                    **item_window_counts(b, (ref + 1) * HOUR_MS),
                    "trending_score": float(s or 0.0),
                    "written_ms": now_ms,
                }
                for item, b, s in zip(names, buckets, scores, strict=True)
            ]
            frame = pd.DataFrame(rows)
            frame["event_timestamp"] = pd.Timestamp(now_ms, unit="ms", tz="UTC")
            write_item_features(self.settings, frame)

    def revoke(self, partitions: list[Any]) -> None:
        """Another member may own these users now: forget cached states."""
        self.cache.clear()

    def close(self) -> None:
        for closer in (
            self.offline.flush,
            lambda: self.consumer.close(autocommit=False),
            lambda: self.producer.close(timeout=5),
        ):
            try:
                closer()
            except Exception as exc:  # closing must not mask the reason we stop
                logger.warning("close failed: %s", exc)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, processor: StreamProcessor) -> None:
        self.processor = processor

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.processor.revoke(list(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        logger.info(
            "partitions assigned", extra={"partitions": sorted(p.partition for p in assigned)}
        )


def run_forever(settings: Settings, *, metrics_port: int | None = None) -> BatchResult:
    """Entry point of ``rtrec stream run``: process until SIGTERM/SIGINT, then stop cleanly."""
    if metrics_port:
        metrics.serve(metrics_port)
    processor = StreamProcessor(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: processor.stop())
    return processor.run()
