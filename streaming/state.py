"""The processor's durable state in Redis, committed with the offsets it reflects.

One Lua script per batch (atomic, one round trip) checks that the batch's partitions still
have the applied offsets this processor read (a fence: a member that lost its partitions
to a rebalance cannot overwrite the new owner's work), then writes the user states,
the applied offsets, the item hour buckets and trending scores, and returns each touched
item's window counts and score for the feature write. Redelivered events (offset at or
below the applied offset) are never folded in twice.

The offsets only mean something for one incarnation of the topic's log, so the state also
records which one: the topic id the broker reports (``log_key``). The commit is fenced on it
as well. A topic that was deleted and created again (the embedded Tansu broker keeps
nothing across a restart) has a new id and offsets from 0: :meth:`RedisState.reset_log`
forgets the old offsets while the aggregates carry on. A marker that vanished means Redis
lost the state (a restart without persistence, a flush): the commit answers "lost" and
the processor rebuilds from the start of the retained log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from rtrec.config import Settings

logger = logging.getLogger(__name__)

STATE_PREFIX = "rtrec:state:user:"
ITEM_PREFIX = "rtrec:item:"
ITEM_CLOCK_KEY = "rtrec:item:clock"
"""Latest event hour seen by any processor: item windows end there (event time)."""
ITEM_TTL_S = 8 * 86_400

FENCED = "fenced"
LOST = "lost"

_COMMIT = """
local offsets, trending, clock_key, log_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if ARGV[1] ~= '' and redis.call('GET', log_key) ~= ARGV[1] then
  if redis.call('EXISTS', log_key) == 0 then return {-1} end
  return {0}
end
local i = 2
local np = tonumber(ARGV[i]); i = i + 1
local first = i
for _ = 1, np do
  if (redis.call('HGET', offsets, ARGV[i]) or '-1') ~= ARGV[i + 1] then return {0} end
  i = i + 3
end
i = first
for _ = 1, np do
  if tonumber(ARGV[i + 2]) > tonumber(ARGV[i + 1]) then
    redis.call('HSET', offsets, ARGV[i], ARGV[i + 2])
  end
  i = i + 3
end
local nu = tonumber(ARGV[i]); i = i + 1
for _ = 1, nu do redis.call('SET', ARGV[i], ARGV[i + 1]); i = i + 2 end
local clock = tonumber(redis.call('GET', clock_key) or '0')
local batch_hour = tonumber(ARGV[i]); local ttl = ARGV[i + 1]; i = i + 2
if batch_hour > clock then clock = batch_hour; redis.call('SET', clock_key, clock) end
local nw = tonumber(ARGV[i]); i = i + 1
local spans = {}
for w = 1, nw do spans[w] = tonumber(ARGV[i]); i = i + 1 end
local longest = spans[nw]
local out = {1}
local ni = tonumber(ARGV[i]); i = i + 1
for _ = 1, ni do
  local key, member, incr, nb = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  for _ = 1, nb do redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1]); i = i + 2 end
  if nb > 0 then redis.call('EXPIRE', key, ttl) end
  local score
  if incr ~= '0' then score = redis.call('ZINCRBY', trending, incr, member)
  else score = redis.call('ZSCORE', trending, member) or '0' end
  local counts = {}
  for w = 1, nw do counts[w] = 0 end
  local flat = redis.call('HGETALL', key)
  for j = 1, #flat, 2 do
    local age = clock - tonumber(flat[j])
    if age >= longest then redis.call('HDEL', key, flat[j])
    else
      local n = tonumber(flat[j + 1])
      for w = 1, nw do if age < spans[w] then counts[w] = counts[w] + n end end
    end
  end
  for w = 1, nw do out[#out + 1] = counts[w] end
  out[#out + 1] = score
end
return out
"""

_RESET_LOG = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""


@dataclass
class ItemDelta:
    """What one batch adds to an item: hour bucket counts and trending weight."""

    buckets: dict[int, int] = field(default_factory=dict)
    weight: float = 0.0


@dataclass
class _Pending:
    conn: Any
    keys: list[str]
    args: list[Any]
    names: list[str]


class RedisState:
    """Applied offsets, user states and item aggregates of one consumer group."""

    def __init__(self, settings: Settings, client: Any, window_hours: list[int]) -> None:
        self.client = client
        group, topic = settings.kafka.consumer_group, settings.kafka.events_topic
        self.offsets_key = f"rtrec:offsets:{group}:{topic}"
        self.offline_key = f"rtrec:offline:{group}:{topic}"
        self.log_key = f"rtrec:log:{group}:{topic}"
        """The topic incarnation (broker topic id) the offsets above belong to."""
        self.window_hours = sorted(window_hours)
        self._script = client.register_script(_COMMIT)
        self._script.sha = client.script_load(_COMMIT)

    def read(self, users: list[str]) -> tuple[dict[int, int], list[bytes | None]]:
        """Applied offsets per partition and the stored states of ``users``, one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.offsets_key)
        if users:
            pipe.mget([STATE_PREFIX + u for u in users])
        res = pipe.execute()
        applied = {int(p): int(o) for p, o in res[0].items()}
        return applied, (res[1] if users else [])

    def adopt_log(self, log_id: str) -> str:
        """Record ``log_id`` as the log the offsets belong to, unless one is recorded;
        returns the recorded one (compare it with ``log_id`` to see a recreated topic)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.setnx(self.log_key, log_id)
        pipe.get(self.log_key)
        stored = pipe.execute()[1]
        return stored.decode() if isinstance(stored, bytes) else str(stored)

    def reset_log(self, old: str, new: str) -> bool:
        """The topic was recreated (``old`` -> ``new``): its offsets start again at 0, so
        forget the applied and logged offsets of ``old`` (user states, item buckets and
        trending stay). False when another member already did it."""
        keys = [self.log_key, self.offsets_key, self.offline_key]
        return bool(self.client.eval(_RESET_LOG, len(keys), *keys, old, new))

    def commit(self, **batch: Any) -> dict[str, tuple[list[int], float]] | str:
        """Write a batch atomically (see :meth:`commit_send` for the arguments)."""
        return self.commit_receive(self.commit_send(**batch))

    def commit_send(
        self,
        *,
        offsets: dict[int, tuple[int, int]],
        states: dict[str, str | bytes],
        batch_hour: int,
        items: dict[str, ItemDelta],
        log_id: str = "",
    ) -> _Pending:
        """Start the atomic batch write; ``offsets``: partition -> (applied read, new);
        ``log_id``: the topic incarnation the offsets belong to ("" checks nothing).

        Only sends: the caller encodes its feature rows while Redis runs the script,
        then calls :meth:`commit_receive`.
        """
        args: list[Any] = [log_id, len(offsets)]
        for p, (seen, new) in offsets.items():
            args += [p, seen, max(new, seen)]
        args.append(len(states))
        for user, raw in states.items():
            args += [STATE_PREFIX + user, raw]
        args += [batch_hour, ITEM_TTL_S, len(self.window_hours), *self.window_hours]
        names = list(items)
        args.append(len(names))
        for name in names:
            d = items[name]
            args += [ITEM_PREFIX + name, name, repr(d.weight) if d.weight else "0"]
            args.append(len(d.buckets))
            for hour, n in d.buckets.items():
                args += [hour, n]
        keys = [self.offsets_key, _trending_key(), ITEM_CLOCK_KEY, self.log_key]
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        return _Pending(conn, keys, args, names)

    def commit_receive(self, pending: _Pending) -> dict[str, tuple[list[int], float]] | str:
        """The script's answer: item -> (window counts, trending score); or, with nothing
        written, :data:`FENCED` (another member applied these partitions, or the topic's
        log changed) or :data:`LOST` (the log marker is gone: Redis lost the state)."""
        from redis.exceptions import NoScriptError

        pool = self.client.connection_pool
        try:
            out = pending.conn.read_response()
        except NoScriptError:  # Redis restarted and lost its script cache: load and run
            out = self._script(keys=pending.keys, args=pending.args)
        except BaseException:
            pending.conn.disconnect()
            raise
        finally:
            pool.release(pending.conn)
        if not out or int(out[0]) <= 0:
            return LOST if out and int(out[0]) < 0 else FENCED
        step = len(self.window_hours) + 1
        return {
            name: (
                [int(c) for c in out[1 + k * step : k * step + step]],
                float(out[k * step + step]),
            )
            for k, name in enumerate(pending.names)
        }

    def offline_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Last offset per partition already in the offline event log (-1: none)."""
        if not partitions:
            return {}
        raw = self.client.hmget(self.offline_key, [str(p) for p in partitions])
        return {p: int(v) if v is not None else -1 for p, v in zip(partitions, raw, strict=True)}

    def set_offline_offsets(self, offsets: dict[int, int]) -> None:
        if offsets:
            self.client.hset(self.offline_key, mapping={str(p): o for p, o in offsets.items()})


def _trending_key() -> str:
    from features import TRENDING_KEY

    return TRENDING_KEY
