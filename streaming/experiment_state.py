"""The experiment aggregates in Redis, committed with the offsets they reflect.

Like the processor's own state (``rtrec.streaming.state``): one Lua script per batch checks
that the batch's (topic, partition) offsets are still the applied ones this member read,
and that it still holds the lease (one member joins impressions to outcomes at a time),
then writes the users' join states, the applied offsets, and adds the batch's tally to
each arm: counters (``HINCRBY``), exposed and clicking users (sets: adding a user twice
changes nothing). A redelivered record is at or below the applied offset and never folded
in again; a member that lost the lease or whose offsets moved writes nothing.

Every key the scripts touch is passed in ``KEYS`` and carries one hash tag
(``{rtrec:exp:<consumer group>}``), so the scripts run unchanged on Redis Cluster, where all
of them live in one slot.

Keys under :func:`experiment_keys` ``["prefix"]``: ``:offsets`` (``topic/partition`` ->
applied offset), ``:lease``, ``:arms`` (sorted set of ``[experiment, variant]`` by the
newest impression's time), ``:unattributed`` (outcome type -> outcomes that found no
answer), ``:join:<user id>`` (one user's join state, expiring after the window),
``:arm:<experiment>:<variant>`` (counters; ``first_ms``, ``last_ms``; ``sum_nn``,
``sum_xx``, ``sum_nx``: sums over users of impressions squared, clicked impressions
squared and their product), ``:users:...`` and ``:clickers:...`` (redacted user ids),
``:peruser:...`` (each user's impressions and clicked impressions, :func:`arm_user_key`).
A user's counts and the arm's sums move in the same script, so the sums stay exact under
redelivery like every other counter.
"""

from __future__ import annotations

from typing import Any

import orjson
from rtrec.streaming.state_layout import hash_pairs
from rtrec.streaming.state_lua import OFFSETS_LUA

from rtrec.config import Settings

_COMMIT = (
    """
local offsets, lease, arms, unattributed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('GET', lease) ~= ARGV[1] then return {0} end
"""
    + OFFSETS_LUA
    + """local ttl = ARGV[i]; i = i + 1
local nu = tonumber(ARGV[i]); i = i + 1
local k = 5
for _ = 1, nu do redis.call('SET', KEYS[k], ARGV[i], 'EX', ttl); k = k + 1; i = i + 1 end
local nt = tonumber(ARGV[i]); i = i + 1
for _ = 1, nt do redis.call('HINCRBY', unattributed, ARGV[i], ARGV[i + 1]); i = i + 2 end
local out = {1}
local na = tonumber(ARGV[i]); i = i + 1
for _ = 1, na do
  local arm, users, clickers, per_user = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  k = k + 4
  local member, first_ms, last_ms = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local old_first = redis.call('HGET', arm, 'first_ms')
  if not old_first or tonumber(old_first) > first_ms then
    redis.call('HSET', arm, 'first_ms', first_ms)
  end
  local old_last = tonumber(redis.call('HGET', arm, 'last_ms') or '-1')
  if last_ms > old_last then redis.call('HSET', arm, 'last_ms', last_ms) end
  local score = tonumber(redis.call('ZSCORE', arms, member) or '-1')
  if last_ms > score then redis.call('ZADD', arms, last_ms, member) end
  local nc = tonumber(ARGV[i]); i = i + 1
  for _ = 1, nc do
    if ARGV[i] == 'rr_sum' then redis.call('HINCRBYFLOAT', arm, ARGV[i], ARGV[i + 1])
    else redis.call('HINCRBY', arm, ARGV[i], ARGV[i + 1]) end
    i = i + 2
  end
  local nus = tonumber(ARGV[i]); i = i + 1
  for _ = 1, nus do redis.call('SADD', users, ARGV[i]); i = i + 1 end
  local ncl = tonumber(ARGV[i]); i = i + 1
  for _ = 1, ncl do redis.call('SADD', clickers, ARGV[i]); i = i + 1 end
  local npu = tonumber(ARGV[i]); i = i + 1
  local snn, sxx, snx = 0, 0, 0
  for _ = 1, npu do
    local u, dn, dx = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    i = i + 3
    local n = tonumber(redis.call('HINCRBY', per_user, u .. '|n', dn))
    local x = tonumber(redis.call('HINCRBY', per_user, u .. '|x', dx))
    local n0, x0 = n - dn, x - dx
    snn = snn + n * n - n0 * n0
    sxx = sxx + x * x - x0 * x0
    snx = snx + n * x - n0 * x0
  end
  if npu > 0 then
    redis.call('HINCRBY', arm, 'sum_nn', string.format('%.0f', snn))
    redis.call('HINCRBY', arm, 'sum_xx', string.format('%.0f', sxx))
    redis.call('HINCRBY', arm, 'sum_nx', string.format('%.0f', snx))
  end
  out[#out + 1] = redis.call('HGETALL', arm)
  out[#out + 1] = redis.call('SCARD', users)
  out[#out + 1] = redis.call('SCARD', clickers)
end
return out
"""
)

_LEASE = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1
elseif held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def experiment_keys(settings: Settings) -> dict[str, str]:
    """The fixed keys of one consumer group's experiment state (one place spells them:
    the processor writes them, the readout reads them)."""
    prefix = f"{{rtrec:exp:{settings.kafka.consumer_group}}}"
    return {
        "prefix": prefix,
        "offsets": f"{prefix}:offsets",
        "lease": f"{prefix}:lease",
        "arms": f"{prefix}:arms",
        "unattributed": f"{prefix}:unattributed",
    }


def arm_keys(prefix: str, experiment: str, variant: str) -> tuple[str, str, str]:
    """(counters, exposed users, clicking users) of one arm."""
    tail = f"{experiment}:{variant}"
    return f"{prefix}:arm:{tail}", f"{prefix}:users:{tail}", f"{prefix}:clickers:{tail}"


def arm_user_key(prefix: str, experiment: str, variant: str) -> str:
    """One arm's per-user counts: ``<redacted user>|n`` (impressions) and ``|x`` (clicked
    impressions); the commit keeps the arm's ``sum_nn``, ``sum_xx`` and ``sum_nx`` over
    them, which is all the readout's per-user variance needs."""
    return f"{prefix}:peruser:{experiment}:{variant}"


def arm_row(flat: dict[Any, Any] | list[Any], users: int, clickers: int) -> dict[str, Any]:
    """An arm's counters as numbers (``HGETALL``'s strings or bytes, as a dict or the flat
    field/value list a script or a cluster transaction answers), with its user counts."""
    row: dict[str, Any] = {"users": int(users), "clicking_users": int(clickers)}
    for name, value in hash_pairs(flat).items():
        key = name.decode() if isinstance(name, bytes) else str(name)
        text = value.decode() if isinstance(value, bytes) else str(value)
        row[key] = float(text) if key == "rr_sum" else int(text)
    return row


class ExperimentState:
    """Applied offsets, join states, lease and arm aggregates in Redis."""

    def __init__(self, settings: Settings, client: Any, token: str) -> None:
        self.client = client
        self.token = token
        keys = experiment_keys(settings)
        self.prefix = keys["prefix"]
        self.offsets_key, self.lease_key = keys["offsets"], keys["lease"]
        self.arms_key, self.unattributed_key = keys["arms"], keys["unattributed"]
        self._commit = client.register_script(_COMMIT)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)

    def hold_lease(self, ttl_ms: int) -> bool:
        """Take or renew the lease (True while this member holds it)."""
        return bool(self._lease(keys=[self.lease_key], args=[self.token, ttl_ms]))

    def release_lease(self) -> None:
        self._release(keys=[self.lease_key], args=[self.token])

    def applied(self) -> dict[tuple[str, int], int]:
        """Applied offset per (topic, partition)."""
        return _offsets(self.client.hgetall(self.offsets_key))

    def read(self, users: list[str]) -> tuple[dict[tuple[str, int], int], list[Any]]:
        """Applied offsets and the stored join states of ``users``, one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.offsets_key)
        if users:
            # not pipe.mget: a cluster pipeline refuses it by name; one slot's MGET is fine
            pipe.execute_command("MGET", *[self._join_key(u) for u in users])
        res = pipe.execute()
        return _offsets(res[0]), (res[1] if users else [])

    def reset_partition(self, topic: str, partition: int) -> None:
        """Forget a partition's applied offset (its topic was created again, from 0)."""
        self.client.hdel(self.offsets_key, f"{topic}/{partition}")

    def _join_key(self, user: str) -> str:
        return f"{self.prefix}:join:{user}"

    def commit(
        self,
        tally: Any,
        *,
        applied: dict[tuple[str, int], int],
        states: dict[str, bytes],
        ttl_s: int,
    ) -> list[tuple[str, str, dict[str, Any]]] | None:
        """Write a batch's tally atomically; returns each touched arm's new totals as
        (experiment, variant, row), or None when fenced (nothing written)."""
        keys = [self.offsets_key, self.lease_key, self.arms_key, self.unattributed_key]
        args: list[Any] = [self.token, len(tally.high)]
        for (topic, part), high in tally.high.items():
            seen = applied.get((topic, part), -1)
            args += [f"{topic}/{part}", seen, max(high, seen)]
        args += [ttl_s, len(states)]
        for user, raw in states.items():
            keys.append(self._join_key(user))
            args.append(raw)
        moved = {t: n for t, n in tally.unattributed.items() if n}
        args.append(len(moved))
        for name, n in moved.items():
            args += [name, n]
        arms = list(tally.arms.items())
        args.append(len(arms))
        for (experiment, variant), delta in arms:
            keys += [*arm_keys(self.prefix, experiment, variant)]
            keys.append(arm_user_key(self.prefix, experiment, variant))
            member = orjson.dumps([experiment, variant]).decode()
            args += [member, delta.first_ms, delta.last_ms, len(delta.counts)]
            for name, n in delta.counts.items():
                args += [name, repr(float(n)) if name == "rr_sum" else int(n)]
            args += [len(delta.users), *delta.users, len(delta.clickers), *delta.clickers]
            args.append(len(delta.per_user))
            for user, (n, x) in delta.per_user.items():
                args += [user, n, x]
        out = self._commit(keys=keys, args=args)
        if not out or int(out[0]) != 1:
            return None
        rows = []
        for n, ((experiment, variant), _) in enumerate(arms):
            flat, users, clickers = out[1 + 3 * n : 4 + 3 * n]
            rows.append((experiment, variant, arm_row(flat, users, clickers)))
        return rows


def _offsets(raw: dict[Any, Any]) -> dict[tuple[str, int], int]:
    """``topic/partition`` -> offset fields as {(topic, partition): offset}."""
    out = {}
    for field, value in raw.items():
        text = field.decode() if isinstance(field, bytes) else str(field)
        topic, _, part = text.rpartition("/")
        out[(topic, int(part))] = int(value)
    return out
