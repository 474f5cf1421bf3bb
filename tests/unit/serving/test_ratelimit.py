"""The shared rate limit's own logic: leases, their windows, fail-open, the guard's use.

Leases come from an in-memory quota source here, standing in for Redis's script with the
same rule (at most ``limit`` per window across everyone); the script itself runs against
the stack's real Redis in ``tests/integration/test_shared_rate_limit.py``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError
from rtrec.serving import ratelimit
from rtrec.serving.auth import ApiKeys, Guard, RateLimiter, limiter_for
from rtrec.serving.degradation import Degradations
from rtrec.serving.ratelimit import DEGRADED, SharedRateLimiter
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from rtrec.config import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Window:
    """Redis's rule in memory: per bucket at most ``limit`` per window of ``clock``."""

    def __init__(self, clock: Clock, span_s: float = 1.0) -> None:
        self.clock, self.span_s = clock, span_s
        self.used: dict[tuple[str, int], int] = {}
        self.calls = 0

    async def take(self, bucket: str, want: int, limit: int) -> tuple[int, int]:
        self.calls += 1
        window = int(self.clock() // self.span_s)
        used = self.used.get((bucket, window), 0)
        grant = max(min(want, limit - used), 0)
        self.used[(bucket, window)] = used + grant
        left_ms = int(((window + 1) * self.span_s - self.clock()) * 1000)
        return grant, left_ms


class Down:
    def __init__(self, exc: BaseException) -> None:
        self.exc, self.calls = exc, 0

    async def take(self, bucket: str, want: int, limit: int) -> tuple[int, int]:
        self.calls += 1
        raise self.exc


class Hangs:
    async def take(self, bucket: str, want: int, limit: int) -> tuple[int, int]:
        await asyncio.sleep(60)
        raise AssertionError("not reached")


REGISTRY = CollectorRegistry()
METRIC = Counter("t_degradations", "test", ["reason"], registry=REGISTRY)


def limiter(rate: float, source: object, clock: Clock) -> SharedRateLimiter:
    return SharedRateLimiter(rate, source, Degradations(), metric=METRIC, clock=clock)  # type: ignore[arg-type]


async def admit(lim: SharedRateLimiter, bucket: str) -> bool:
    """What the guard does with a limiter."""
    verdict = lim.allow(bucket)
    return await lim.refill(bucket) if verdict is None else verdict


def run_requests(lims: list[SharedRateLimiter], bucket: str, n: int) -> list[bool]:
    async def go() -> list[bool]:
        return [await admit(lims[i % len(lims)], bucket) for i in range(n)]

    return asyncio.run(go())


def test_two_replicas_together_admit_at_most_the_limit_per_window() -> None:
    clock = Clock()
    source = Window(clock)
    a, b = limiter(100, source, clock), limiter(100, source, clock)
    assert sum(run_requests([a, b], "k", 300)) == 100
    assert sum(run_requests([a, b], "other", 50)) == 50  # buckets are separate
    assert source.calls < 300 / 2, "leases should come in chunks, not per request"
    clock.now += 1.0  # the next window: quota again
    assert sum(run_requests([a, b], "k", 300)) == 100


def test_a_lease_lapses_with_its_window_and_refusals_need_no_redis() -> None:
    clock = Clock()
    source = Window(clock)
    a = limiter(10, source, clock)
    assert sum(run_requests([a], "k", 10)) == 10
    calls = source.calls
    assert a.allow("k") is None  # used up: ask Redis
    assert run_requests([a], "k", 1) == [False]
    assert [a.allow("k") for _ in range(5)] == [False] * 5  # spent window: no round trips
    assert source.calls == calls + 1
    clock.now += 1.0
    assert a.allow("k") is None  # the window ended, and the lease with it


def test_concurrent_requests_of_a_bucket_share_one_lease_request() -> None:
    clock = Clock()
    source = Window(clock)
    a = limiter(1000, source, clock)

    async def burst() -> list[bool]:
        return list(await asyncio.gather(*(admit(a, "k") for _ in range(a.chunk))))

    assert all(asyncio.run(burst()))
    assert source.calls == 1


@pytest.mark.parametrize("exc", [ConnectionError("refused"), OSError("unreachable")])
def test_redis_unreachable_fails_open_to_the_per_replica_limit(
    exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    down = Down(exc)
    a = limiter(5, down, clock)
    before = REGISTRY.get_sample_value("t_degradations_total", {"reason": DEGRADED}) or 0.0
    with caplog.at_level(logging.WARNING):
        got = run_requests([a], "k", 8)
    assert got == [True] * 5 + [False] * 3  # the local bucket's limit, not unlimited
    assert down.calls == 1  # then no retry within RETRY_S
    assert a.degradations.status()["counts"] == {DEGRADED: 8}
    assert REGISTRY.get_sample_value("t_degradations_total", {"reason": DEGRADED}) == before + 8
    assert any("rate limit store unreachable" in r.getMessage() for r in caplog.records)
    clock.now += ratelimit.RETRY_S
    assert a.allow("k") is None  # asks Redis again


def test_a_redis_that_does_not_answer_is_not_waited_for() -> None:
    clock = Clock()
    a = limiter(5, Hangs(), clock)

    async def timed() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ok = await admit(a, "k")
        return ok, loop.time() - start

    ok, took = asyncio.run(timed())
    assert ok and took < 5.0  # bounded by LEASE_TIMEOUT_S, not by the 60 s hang
    assert a.degradations.status()["counts"] == {DEGRADED: 1}


def test_the_backend_setting_picks_the_limiter() -> None:
    memory = Settings(work_dir="/nonexistent")
    assert memory.serving.rate_limit_backend == "memory"
    assert isinstance(limiter_for(memory, Degradations()), RateLimiter)
    shared = Settings.model_validate(
        {"work_dir": "/x", "serving": {"rate_limit_backend": "redis", "rate_limit_per_s": 40}}
    )
    lim = limiter_for(shared, Degradations())
    assert isinstance(lim, SharedRateLimiter) and lim.limit == 40
    with pytest.raises(ValidationError, match="rate_limit_backend"):
        Settings.model_validate({"work_dir": "/x", "serving": {"rate_limit_backend": "disk"}})


def test_the_guard_awaits_a_lease_and_answers_429_past_the_shared_limit() -> None:
    async def ok(request: object) -> JSONResponse:
        return JSONResponse({})

    clock = Clock()
    source = Window(clock)
    app = Starlette(routes=[Route("/x", ok, methods=["POST"])])
    app.add_middleware(Guard)
    app.state.keys, app.state.max_body = ApiKeys(["k"]), 100
    app.state.limiter = limiter(3, source, clock)
    client = TestClient(app)
    codes = [client.post("/x", headers={"X-API-Key": "k"}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
