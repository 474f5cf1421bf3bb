"""Per-user windowed aggregates: the state behind the user stream features.

A user's state is small (the last items, the event times per type within the longest
window) and lives in Redis as JSON, written in the same transaction as the Kafka offsets
it reflects, so a restart resumes exactly where the last committed batch ended.
Item aggregates are Redis hour buckets incremented inside that same transaction.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Any

from features.definitions import RECENT_ITEMS, WINDOWS
from rtrec.events import EVENT_TYPES

LONGEST_MS = max(WINDOWS.values())
HOUR_MS = 3_600_000


@dataclass
class UserState:
    recent: list[str] = field(default_factory=list)
    """Item ids, newest first, at most RECENT_ITEMS."""
    times: dict[str, list[int]] = field(default_factory=dict)
    """Event type -> ascending event times within the longest window."""
    last_ts: int = 0

    def apply(self, item_id: str, event_type: str, ts: int) -> None:
        """Fold one event in; out-of-order events keep counts right and history by time."""
        if ts >= self.last_ts:
            self.recent.insert(0, item_id)
            del self.recent[RECENT_ITEMS:]
            self.last_ts = ts
        times = self.times.setdefault(event_type, [])
        bisect.insort(times, ts)
        horizon = self.last_ts - LONGEST_MS
        for key, values in self.times.items():
            cut = bisect.bisect_right(values, horizon)
            if cut:
                del values[:cut]
            self.times[key] = values

    def features(self) -> dict[str, Any]:
        """Counts per type over each window ending at the user's latest event."""
        out: dict[str, Any] = {"recent_items": list(self.recent), "last_event_ms": self.last_ts}
        for etype in EVENT_TYPES:
            values = self.times.get(etype, [])
            for name, span in WINDOWS.items():
                out[f"cnt_{etype}_{name}"] = len(values) - bisect.bisect_right(
                    values, self.last_ts - span
                )
        return out

    def dumps(self) -> str:
        return json.dumps({"r": self.recent, "t": self.times, "l": self.last_ts})

    @classmethod
    def loads(cls, raw: bytes | str | None) -> UserState:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(list(data["r"]), {k: list(v) for k, v in data["t"].items()}, int(data["l"]))


def item_window_counts(buckets: dict[bytes, bytes], now_ms: int) -> dict[str, int]:
    """Window counts from an item's hour buckets (hour index -> count) as of ``now_ms``."""
    hour_now = now_ms // HOUR_MS
    parsed = [(int(h), int(c)) for h, c in buckets.items()]
    return {
        f"item_cnt_{name}": sum(c for h, c in parsed if hour_now - h < max(span // HOUR_MS, 1))
        for name, span in WINDOWS.items()
    }
