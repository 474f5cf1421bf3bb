"""The offline event log's watermark as the processor recorded it in Redis, read back.

Each flush of the offline log records (``RedisState.record_offline``) per partition the
highest offset the log covers and the newest event time written. :func:`read_watermark`
reads it in one round trip; ``rtrec.streaming.coverage`` compares it with the topic's end
offsets to tell readers whether the log holds everything they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtrec.streaming.state import state_keys
from rtrec.streaming.state_layout import hash_pairs

from rtrec.config import Settings


@dataclass(frozen=True)
class PartitionMark:
    """One partition's offline progress: what a reader may rely on."""

    written: int
    """Highest offset whose event is in the offline log (-1: none yet)."""
    through: int
    """Highest offset the log covers: every offset up to it is written or was rejected
    (dead letter). At least ``written``."""
    newest_ms: int
    """Newest event time (``ts``, ms) written for this partition (-1: none yet)."""


@dataclass(frozen=True)
class Watermark:
    """What the offline event log holds of one topic incarnation, as one consumer group
    recorded it (read in one round trip, so its fields agree with each other)."""

    log_id: str
    """The topic incarnation (broker topic id) the offsets belong to ("" unknown)."""
    partitions: dict[int, PartitionMark]
    updated_ms: int
    """Wall-clock time of the last recorded flush (0: none)."""

    @property
    def through(self) -> dict[int, int]:
        return {p: m.through for p, m in self.partitions.items()}


def read_watermark(client: Any, settings: Settings) -> Watermark:
    """The offline log's watermark and the log id the state belongs to, atomically.

    The watermark is only returned for the log the state currently belongs to: one left
    by a previous incarnation of the topic counts as nothing logged.
    """
    keys = state_keys(settings)
    pipe = client.pipeline(transaction=True)  # on a cluster too: the keys share one slot
    pipe.hgetall(keys["watermark"])
    pipe.hgetall(keys["offline"])
    pipe.get(keys["log"])
    raw_mark, raw_offline, raw_log = pipe.execute()
    mark = {_text(k): _text(v) for k, v in hash_pairs(raw_mark).items()}
    state_log = _text(raw_log) if raw_log is not None else ""
    if mark.get("log", state_log) != state_log:
        return Watermark(state_log, {}, 0)
    written = {int(_text(p)): int(_text(o)) for p, o in hash_pairs(raw_offline).items()}
    parts: set[int] = set(written)
    for name in mark:
        if name[:2] in ("o:", "t:"):
            parts.add(int(name[2:]))
    partitions = {
        p: PartitionMark(
            written=written.get(p, -1),
            through=max(int(mark.get(f"o:{p}", -1)), written.get(p, -1)),
            newest_ms=int(mark.get(f"t:{p}", -1)),
        )
        for p in sorted(parts)
    }
    return Watermark(state_log, partitions, int(mark.get("at", 0)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
