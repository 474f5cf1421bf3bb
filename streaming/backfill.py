"""Rebuild the stream features in the online store from the offline event log.

For a fresh or flushed Redis, or a new feature view, when the broker no longer holds the
events for the processor to read again. The log is replayed through the processor's own
aggregation code (``rtrec.streaming.aggregates``, ``rtrec.streaming.state``), so every
stream feature comes back as the stream writes it:

- users: each user's events fold into a :class:`UserState` in the log's order, which for
  one user is the order the processor applied them (one Kafka partition per user);
- items and trending: the events go through the processor's atomic state commit an hour
  of event time at a time, in event-time order. An item's window counts end at the
  latest event hour seen when the item was last touched, as in a live stream, whose
  batches each lie within the current hour. The hour buckets and the running trending
  set live under scratch keys beside a live processor's state (never over it) and are
  deleted afterwards; the finished trending set then replaces the served one at once.
  Trending scores are relative to the store's trending epoch (the processor's, when it
  has set one).

What it does not do: write the processor's own state (user states, hour buckets,
offsets), which a processor rebuilds from the retained topic itself, or the offline
copies of the feature rows.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rtrec.features import (
    ITEM_STREAM_VIEW,
    TRENDING_EPOCH_KEY,
    TRENDING_KEY,
    USER_STREAM_VIEW,
    write_rows,
)
from rtrec.streaming.aggregates import (
    HOUR_MS,
    WINDOW_HOURS,
    ItemDelta,
    Row,
    UserState,
    item_feature_rows,
    user_feature_row,
)
from rtrec.streaming.offline import read_events
from rtrec.streaming.state import RedisState

from rtrec.config import Settings
from rtrec.errors import InvalidInput, NotFound

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
WRITE_CHUNK = 1000
"""Rows per online-store write (one pipelined round trip each)."""


@dataclass(frozen=True)
class BackfillResult:
    """What a backfill wrote: counts for the DAG's XCom and the CLI."""

    users: int
    items: int
    events: int
    hours: int
    """Event hours replayed (state commits made)."""
    end_ms: int
    trending_epoch_ms: int

    def to_dict(self) -> dict[str, int]:
        return {
            "users": self.users,
            "items": self.items,
            "events": self.events,
            "hours": self.hours,
            "end_ms": self.end_ms,
            "trending_epoch_ms": self.trending_epoch_ms,
        }


def backfill_online_store(
    settings: Settings,
    *,
    end_ms: int | None = None,
    days: float | None = None,
    client: Any = None,
) -> BackfillResult:
    """Replay the offline event log's events in ``[end_ms - days, end_ms)`` into the online
    store's user and item stream views and the trending set (module docstring).

    ``end_ms`` defaults to just after the newest logged event; ``days`` None replays the
    whole log (what the stream saw), a number only its last ``days`` (faster; counts and
    histories then miss what came before). ``client``: the Redis client (default one on
    ``settings.redis.url``). An empty log or window is :class:`NotFound`.
    """
    from rtrec.redis_clients import redis_client

    if days is not None and not days > 0:
        raise InvalidInput(f"days must be positive, got {days}", field="days")
    directory = settings.events_log_dir
    events = read_events(directory)
    if not len(events):
        raise NotFound(f"no events in the offline log at {directory}")
    end = int(end_ms) if end_ms else int(events["ts"].max()) + 1
    keep = events["ts"] < end
    if days is not None:
        keep &= events["ts"] >= end - int(days * DAY_MS)
    window = events[keep]
    if not len(window):
        raise NotFound(f"no logged events before {end} in the last {days} days at {directory}")
    client = client or redis_client(settings)
    now_ms = int(time.time() * 1000)

    users = _user_rows(window, now_ms)
    for start in range(0, len(users), WRITE_CHUNK):
        write_rows(settings, USER_STREAM_VIEW, users[start : start + WRITE_CHUNK])

    # The processor's rule: the first events seen set the epoch, kept from then on.
    client.setnx(TRENDING_EPOCH_KEY, int(window["ts"].min()))
    epoch = int(client.get(TRENDING_EPOCH_KEY))
    items, hours = _item_rows(settings, client, window, epoch, now_ms)
    for start in range(0, len(items), WRITE_CHUNK):
        write_rows(settings, ITEM_STREAM_VIEW, items[start : start + WRITE_CHUNK])
    result = BackfillResult(
        users=len(users),
        items=len(items),
        events=len(window),
        hours=hours,
        end_ms=end,
        trending_epoch_ms=epoch,
    )
    logger.info("backfilled the online store from the offline log: %s", result.to_dict())
    return result


def _user_rows(events: Any, now_ms: int) -> list[Row]:
    states: dict[str, UserState] = {}
    for user, item, etype, ts in zip(
        events["user_id"].astype(str).tolist(),
        events["item_id"].astype(str).tolist(),
        events["event_type"].astype(str).tolist(),
        events["ts"].astype("int64").tolist(),
        strict=True,
    ):
        state = states.get(user)
        if state is None:
            state = states[user] = UserState()
        state.apply(item, etype, ts)
    return [user_feature_row(user, state, now_ms) for user, state in states.items()]


def _item_rows(
    settings: Settings, client: Any, events: Any, epoch: int, now_ms: int
) -> tuple[list[Row], int]:
    """Item rows from the state commit, an event hour at a time on scratch keys; the
    finished trending set replaces the served one. Returns (rows, hours replayed)."""
    ordered = events.sort_values("ts", kind="stable")
    items = ordered["item_id"].astype(str).tolist()
    stamps = ordered["ts"].astype("int64").tolist()
    scratch = f"rtrec:backfill:{uuid.uuid4().hex}:"
    state = RedisState(settings, client, WINDOW_HOURS, namespace=scratch)
    latest: dict[str, Row] = {}
    hours = 0
    try:
        start = 0
        while start < len(stamps):
            hour = stamps[start] // HOUR_MS
            deltas: dict[str, ItemDelta] = {}
            stop = start
            while stop < len(stamps) and stamps[stop] // HOUR_MS == hour:
                delta = deltas.get(items[stop])
                if delta is None:
                    delta = deltas[items[stop]] = ItemDelta()
                delta.add(stamps[stop], epoch)
                stop += 1
            out = state.commit(offsets={}, states={}, batch_hour=hour, items=deltas)
            if isinstance(out, str):  # unfenced (no offsets, no log id): cannot happen
                raise RuntimeError(f"backfill state commit answered {out!r}")
            for row in item_feature_rows(out, now_ms):
                latest[row[0]] = row
            hours += 1
            start = stop
        client.rename(state.trending_key, TRENDING_KEY)  # the served set, replaced at once
    finally:
        # The namespace sits after each slot's hash tag (``rtrec.streaming.state_layout``).
        scratch_keys = list(client.scan_iter(match=f"*{scratch}*", count=1000))
        for at in range(0, len(scratch_keys), 1000):
            client.delete(*scratch_keys[at : at + 1000])
    return list(latest.values()), hours
