"""The Redis-backed rate limit shared by serving replicas, against the stack's real Redis.

Two limiters, each with its own Redis client, stand in for two replicas: together they
admit no more than the limit in a window. A limiter whose Redis is gone (a port nothing
listens on) still answers every request, per replica, and says so.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from rtrec.serving.degradation import Degradations
from rtrec.serving.ratelimit import DEGRADED, WINDOW_MS, RedisQuota, SharedRateLimiter

from rtrec.config import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


async def _admit(lim: SharedRateLimiter, bucket: str) -> bool:
    verdict = lim.allow(bucket)
    return await lim.refill(bucket) if verdict is None else verdict


async def _window_aligned_run(replicas: list[SharedRateLimiter], bucket: str, n: int) -> int:
    """``n`` requests spread over the replicas as concurrent tasks; returns the admitted
    count. Starts just after a window boundary, so the run fits in one window."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(replicas[0].source.url)  # type: ignore[attr-defined]
    sec, usec = await client.time()
    await client.aclose()
    now_ms = sec * 1000 + usec // 1000
    await asyncio.sleep((WINDOW_MS - now_ms % WINDOW_MS) / 1000 + 0.005)
    tasks = [_admit(replicas[i % len(replicas)], bucket) for i in range(n)]
    return sum(await asyncio.gather(*tasks))


def test_two_replicas_share_one_limit(stack: Settings) -> None:
    limit = 200
    replicas = [
        SharedRateLimiter(limit, RedisQuota(stack.redis.url), Degradations()) for _ in range(2)
    ]
    bucket = f"test-{uuid.uuid4().hex}"

    admitted = asyncio.run(_window_aligned_run(replicas, bucket, 3 * limit))
    for r in replicas:
        assert r.degradations.status()["counts"] == {}  # Redis answered every lease
    assert admitted <= limit
    # Unused leased quota lapses: at most one chunk per replica short of the limit.
    assert admitted >= limit - 2 * replicas[0].chunk

    # Alone, each would have admitted the full limit: the sharing is what holds it.
    alone = SharedRateLimiter(limit, RedisQuota(stack.redis.url), Degradations())
    assert asyncio.run(_window_aligned_run([alone], f"{bucket}-alone", 2 * limit)) == limit


def test_an_unreachable_redis_limits_per_replica_and_says_so(stack: Settings) -> None:
    gone = RedisQuota(f"redis://127.0.0.1:{free_port()}/0")
    lim = SharedRateLimiter(5, gone, Degradations())

    async def run() -> list[bool]:
        return [await _admit(lim, "k") for _ in range(8)]

    got = asyncio.run(run())
    assert got[:5] == [True] * 5 and not all(got)  # limited locally, never an error
    status = lim.degradations.status()
    assert status["counts"] == {DEGRADED: 8} and status["last"]["reason"] == DEGRADED
