"""The stream processor's Redis scripts (``rtrec.streaming.state`` runs them).

Every key a script touches is passed in ``KEYS``; ARGV holds values and hash fields only.
The keys of one call carry one hash tag, so each call touches one Redis Cluster slot:

- the **group slot** ``{[namespace]rtrec:state:<group>:<topic>}``: the applied offsets,
  the log marker, the offline progress and watermark, and the user states;
- the **item slot** ``{rtrec:item}``: the item hour buckets, the trending set, the item
  clock, and the item side's own applied offsets and log marker.

A batch commit is one call per slot. Each slot keeps its own applied offsets and fences
on them, so each slot on its own applies every event exactly once: a call writes the
events in (read-from, read-to] of each partition only if that slot's stored offset is
still the read-from the processor read, and advances it in the same atomic call. A crash
between the two calls leaves one slot ahead; the redelivered batch folds into each slot
only what lies above that slot's offset (``rtrec.streaming.batch``), so nothing is
counted twice or lost. A member fenced off in either slot re-reads the batch.
"""

from __future__ import annotations

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
at the next argument. Expects ``offsets`` (the slot's offsets hash key) to be set."""

_LOG_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', log_key) ~= ARGV[1] then
  if redis.call('EXISTS', log_key) == 0 then return {-1} end
  return {0}
end
"""
"""ARGV[1]: the topic incarnation the offsets belong to ('' checks nothing). {-1}: the
marker is gone (Redis lost this slot's state); {0}: the state belongs to another log."""

USERS_COMMIT = (
    "\nlocal offsets, log_key = KEYS[1], KEYS[2]"
    + _LOG_FENCE
    + OFFSETS_LUA
    + """for k = 3, #KEYS do redis.call('SET', KEYS[k], ARGV[i]); i = i + 1 end
return {1}
"""
)
"""Group slot: KEYS offsets, log marker, then one key per user state; ARGV log id, the
offset triples, then the users' states in KEYS order."""

ITEMS_COMMIT = (
    "\nlocal offsets, log_key, trending, clock_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]"
    + _LOG_FENCE
    + OFFSETS_LUA
    + """local clock = tonumber(redis.call('GET', clock_key) or '0')
local batch_hour = tonumber(ARGV[i]); local ttl = ARGV[i + 1]; i = i + 2
if batch_hour > clock then clock = batch_hour; redis.call('SET', clock_key, clock) end
local nw = tonumber(ARGV[i]); i = i + 1
local spans = {}
for w = 1, nw do spans[w] = tonumber(ARGV[i]); i = i + 1 end
local longest = spans[nw]
local out = {1}
for k = 5, #KEYS do
  local key = KEYS[k]
  local member, incr, nb = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
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
"""Item slot: KEYS item offsets, item log marker, trending set, clock, then one hour-bucket
hash per item; ARGV log id, the offset triples, batch hour, TTL, the window spans, then
per item (in KEYS order) its trending member, weight and (hour, count) pairs. Returns
{1, counts and score per item} after the increments."""

RESET_LOG = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', unpack(KEYS, 2))
return 1
"""
"""Either slot: KEYS its log marker, then the keys to forget (offsets, progress) when the
marker still names the old log ARGV[1]; it then names ARGV[2]."""

RECORD_OFFLINE = """
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
"""Group slot: KEYS offline offsets, watermark, log marker (``'o:' .. p`` builds a hash
field, not a key)."""

SCRIPTS = {
    "users_commit": USERS_COMMIT,
    "items_commit": ITEMS_COMMIT,
    "reset_log": RESET_LOG,
    "record_offline": RECORD_OFFLINE,
}
"""Every script of the processor's state, by name (the cluster-safety tests walk them)."""
