"""The profile's stream processors and serving replicas behind nginx, really run.

The two stream processors, one consumer group, write the cluster's online features; nginx
spreads requests over both replicas, answers oversized requests itself and cuts slow
clients off; the Redis-shared rate limit holds across the replicas.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx

from rtrec.config import Settings
from rtrec.redis_clients import password
from tests.cluster.support import (
    BURST_KEY,
    CLIENT_TIMEOUT_S,
    LOAD_KEY,
    RATE,
    REPLICAS,
    recommend,
    url,
)


def test_two_stream_processors_share_the_stream_into_the_cluster(settings: Settings) -> None:
    """The profile's two processors, one consumer group: both apply events, and the
    online features in the cluster equal those computed straight from the events."""
    from rtrec.features import trending_items
    from rtrec.streaming import replay_dataset
    from rtrec.streaming.processor import offsets_key

    from rtrec.app.cluster_stream import applied, metrics_text, processors
    from rtrec.data import SyntheticConfig, generate
    from rtrec.redis_clients import redis_client
    from tests.stream_helpers import assert_online_equals, reference, wait_for

    data = generate(SyntheticConfig.small(seed=5, n_users=80, n_items=60, n_events=2000))
    replay_dataset(settings, data, progress=False)
    client = redis_client(settings)

    def done() -> bool:
        offsets = client.hgetall(offsets_key(settings))
        return sum(int(v) + 1 for v in offsets.values()) >= len(data.events)

    wait_for(done, 120, "the processors did not apply every event")
    counts = {name: applied(metrics_text(port) or "") for name, port in processors(settings)}
    print(f"events applied per processor: {counts}")
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
    assert_online_equals(settings, reference(data.events))  # Feast reads the cluster
    assert len(trending_items(settings, 5)) == 5


def test_nginx_spreads_requests_and_shields_the_replicas(settings: Settings) -> None:
    with httpx.Client(base_url=url(settings), timeout=10) as c:
        answers = [recommend(c, LOAD_KEY, f"u{n}") for n in range(20)]
        assert {r.status_code for r in answers} == {200}
        assert {r.headers["x-rtrec-replica"] for r in answers} == REPLICAS
        limit = settings.serving.max_body_bytes
        big = c.post("/recommend", content=b"x" * (limit + 1), headers={"X-API-Key": LOAD_KEY})
    assert big.status_code == 413, big.text
    assert big.json() == {"error": f"body exceeds {limit} bytes", "field": "body"}
    assert "x-rtrec-replica" not in big.headers  # nginx answered: no replica read a byte

    # A client that never finishes its headers, and one that stops sending its body.
    partial = {
        "headers": b"POST /recommend HTTP/1.1\r\nHost: x\r\n",
        "body": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    }
    for what, data in partial.items():
        with socket.create_connection((settings.serving.host, settings.serving.port)) as sock:
            sock.sendall(data)
            sock.settimeout(CLIENT_TIMEOUT_S + 10)
            started = time.monotonic()
            answer = sock.recv(1024)
            waited = time.monotonic() - started
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), (what, answer)
        assert CLIENT_TIMEOUT_S - 0.2 < waited < CLIENT_TIMEOUT_S + 5, (what, waited)


def test_the_rate_limit_holds_across_replicas(settings: Settings) -> None:
    """3x the limit at once, spread over both replicas: no more than the limit admitted,
    as for one process; with per-process limits two replicas would admit twice it."""
    import redis
    from rtrec.serving.ratelimit import WINDOW_MS

    host, port = settings.redis.host_port
    sec, usec = redis.Redis(host=host, port=port, password=password(settings)).time()
    now_ms = sec * 1000 + usec // 1000
    time.sleep((WINDOW_MS - now_ms % WINDOW_MS) / 1000 + 0.005)  # all in one window

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url(settings), timeout=10) as c:
            body = {"user_id": "u1", "k": 5}
            headers = {"X-API-Key": BURST_KEY}
            return await asyncio.gather(
                *[c.post("/recommend", json=body, headers=headers) for _ in range(3 * RATE)]
            )

    answers = asyncio.run(burst())
    statuses = [r.status_code for r in answers]
    admitted = statuses.count(200)
    print(f"admitted {admitted} of {len(answers)} (limit {RATE}/s), 429: {statuses.count(429)}")
    assert set(statuses) <= {200, 429}
    assert RATE - 2 <= admitted <= RATE  # at most one unused lease of 1 per replica
    assert {r.headers["x-rtrec-replica"] for r in answers} == REPLICAS
    assert {r.headers["x-rtrec-replica"] for r in answers if r.status_code == 429} == REPLICAS
