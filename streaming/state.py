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

The offline event log's progress lives here too (:meth:`RedisState.record_offline`): per
partition the highest offset written (what a new owner skips) and a **watermark** — the
highest offset the log covers (written, or rejected to the dead-letter topic) and the
newest event time written — which readers such as the drift monitor use to know whether
the log holds what was published (:func:`rtrec.streaming.coverage.offline_coverage`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtrec.config import Settings

if TYPE_CHECKING:
    from rtrec.streaming.aggregates import ItemDelta

logger = logging.getLogger(__name__)

STATE_PREFIX = "rtrec:state:user:"
ITEM_PREFIX = "rtrec:item:"
ITEM_CLOCK_KEY = "rtrec:item:clock"
"""Latest event hour seen by any processor: item windows end there (event time)."""
ITEM_TTL_S = 8 * 86_400

FENCED = "fenced"
LOST = "lost"

OFFSETS_LUA = """local i = 2
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
"""
"""Lua shared by the commit scripts: from ARGV[2], the (partition, read-from, read-to)
triples of a batch; returns {0} unless every partition's stored offset is still the one the
batch was read from (a redelivered or fenced-out batch), then advances them. Leaves ``i``
at the next argument. Expects ``offsets`` (the offsets hash key) to be set."""


_COMMIT = (
    """
local offsets, trending, clock_key, log_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if ARGV[1] ~= '' and redis.call('GET', log_key) ~= ARGV[1] then
  if redis.call('EXISTS', log_key) == 0 then return {-1} end
  return {0}
end
"""
    + OFFSETS_LUA
    + """local nu = tonumber(ARGV[i]); i = i + 1
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
)

_RESET_LOG = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 1
"""

_RECORD_OFFLINE = """
local offline, mark, log_key = KEYS[1], KEYS[2], KEYS[3]
if ARGV[1] ~= '' and redis.call('GET', log_key) ~= ARGV[1] then return 0 end
redis.call('HSET', mark, 'log', ARGV[1], 'at', ARGV[2])
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local p, written, through, newest = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if tonumber(written) > tonumber(redis.call('HGET', offline, p) or '-1') then
    redis.call('HSET', offline, p, written)
  end
  if tonumber(through) > tonumber(redis.call('HGET', mark, 'o:' .. p) or '-1') then
    redis.call('HSET', mark, 'o:' .. p, through)
  end
  if tonumber(newest) > tonumber(redis.call('HGET', mark, 't:' .. p) or '-1') then
    redis.call('HSET', mark, 't:' .. p, newest)
  end
end
return 1
"""


def state_keys(settings: Settings) -> dict[str, str]:
    """The Redis keys of one consumer group's state of one topic (one place spells them:
    the processor writes them, the offline log's readers read them)."""
    group, topic = settings.kafka.consumer_group, settings.kafka.events_topic
    return {
        "offsets": f"rtrec:offsets:{group}:{topic}",
        "offline": f"rtrec:offline:{group}:{topic}",
        "watermark": f"rtrec:watermark:{group}:{topic}",
        "log": f"rtrec:log:{group}:{topic}",
    }


@dataclass
class _Pending:
    conn: Any
    keys: list[str]
    args: list[Any]
    names: list[str]
    offsets: dict[int, int]


class RedisState:
    """Applied offsets, user states and item aggregates of one consumer group."""

    def __init__(
        self, settings: Settings, client: Any, window_hours: list[int], *, namespace: str = ""
    ) -> None:
        self.client = client
        keys = {k: namespace + v for k, v in state_keys(settings).items()}
        self.offsets_key = keys["offsets"]
        self.offline_key = keys["offline"]
        self.watermark_key = keys["watermark"]
        """The offline log's watermark (see :meth:`record_offline`)."""
        self.log_key = keys["log"]
        """The topic incarnation (broker topic id) the offsets above belong to."""
        self.state_prefix = namespace + STATE_PREFIX
        self.item_prefix = namespace + ITEM_PREFIX
        self.clock_key = namespace + ITEM_CLOCK_KEY
        self.trending_key = namespace + _trending_key()
        """``namespace`` prefixes every key the state writes: the backfill runs the same
        commit on scratch keys, beside (not over) a live processor's state."""
        self.window_hours = sorted(window_hours)
        self._script = client.register_script(_COMMIT)
        self._script.sha = client.script_load(_COMMIT)
        self._record = client.register_script(_RECORD_OFFLINE)
        self.committed: dict[int, int] = {}
        """Per partition, the highest offset a batch of this member committed (valid or
        dead-lettered events alike) since :meth:`forget_committed`: what the offline
        buffer covers once it holds every valid event of those batches."""

    def read(self, users: list[str]) -> tuple[dict[int, int], list[bytes | None]]:
        """Applied offsets per partition and the stored states of ``users``, one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.offsets_key)
        if users:
            pipe.mget([self.state_prefix + u for u in users])
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
        keys = [self.log_key, self.offsets_key, self.offline_key, self.watermark_key]
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
            args += [self.state_prefix + user, raw]
        args += [batch_hour, ITEM_TTL_S, len(self.window_hours), *self.window_hours]
        names = list(items)
        args.append(len(names))
        for name in names:
            d = items[name]
            args += [self.item_prefix + name, name, repr(d.weight) if d.weight else "0"]
            args.append(len(d.buckets))
            for hour, n in d.buckets.items():
                args += [hour, n]
        keys = [self.offsets_key, self.trending_key, self.clock_key, self.log_key]
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        return _Pending(conn, keys, args, names, {p: new for p, (_, new) in offsets.items()})

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
        for p, off in pending.offsets.items():
            if off > self.committed.get(p, -1):
                self.committed[p] = off
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

    def forget_committed(self) -> None:
        """The offline buffer was dropped: batches committed so far no longer count as
        buffered (their events come again, or another member logs them)."""
        self.committed.clear()

    def record_offline(
        self,
        written: dict[int, tuple[int, int]],
        through: dict[int, int],
        *,
        log_id: str = "",
    ) -> bool:
        """Record a finished flush in one atomic script: per partition the highest offset
        written and the watermark (``through``: offset covered; newest event time).

        ``written``: partition -> (highest offset, newest event ``ts``) of the flushed
        rows; ``through``: partition -> highest offset the log now covers (the batches
        committed before the flush started). Values only ever move forward (a stale
        member's late flush cannot move them back). Fenced on ``log_id`` like the batch
        commit: False (nothing recorded) when the state now belongs to another
        incarnation of the topic, whose offsets these are not.
        """
        parts = sorted(set(written) | set(through))
        if not parts:
            return True
        args: list[Any] = [log_id, int(time.time() * 1000), len(parts)]
        for p in parts:
            off, newest = written.get(p, (-1, -1))
            args += [p, off, max(through.get(p, -1), off), newest]
        keys = [self.offline_key, self.watermark_key, self.log_key]
        return bool(self._record(keys=keys, args=args))


def _trending_key() -> str:
    from rtrec.features import TRENDING_KEY

    return TRENDING_KEY
