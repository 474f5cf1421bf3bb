"""Where the stream processor's state lives in Redis, and the script calls that write it.

One place spells the keys (the processor writes them; the offline log's readers, the
backfill and the tests read them) and builds each script call's ``KEYS`` and ``ARGV``
from plain values, without Redis, so the cluster-safety tests check exactly the calls the
processor makes. The two hash tags and why each call stays in one slot:
``rtrec.streaming.state_lua``.

The group slot holds everything one consumer group reads and fences on together (its
offsets, log marker, offline progress, user states), so the watermark stays one atomic
read and a batch's user states commit in one call with their offsets. The item slot is
the trending set's: that set is one key that every batch increments, so the item buckets
and clock that a batch updates with it live beside it. The item slot's key names keep the
tag first and put a backfill's scratch namespace after it: a backfilled trending set must
be in the served set's slot to replace it with ``RENAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtrec.streaming.state_lua import ITEMS_COMMIT, RECORD_OFFLINE, RESET_LOG, USERS_COMMIT

from rtrec.config import Settings

if TYPE_CHECKING:
    from rtrec.streaming.aggregates import ItemDelta

ITEM_TTL_S = 8 * 86_400


@dataclass(frozen=True)
class StateKeys:
    """The keys of one consumer group's state of one topic (``namespace``: scratch keys
    beside a live processor's, for the backfill)."""

    offsets: str
    offline: str
    watermark: str
    log: str
    user_prefix: str
    item_offsets: str
    item_log: str
    trending: str
    clock: str
    """Latest event hour seen by any processor: item windows end there (event time)."""
    item_prefix: str

    @classmethod
    def of(cls, settings: Settings, namespace: str = "") -> StateKeys:
        from rtrec.features import TRENDING_KEY

        group, topic = settings.kafka.consumer_group, settings.kafka.events_topic
        tag = "{" + f"{namespace}rtrec:state:{group}:{topic}" + "}"
        item = TRENDING_KEY[: TRENDING_KEY.index("}") + 1] + ":" + namespace
        return cls(
            offsets=f"{tag}:offsets",
            offline=f"{tag}:offline",
            watermark=f"{tag}:watermark",
            log=f"{tag}:log",
            user_prefix=f"{tag}:user:",
            item_offsets=f"{item}offsets:{group}:{topic}",
            item_log=f"{item}log:{group}:{topic}",
            trending=f"{item}trending" if namespace else TRENDING_KEY,
            clock=f"{item}clock",
            item_prefix=f"{item}item:",
        )


@dataclass(frozen=True)
class ScriptCall:
    """One script run: its Lua source, ``KEYS`` and ``ARGV``."""

    script: str
    keys: list[str]
    args: list[Any]


def _fence_args(log_id: str, offsets: dict[int, tuple[int, int]]) -> list[Any]:
    """ARGV[1..] of a commit: the log id, then per partition (read-from, read-to)."""
    args: list[Any] = [log_id, len(offsets)]
    for p, (seen, new) in offsets.items():
        args += [p, seen, max(new, seen)]
    return args


def users_call(
    keys: StateKeys,
    offsets: dict[int, tuple[int, int]],
    states: dict[str, str | bytes],
    log_id: str,
) -> ScriptCall | None:
    """The group slot's part of a batch commit (None: nothing to write there)."""
    if not offsets and not states:
        return None
    args = _fence_args(log_id, offsets)
    args += list(states.values())
    names = [keys.offsets, keys.log] + [keys.user_prefix + u for u in states]
    return ScriptCall(USERS_COMMIT, names, args)


def items_call(
    keys: StateKeys,
    offsets: dict[int, tuple[int, int]],
    items: dict[str, ItemDelta],
    batch_hour: int,
    window_hours: list[int],
    log_id: str,
) -> ScriptCall:
    """The item slot's part of a batch commit: buckets and trending of ``items``."""
    args = _fence_args(log_id, offsets)
    args += [batch_hour, ITEM_TTL_S, len(window_hours), *window_hours]
    names = [keys.item_offsets, keys.item_log, keys.trending, keys.clock]
    for name, d in items.items():
        names.append(keys.item_prefix + name)
        args += [name, repr(d.weight) if d.weight else "0", len(d.buckets)]
        for hour, n in d.buckets.items():
            args += [hour, n]
    return ScriptCall(ITEMS_COMMIT, names, args)


def reset_calls(keys: StateKeys, old: str, new: str) -> list[ScriptCall]:
    """Forget ``old``'s offsets in each slot whose marker still names it."""
    return [
        ScriptCall(RESET_LOG, [keys.log, keys.offsets, keys.offline, keys.watermark], [old, new]),
        ScriptCall(RESET_LOG, [keys.item_log, keys.item_offsets], [old, new]),
    ]


def record_call(
    keys: StateKeys,
    written: dict[int, tuple[int, int]],
    through: dict[int, int],
    log_id: str,
    now_ms: int,
) -> ScriptCall:
    """The offline log's progress and watermark (group slot)."""
    parts = sorted(set(written) | set(through))
    args: list[Any] = [log_id, now_ms, len(parts)]
    for p in parts:
        off, newest = written.get(p, (-1, -1))
        args += [p, off, max(through.get(p, -1), off), newest]
    return ScriptCall(RECORD_OFFLINE, [keys.offline, keys.watermark, keys.log], args)


def state_keys(settings: Settings) -> dict[str, str]:
    """The group slot's fixed keys (the offline log's readers read them)."""
    k = StateKeys.of(settings)
    return {"offsets": k.offsets, "offline": k.offline, "watermark": k.watermark, "log": k.log}


def hash_pairs(raw: Any) -> dict[Any, Any]:
    """HGETALL's answer as a dict: a script, and redis-py's cluster transaction, hand back
    the flat field/value list the plain client turns into a dict."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))
