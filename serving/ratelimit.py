"""A per-key rate limit shared by every serving replica, kept in Redis.

``serving.rate_limit_backend: redis`` (the default ``memory`` keeps the per-process
:class:`rtrec.serving.auth.RateLimiter`: N replicas then allow N times the limit).

The limit is a fixed window of one second per bucket (an API key's name, or a client
address without keys), counted in Redis under ``{rtrec:ratelimit:<bucket>}``: at most
``max(rate, 1)`` admissions per window across all replicas. A fixed window, like the
memory limiter's bucket of one second's worth, lets a client burst; across a window
boundary it can get up to twice the limit within one second.

Why quota is leased in chunks: the limiter runs in the ASGI guard, on the event loop, for
every request. A Redis round trip per request would add its latency to each one, and a
synchronous call would stall every other request while Redis is slow. Instead each
replica takes a chunk of the window's quota (:data:`CHUNK_SHARE` of the limit) in one
atomic script and admits locally from it; only the request that finds its chunk used up
awaits the next one, with the asyncio client, so the loop keeps serving the others (and
requests of the same bucket arriving meanwhile wait on that one lease, not their own).
Redis never grants more than the limit per window, so the combined admissions never pass
it; a chunk a replica leased and did not use lapses with its window (the others may be
refused a little early: at most one chunk per replica per window).

When Redis cannot be reached (an error or no answer within :data:`LEASE_TIMEOUT_S`) the
limiter **fails open to the per-replica limit**: it decides with an in-memory
:class:`RateLimiter` of the same rate, records each such decision as a degradation
(counted in ``rtrec_serving_degradations_total``, in ``/status``, logged at WARNING, see
``rtrec.serving.degradation``) and asks Redis again after :data:`RETRY_S`. A request is
never answered 500 because the limit's store is away; the cost is that N replicas allow
up to N times the limit meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rtrec.serving.auth import RateLimiter
from rtrec.serving.degradation import Degradations

logger = logging.getLogger(__name__)

WINDOW_MS = 1000
"""The window the limit counts in: the rate is per second."""
CHUNK_SHARE = 0.05
"""Share of a window's quota one lease takes: 20 leases a window per busy bucket at most,
and at most this share left unused per replica per window."""
LEASE_TIMEOUT_S = 0.25
"""Longest a request waits for a lease before it is decided without Redis (only requests
that find their bucket's lease used up wait at all; the first lease of a process also
connects and loads the script)."""
RETRY_S = 1.0
"""After Redis failed, how long the limiter decides without it before asking again."""
DEGRADED = "rate limit per replica (Redis unreachable)"

LEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local span = tonumber(ARGV[3])
local window = math.floor(now / span)
local used = 0
if tonumber(redis.call('HGET', KEYS[1], 'w') or '-1') == window then
  used = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
end
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant < 0 then grant = 0 end
if grant > 0 then
  redis.call('HSET', KEYS[1], 'w', window, 'n', used + grant)
  redis.call('PEXPIRE', KEYS[1], 2 * span)
end
return {grant, span - now % span}
"""
"""KEYS[1] the bucket's counter; ARGV wanted, limit, window ms. Returns {granted, ms left
in the window}. Redis's own clock names the window, so replicas' clocks need not agree."""


class QuotaSource(Protocol):
    """Where leases come from (Redis; a stand-in in unit tests)."""

    async def take(self, bucket: str, want: int, limit: int) -> tuple[int, int]:
        """Up to ``want`` admissions of the current window: (granted, ms left in it)."""
        ...


class RedisQuota:
    """Leases from Redis with the asyncio client (one per event loop). ``connect``
    (options -> client) opens it: by default ``redis.asyncio.Redis.from_url(url)``; the
    service passes :func:`rtrec.redis_clients.async_redis_client`, a cluster client on a
    Redis Cluster (the bucket's key is hash-tagged: one slot, one node per script call)."""

    def __init__(self, url: str, *, connect: Callable[..., Any] | None = None) -> None:
        self.url = url
        self._connect = connect
        self._clients: dict[int, tuple[Any, Any]] = {}

    def _open(self, **options: Any) -> Any:
        if self._connect is not None:
            return self._connect(**options)
        from redis.asyncio import Redis

        return Redis.from_url(self.url, **options)

    def _for_loop(self) -> tuple[Any, Any]:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        key = id(asyncio.get_running_loop())
        if key not in self._clients:
            client = self._open(
                socket_timeout=LEASE_TIMEOUT_S,
                socket_connect_timeout=LEASE_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
            self._clients[key] = (client, client.register_script(LEASE_LUA))
        return self._clients[key]

    async def take(self, bucket: str, want: int, limit: int) -> tuple[int, int]:
        _, script = self._for_loop()
        key = "{rtrec:ratelimit:" + bucket + "}"
        granted, left_ms = await script(keys=[key], args=[want, limit, WINDOW_MS])
        return int(granted), int(left_ms)


@dataclass
class _Lease:
    left: int
    until: float
    """Monotonic time the window (and the unused part of the lease) ends."""
    exhausted: bool
    """Redis granted nothing: the window's quota is spent, refuse until it ends."""


class SharedRateLimiter:
    """``rate`` admissions per second per bucket across every replica (module docstring).

    :meth:`allow` answers from the local lease at once (True/False), or None when a lease
    must be fetched: the caller then awaits :meth:`refill`."""

    def __init__(
        self,
        rate: float,
        source: QuotaSource,
        degradations: Degradations,
        *,
        metric: Any = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.limit = max(int(rate), 1)
        self.chunk = max(int(self.limit * CHUNK_SHARE), 1)
        self.source = source
        self.degradations = degradations
        if metric is None:
            from rtrec.serving.metrics import DEGRADATIONS

            metric = DEGRADATIONS
        self.metric = metric
        self._clock = clock
        self._fallback = RateLimiter(rate, clock)
        self._leases: dict[str, _Lease] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._down_until = 0.0
        self._lock = threading.Lock()

    def allow(self, bucket: str) -> bool | None:
        now = self._clock()
        if now < self._down_until:
            return self._decide_locally(bucket)
        with self._lock:
            lease = self._leases.get(bucket)
            if lease is None or now >= lease.until:
                return None
            if lease.left > 0:
                lease.left -= 1
                return True
            return False if lease.exhausted else None

    async def refill(self, bucket: str) -> bool:
        """Fetch a lease (one per bucket at a time; other requests of the bucket wait on
        it), then decide. Never raises for Redis's sake: it decides locally instead.

        A lease the waiters ahead used up means another: each one either grants quota
        (progress), answers that the window is spent (refused) or fails (decided
        locally), so a burst waits at most for the leases its own admissions take."""
        while True:
            task = self._inflight.get(bucket)
            if task is None:
                task = asyncio.ensure_future(self._lease(bucket))
                self._inflight[bucket] = task
                task.add_done_callback(lambda _t, b=bucket: self._inflight.pop(b, None))
            await asyncio.shield(task)  # a client that goes away must not cancel it
            verdict = self.allow(bucket)
            if verdict is not None:
                return verdict

    async def _lease(self, bucket: str) -> None:
        try:
            granted, left_ms = await asyncio.wait_for(
                self.source.take(bucket, self.chunk, self.limit), LEASE_TIMEOUT_S
            )
        except (TimeoutError, OSError, ConnectionError, _redis_error()) as exc:
            if self._clock() >= self._down_until:
                logger.warning(
                    "rate limit store unreachable (%s: %s): limiting per replica for %g s",
                    type(exc).__name__,
                    exc,
                    RETRY_S,
                )
            self._down_until = self._clock() + RETRY_S
            return
        until = self._clock() + left_ms / 1000
        with self._lock:
            self._leases[bucket] = _Lease(granted, until, exhausted=granted == 0)

    def _decide_locally(self, bucket: str) -> bool:
        self.degradations.record(DEGRADED, "each replica limits alone", metric=self.metric)
        return self._fallback.allow(bucket)


def _redis_error() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError
