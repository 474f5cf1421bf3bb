"""API keys, token buckets, the ASGI guard and sticky A/B assignment."""

from __future__ import annotations

import pytest
from rtrec.serving import auth
from rtrec.serving.auth import ApiKeys, Guard, RateLimiter
from rtrec.serving.experiments import CHALLENGER, CHAMPION, experiment_id, variant_for
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_bursts_one_second_then_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(auth.time, "monotonic", clock)
    limiter = RateLimiter(10)
    assert [limiter.allow("a") for _ in range(12)] == [True] * 10 + [False] * 2
    assert limiter.allow("b")  # buckets are per key
    clock.now += 0.5
    assert sum(limiter.allow("a") for _ in range(10)) == 5
    clock.now += 100
    assert sum(limiter.allow("a") for _ in range(20)) == 10  # capped at one second's worth


def test_api_keys_accept_only_configured_keys() -> None:
    keys = ApiKeys(["alpha", "beta"])
    assert keys.enabled
    a, b = keys.check("alpha"), keys.check("beta")
    assert a and b and a.bucket != b.bucket  # buckets per key
    assert "alpha" not in a.bucket and "alpha" not in a.name  # and they do not reveal it
    for bad in (None, "", "alph", "alpha ", "gamma"):
        assert keys.check(bad) is None
    off = ApiKeys([])
    assert not off.enabled and off.check(None, "10.0.0.1").bucket == "client:10.0.0.1"


def _app(
    keys: list[str], rate: float, max_body: int = 100, body_timeout_s: float = 5.0
) -> TestClient:
    async def echo(request):
        return JSONResponse({"n": len(await request.body())})

    app = Starlette(
        routes=[Route("/x", echo, methods=["POST"]), Route("/open", echo, methods=["POST"])]
    )
    app.add_middleware(Guard, open_paths=frozenset({"/open"}), body_timeout_s=body_timeout_s)
    app.state.keys, app.state.limiter, app.state.max_body = (
        ApiKeys(keys),
        RateLimiter(rate),
        max_body,
    )
    return TestClient(app)


def test_guard_order_413_401_429() -> None:
    client = _app(["k"], rate=2)
    assert client.post("/x", content=b"x" * 101, headers={"X-API-Key": "k"}).status_code == 413
    assert client.post("/x", content=b"x" * 101).status_code == 413  # size before auth
    resp = client.post("/x", content=b"{}")
    assert resp.status_code == 401 and resp.json()["field"] == "X-API-Key"
    assert client.post("/x", content=b"{}", headers={"X-API-Key": "nope"}).status_code == 401
    codes = [
        client.post("/x", content=b"{}", headers={"X-API-Key": "k"}).status_code for _ in range(4)
    ]
    assert codes[:2] == [200, 200] and codes[-1] == 429
    assert client.post("/open", content=b"{}").status_code == 200  # open paths skip the guard


def test_guard_cuts_chunked_bodies_at_the_limit() -> None:
    client = _app([], rate=100, max_body=10)

    def chunks():
        yield b"a" * 8
        yield b"b" * 8

    resp = client.post("/x", content=chunks())  # no Content-Length: cut while reading
    assert resp.status_code == 413


def test_guard_answers_408_to_a_body_that_stalls() -> None:
    """A client that stops sending mid-body gets 408 after the body deadline, not a
    worker slot held until BentoML's own timeout answers 504."""
    import asyncio
    import time

    app = _app(["k"], rate=100, body_timeout_s=0.2).app
    parts = [{"type": "http.request", "body": b'{"user', "more_body": True}]
    sent: list[dict] = []

    async def receive() -> dict:
        if parts:
            return parts.pop(0)
        await asyncio.sleep(30)  # the rest of the body never comes
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "headers": [(b"x-api-key", b"k"), (b"transfer-encoding", b"chunked")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("testserver", 80),
        "client": ("testclient", 5000),
        "root_path": "",
    }
    t = time.perf_counter()
    asyncio.run(app(scope, receive, send))
    assert time.perf_counter() - t < 2
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408


def test_variant_is_sticky_and_follows_the_share() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    assert {variant_for(u, 0.0) for u in users[:100]} == {CHAMPION}
    first = [variant_for(u, 0.3) for u in users]
    assert first == [variant_for(u, 0.3) for u in users]  # same user, same arm
    share = first.count(CHALLENGER) / len(users)
    assert 0.28 < share < 0.32
    # Growing the share only moves champion users to the challenger, never back.
    grown = [variant_for(u, 0.5) for u in users]
    assert all(g == CHALLENGER for f, g in zip(first, grown, strict=True) if f == CHALLENGER)
    assert {variant_for(u, 1.0) for u in users[:100]} == {CHALLENGER}


def test_each_experiment_draws_its_arms_afresh() -> None:
    """Salted by the experiment, two experiments' challenger groups overlap as two
    independent draws would (half of each at a 50/50 split), not in the same users."""
    users = [f"user-{i}" for i in range(20_000)]
    first = [variant_for(u, 0.5, salt="7-vs-9") for u in users]
    second = [variant_for(u, 0.5, salt="7-vs-10") for u in users]
    assert first == [variant_for(u, 0.5, salt="7-vs-9") for u in users]
    agree = sum(a == b for a, b in zip(first, second, strict=True)) / len(users)
    assert 0.48 < agree < 0.52


def test_an_experiment_is_named_by_its_pair_of_versions_and_exists_only_with_a_split() -> None:
    from types import SimpleNamespace

    both = {CHAMPION: SimpleNamespace(version="7"), CHALLENGER: SimpleNamespace(version="9")}
    assert experiment_id(both, 0.5) == "7-vs-9"
    assert experiment_id(both, 0.0) is None  # no user sees the challenger: no experiment
    assert experiment_id({CHAMPION: both[CHAMPION]}, 0.5) is None
    local = {CHAMPION: SimpleNamespace(version=None), CHALLENGER: both[CHALLENGER]}
    assert experiment_id(local, 0.2) == "unversioned-vs-9"
