"""Per-user windowed aggregates: the state behind the user stream features.

A user's state is small (the last items, the event times per type within the longest
window) and lives in Redis as JSON, written in the same atomic commit as the Kafka offsets
it reflects (``rtrec.streaming.state``), so a restart resumes exactly where the last committed
batch ended. Item aggregates are Redis hour buckets updated by that same commit.

The stream processor (``rtrec.streaming.batch``) and the backfill
(``rtrec.streaming.backfill``) fold events and shape feature rows with the code here, so
a backfilled store holds what the stream writes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import orjson
from rtrec.features import RECENT_ITEMS, WINDOWS, trending_weight

from rtrec.events import EVENT_TYPES

LONGEST_MS = max(WINDOWS.values())
HOUR_MS = 3_600_000
WINDOW_HOURS = [max(span // HOUR_MS, 1) for span in WINDOWS.values()]
"""Item windows in whole hours (item counts are kept in hour buckets), in WINDOWS order."""

_COUNT_KEYS = [
    (t, name, f"cnt_{t}_{name}", span) for t in EVENT_TYPES for name, span in WINDOWS.items()
]
ITEM_COUNTS = [f"item_cnt_{w}" for w in WINDOWS]
"""The item stream view's window counts, in WINDOWS order (as the commit returns them)."""

Row = tuple[str, dict[str, Any], int]
"""A feature row for ``rtrec.features.write_rows``: (entity id, features, event time ms)."""


@dataclass
class UserState:
    recent: list[str] = field(default_factory=list)
    """Item ids, newest first, at most RECENT_ITEMS."""
    times: dict[str, list[int]] = field(default_factory=dict)
    """Event type -> ascending event times (trimmed to the longest window when saved)."""
    last_ts: int = 0

    def apply(self, item_id: str, event_type: str, ts: int) -> None:
        """Fold one event in; out-of-order events keep counts right and history by time."""
        if ts >= self.last_ts:
            self.recent.insert(0, item_id)
            if len(self.recent) > RECENT_ITEMS:
                del self.recent[RECENT_ITEMS:]
            self.last_ts = ts
        times = self.times.get(event_type)
        if times is None:
            self.times[event_type] = [ts]
        elif not times or ts >= times[-1]:
            times.append(ts)
        else:
            bisect.insort(times, ts)

    def in_later_hour(self, ts: int) -> bool:
        """An event at ``ts`` falls in a later hour than the latest event: the grain at
        which the offline store keeps a user's states within a batch
        (``rtrec.streaming.batch._Fold.between``)."""
        return ts // HOUR_MS > self.last_ts // HOUR_MS

    def features(self) -> dict[str, Any]:
        """Counts per type over each window ending at the user's latest event."""
        out: dict[str, Any] = {"recent_items": list(self.recent), "last_event_ms": self.last_ts}
        last, times = self.last_ts, self.times
        for etype, _, name, span in _COUNT_KEYS:
            values = times.get(etype)
            out[name] = len(values) - bisect.bisect_right(values, last - span) if values else 0
        return out

    def trim(self) -> None:
        """Drop event times older than the longest window (they count in no window)."""
        horizon = self.last_ts - LONGEST_MS
        for values in self.times.values():
            cut = bisect.bisect_right(values, horizon)
            if cut:
                del values[:cut]

    def dumps(self) -> bytes:
        self.trim()
        return orjson.dumps({"r": self.recent, "t": self.times, "l": self.last_ts})

    @classmethod
    def loads(cls, raw: bytes | str | None) -> UserState:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls(list(data["r"]), {k: list(v) for k, v in data["t"].items()}, int(data["l"]))


@dataclass
class ItemDelta:
    """What one batch adds to an item: hour bucket counts and trending weight."""

    buckets: dict[int, int] = field(default_factory=dict)
    weight: float = 0.0

    def add(self, ts: int, epoch: int) -> None:
        """Fold one event at ``ts`` in (trending weight relative to ``epoch``)."""
        hour = ts // HOUR_MS
        self.buckets[hour] = self.buckets.get(hour, 0) + 1
        self.weight += trending_weight(ts, epoch)


def user_feature_row(user: str, state: UserState, now_ms: int) -> Row:
    """The user stream view's row for ``state``, written at ``now_ms``."""
    row = state.features()
    row["written_ms"] = now_ms
    return user, row, state.last_ts


def item_feature_rows(items: dict[str, tuple[list[int], float]], now_ms: int) -> list[Row]:
    """The item stream view's rows from what the state commit returned per item (window
    counts, trending score), written at ``now_ms``."""
    rows = []
    for item, (counts, score) in items.items():
        row: dict[str, Any] = dict(zip(ITEM_COUNTS, counts, strict=True))
        row["trending_score"] = score
        row["written_ms"] = now_ms
        rows.append((item, row, now_ms))
    return rows
