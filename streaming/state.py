"""The processor's durable state in Redis, committed with the offsets it reflects.

A batch commit (atomic per slot, one round trip for both) checks that the batch's
partitions still have the applied offsets this processor read (a fence: a member that
lost its partitions to a rebalance cannot overwrite the new owner's work), then writes
the user states and applied offsets in the group slot, and the item hour buckets, the
trending scores and the item side's applied offsets in the item slot, returning each
touched item's window counts and score for the feature write. Redelivered events (offset
at or below a slot's applied offset) are never folded into that slot twice. The key
layout, and why each slot on its own keeps these guarantees on Redis Cluster:
``rtrec.streaming.state_layout`` and ``rtrec.streaming.state_lua``.

The offsets only mean something for one incarnation of the topic's log, so each slot
also records which one: the topic id the broker reports (its log marker). Commits are
fenced on it as well. A topic that was deleted and created again (the embedded Tansu
broker keeps nothing across a restart) has a new id and offsets from 0:
:meth:`RedisState.reset_log` forgets the old offsets while the aggregates carry on. A
marker that vanished means Redis lost the state (a restart without persistence, a flush):
the commit answers "lost" and the processor rebuilds from the start of the retained log.

The offline event log's progress lives here too (:meth:`RedisState.record_offline`): per
partition the highest offset written (what a new owner skips) and a **watermark** — the
highest offset the log covers (written, or rejected to the dead-letter topic) and the
newest event time written — which readers such as the drift monitor use to know whether
the log holds what was published (:func:`rtrec.streaming.coverage.offline_coverage`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtrec.streaming.state_layout import (
    ScriptCall,
    StateKeys,
    items_call,
    record_call,
    reset_calls,
    state_keys,
    users_call,
)
from rtrec.streaming.state_lua import SCRIPTS

from rtrec.config import Settings

if TYPE_CHECKING:
    from rtrec.streaming.aggregates import ItemDelta

logger = logging.getLogger(__name__)

FENCED = "fenced"
LOST = "lost"

__all__ = ["FENCED", "LOST", "RedisState", "StateKeys", "state_keys"]


@dataclass
class _Pending:
    conn: Any
    """The connection both calls were sent on (None: a cluster client ran them already)."""
    calls: list[ScriptCall]
    names: list[str]
    offsets: dict[int, int]
    answers: list[Any] = field(default_factory=list)


class RedisState:
    """Applied offsets, user states and item aggregates of one consumer group."""

    def __init__(
        self, settings: Settings, client: Any, window_hours: list[int], *, namespace: str = ""
    ) -> None:
        self.client = client
        self.keys = StateKeys.of(settings, namespace)
        """``namespace`` prefixes every key the state writes: the backfill runs the same
        commit on scratch keys, beside (not over) a live processor's state."""
        k = self.keys
        self.offsets_key, self.offline_key = k.offsets, k.offline
        self.watermark_key = k.watermark
        """The offline log's watermark (see :meth:`record_offline`)."""
        self.log_key = k.log
        """The topic incarnation (broker topic id) the offsets above belong to."""
        self.trending_key = k.trending
        self.window_hours = sorted(window_hours)
        self._scripts = {src: client.register_script(src) for src in SCRIPTS.values()}
        for script in self._scripts.values():  # loaded now: the first commit need not retry
            script.sha = client.script_load(script.script)
        self._pooled = hasattr(client, "connection_pool")
        """A plain client: the commit is sent on one connection and read later. A cluster
        client routes each call to its slot's node itself, and runs them in commit_send."""
        self.committed: dict[int, int] = {}
        """Per partition, the highest offset a batch of this member committed (valid or
        dead-lettered events alike) since :meth:`forget_committed`: what the offline
        buffer covers once it holds every valid event of those batches."""

    def _run(self, call: ScriptCall) -> Any:
        return self._scripts[call.script](keys=call.keys, args=call.args)

    def read(self, users: list[str]) -> tuple[dict[int, int], dict[int, int], list[bytes | None]]:
        """Applied offsets per partition of the group slot and of the item slot, and the
        stored states of ``users``, one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.offsets_key)
        pipe.hgetall(self.keys.item_offsets)
        if users:
            # not pipe.mget: a cluster pipeline refuses it by name; one slot's MGET is fine
            pipe.execute_command("MGET", *[self.keys.user_prefix + u for u in users])
        res = pipe.execute()
        applied = {int(p): int(o) for p, o in res[0].items()}
        item_applied = {int(p): int(o) for p, o in res[1].items()}
        return applied, item_applied, (res[2] if users else [])

    def adopt_log(self, log_id: str) -> str:
        """Record ``log_id`` as the log the offsets belong to in each slot that records
        none; returns the recorded one (compare it with ``log_id`` to see a recreated
        topic): the group slot's, or the item slot's where only that one still names an
        older log (a reset that stopped between the slots finishes on the next look)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.log_key, log_id, nx=True)
        pipe.get(self.log_key)
        pipe.set(self.keys.item_log, log_id, nx=True)
        pipe.get(self.keys.item_log)
        res = pipe.execute()
        stored = [v.decode() if isinstance(v, bytes) else str(v) for v in (res[1], res[3])]
        return stored[0] if stored[0] != log_id else stored[1]

    def reset_log(self, old: str, new: str) -> bool:
        """The topic was recreated (``old`` -> ``new``): its offsets start again at 0, so
        forget the applied and logged offsets of ``old`` in both slots (user states, item
        buckets and trending stay). False when another member already did it."""
        return any([bool(self._run(call)) for call in reset_calls(self.keys, old, new)])

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
        item_offsets: dict[int, tuple[int, int]] | None = None,
        log_id: str = "",
    ) -> _Pending:
        """Start the batch write; ``offsets``: partition -> (applied read, new) of the
        group slot, ``item_offsets`` the same for the item slot (default ``offsets``);
        ``log_id``: the topic incarnation the offsets belong to ("" checks nothing).

        Only sends: the caller encodes its feature rows while Redis runs the scripts,
        then calls :meth:`commit_receive`.
        """
        item_offsets = offsets if item_offsets is None else item_offsets
        first = users_call(self.keys, offsets, states, log_id)
        second = items_call(self.keys, item_offsets, items, batch_hour, self.window_hours, log_id)
        calls = [first, second] if first is not None else [second]
        done = {p: new for p, (_, new) in offsets.items()}
        if not self._pooled:
            return _Pending(None, calls, list(items), done, [self._run(c) for c in calls])
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            for c in calls:
                sha = self._scripts[c.script].sha
                conn.send_command("EVALSHA", sha, len(c.keys), *c.keys, *c.args)
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        return _Pending(conn, calls, list(items), done)

    def _answers(self, pending: _Pending) -> list[Any]:
        """Read every call's answer off the connection; a call Redis did not know the
        script of (it restarted and lost its cache) runs again through the client."""
        from redis.exceptions import NoScriptError

        if pending.conn is None:
            return pending.answers
        pool = self.client.connection_pool
        answers: list[Any] = []
        try:
            for _ in pending.calls:
                try:
                    answers.append(pending.conn.read_response())
                except NoScriptError:
                    answers.append(None)
        except BaseException:
            pending.conn.disconnect()
            raise
        finally:
            pool.release(pending.conn)
        return [
            self._run(c) if a is None else a for c, a in zip(pending.calls, answers, strict=True)
        ]

    def commit_receive(self, pending: _Pending) -> dict[str, tuple[list[int], float]] | str:
        """The scripts' answer: item -> (window counts, trending score); or, where a slot
        wrote nothing, :data:`FENCED` (another member applied these partitions, or the
        topic's log changed) or :data:`LOST` (a log marker is gone: Redis lost the state).
        The other slot may have written its part: the redelivered batch skips it there."""
        answers = self._answers(pending)
        codes = [int(a[0]) if a else 0 for a in answers]
        if min(codes) <= 0:
            return LOST if min(codes) < 0 else FENCED
        for p, off in pending.offsets.items():
            if off > self.committed.get(p, -1):
                self.committed[p] = off
        out = answers[-1]
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
        if not written and not through:
            return True
        now_ms = int(time.time() * 1000)
        return bool(self._run(record_call(self.keys, written, through, log_id, now_ms)))
