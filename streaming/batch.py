"""One polled batch through the stream processor (mixed into ``StreamProcessor``).

1. validate every event (``rtrec.streaming.validate``); invalid ones above the partition's
   applied offset go to the dead-letter topic with the reason and the original bytes;
2. fold events above the applied offset (kept in Redis) into the user states and item
   buckets; events at or below it are redeliveries and are not counted again;
3. the Redis commit writes states, item buckets, trending scores and the applied
   offsets, fenced on the offsets read in step 1: one atomic script per Redis Cluster
   slot, each slot with its own offsets (``rtrec.streaming.state``);
4. write the touched users' and items' features into Feast's online store (an upsert
   recomputed from state, so a crash between 3 and 4 is repaired on redelivery).

Step 5, the offline log and the Kafka commit, is the processor's ``maybe_flush``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition
from rtrec.features import (
    ITEM_STREAM_VIEW,
    TRENDING_EPOCH_KEY,
    USER_STREAM_VIEW,
    prepare_rows,
    write_prepared,
)
from rtrec.streaming import metrics
from rtrec.streaming.aggregates import (
    HOUR_MS,
    ItemDelta,
    UserState,
    item_feature_rows,
    user_feature_row,
)
from rtrec.streaming.dlq import DeadLetter, send
from rtrec.streaming.recovery import Recovery
from rtrec.streaming.state import LOST
from rtrec.streaming.validate import validate

from rtrec.errors import InvalidInput

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    polled: int = 0
    applied: int = 0
    skipped: int = 0
    dead: int = 0
    users: int = 0
    seconds: float = 0.0
    freshness_ms: list[float] = field(default_factory=list)


@dataclass
class _Fold:
    """What folding one batch into the cached states produced (step 2)."""

    dead: list[DeadLetter] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    """Users whose state moved (their state is written)."""
    items: dict[str, ItemDelta] = field(default_factory=dict)
    first: dict[int, int] = field(default_factory=dict)
    """Per partition, the batch's first offset (where a fenced batch is re-read from)."""
    high: dict[int, int] = field(default_factory=dict)
    """Per partition, the batch's last offset (the applied offset it commits)."""
    between: list[Any] = field(default_factory=list)
    """Offline-only user rows: a user's state before its first event of each later hour
    in the batch (its state after the batch is the row written online). A replay puts
    days of events in one batch; with these rows a training cut inside it still finds
    each user's state there (``rtrec.training.pit_states``): exactly at an hour
    boundary, and anywhere else unless the user has events both in the cut's hour
    before it and after it in the same batch. One row per event would be exact
    everywhere, at about a third of the processor's throughput in a replay (the list
    columns' conversion); per hour, a replay of synthetic sessions writes a seventh as
    many."""


class BatchSteps(Recovery):
    """Steps 1–4 over the processor's Redis state, caches, sink, producer and consumer."""

    redis: Any
    producer: Any
    total: BatchResult

    def process(self, records: list[Any]) -> BatchResult:
        """One batch through steps 1–4 of the module docstring (5 is ``maybe_flush``)."""
        start = time.perf_counter()
        out = BatchResult(polled=len(records))
        if self._log_changed(records):
            return out
        now_ms = int(time.time() * 1000)
        events = _validated(records, now_ms)
        users = {e.user_id for e in events if not isinstance(e, InvalidInput)}
        applied, item_applied = self._load_users(users)
        mark = self.sink.mark()
        batch = self._fold(records, events, (applied, item_applied), out, now_ms)
        if batch.dead:
            send(self.producer, self.settings.kafka.dlq_topic, batch.dead)
        pending = self._commit_send(batch, events, applied, item_applied)
        try:  # encode the user rows while Redis runs the commit script
            user_list = self._user_rows(users, now_ms)
            user_rows = prepare_rows(self.settings, USER_STREAM_VIEW, user_list)
        finally:
            item_out = self.state.commit_receive(pending)
        if isinstance(item_out, str):  # nothing was written
            self._not_written(item_out, mark, batch.first)
            return out
        out.dead, out.users = len(batch.dead), len(users)
        self._count_committed(out)
        item_list = item_feature_rows(item_out, now_ms)
        item_rows = prepare_rows(self.settings, ITEM_STREAM_VIEW, item_list)
        write_prepared(self.settings, [user_rows, item_rows])
        self.sink.remember(USER_STREAM_VIEW, batch.between + user_list)
        self.sink.remember(ITEM_STREAM_VIEW, item_list)
        done_ms = time.time() * 1000
        out.freshness_ms = [done_ms - r.timestamp for r in records if r.timestamp > 0]
        out.seconds = time.perf_counter() - start
        metrics.observe_batch(out, self.consumer)
        self.total.seconds += out.seconds
        return out

    def _load_users(self, users: set[str]) -> tuple[dict[int, int], dict[int, int]]:
        """Cache the states of ``users`` not cached yet; returns the applied offsets of
        the user side and of the item side (they differ only after a commit that stopped
        between its two slots)."""
        missing = [u for u in users if u not in self.cache]
        applied, item_applied, raws = self.state.read(missing)
        for u, raw in zip(missing, raws, strict=True):
            self.cache[u] = UserState.loads(raw)
        return applied, item_applied

    def _fold(
        self,
        records: list[Any],
        events: list[Any],
        offsets: tuple[dict[int, int], dict[int, int]],
        out: BatchResult,
        now_ms: int,
    ) -> _Fold:
        """Step 2: events above the user side's applied offset into the cached user
        states, events above the item side's into the item deltas (each side counts an
        event once, whichever side a cut-short commit already wrote); invalid ones above
        the user side's become dead letters. Every valid event is buffered for the offline
        log (the log skips what it already holds)."""
        applied, item_applied = offsets
        batch = _Fold()
        dead, changed, items, first, high = (
            batch.dead,
            batch.changed,
            batch.items,
            batch.first,
            batch.high,
        )
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
            if off > item_applied.get(p, -1):
                delta.add(e.ts, epoch)
            if not is_new:
                out.skipped += 1
                continue
            state = cache[e.user_id]
            if e.user_id in changed and state.in_later_hour(e.ts):
                batch.between.append(user_feature_row(e.user_id, state, now_ms))
            state.apply(e.item_id, e.event_type, e.ts)
            changed.add(e.user_id)
            out.applied += 1
        return batch

    def _commit_send(
        self,
        batch: _Fold,
        events: list[Any],
        applied: dict[int, int],
        item_applied: dict[int, int],
    ) -> Any:
        """Step 3, started: the atomic Redis scripts, fenced on the offsets read before."""
        valid = [e for e in events if not isinstance(e, InvalidInput)]
        batch_hour = max((e.ts for e in valid), default=0) // HOUR_MS
        return self.state.commit_send(
            offsets={p: (applied.get(p, -1), batch.high[p]) for p in batch.high},
            item_offsets={p: (item_applied.get(p, -1), batch.high[p]) for p in batch.high},
            states={u: self.cache[u].dumps() for u in batch.changed},
            batch_hour=batch_hour,
            items=batch.items,
            log_id=self._log_id or "",
        )

    def _not_written(self, outcome: str, mark: Any, first: dict[int, int]) -> None:
        """The commit script wrote nothing: the state was lost, or the batch was fenced."""
        self.sink.undo(mark)
        if outcome == LOST:
            self._state_lost()
            return
        # FENCED: another member owns these partitions, or the topic's log changed
        logger.warning("batch fenced off (partitions %s moved); re-reading", sorted(first))
        self.cache.clear()
        self._log_id = None  # re-read which log the state belongs to
        topic = self.settings.kafka.events_topic
        for p, off in first.items():
            self.consumer.seek(TopicPartition(topic, p), off)

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
        return [user_feature_row(u, self.cache[u], now_ms) for u in users]

    def _count_committed(self, out: BatchResult) -> None:
        """Totals and counters move when the state commit lands, not when the batch ends:
        a failure after the commit leaves these events applied (and skipped on replay)."""
        t = self.total
        t.polled += out.polled
        t.applied += out.applied
        t.skipped += out.skipped
        t.dead += out.dead
        metrics.count_events(out.applied, out.skipped, out.dead)


def _validated(records: list[Any], now_ms: int) -> list[Any]:
    """Step 1: each record's event, or the ``InvalidInput`` saying why it is none."""
    events: list[Any] = []
    for r in records:
        try:
            events.append(validate(r.value, now_ms))
        except InvalidInput as exc:
            events.append(exc)
        except Exception as exc:  # a record no rule foresaw must not crash-loop us
            logger.exception("validation raised on partition %s offset %s", r.partition, r.offset)
            events.append(InvalidInput(f"unvalidatable record ({type(exc).__name__}: {exc})"))
    return events
