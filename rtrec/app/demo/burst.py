"""The demo's burst of HTTP recommendations, with clicks posted back as feedback."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from rtrec.config import Settings

if TYPE_CHECKING:
    import httpx

CLIENTS = 8
"""Concurrent keep-alive clients (the report says how many)."""


@dataclass(frozen=True)
class BurstResult:
    """The burst step's output, plus what the report and the drift check use."""

    figures: dict[str, Any]
    """Requests, statuses, latency percentiles, fallbacks, clicks posted."""
    latencies: list[float]
    """Each request's latency (ms) as the client saw it."""
    clicked_ts: list[int]
    """Event time of each click posted."""


@dataclass(frozen=True)
class _Outcome:
    ms: float
    status: int
    fallback: bool
    clicked: bool
    ts: int
    replica: str | None = None
    """The replica that answered (``X-Rtrec-Replica``; None without a load balancer)."""


def http_burst(
    settings: Settings,
    users: list[str],
    *,
    requests: int,
    feedback_share: float,
    data_now_ms: int,
) -> BurstResult:
    """Concurrent keep-alive clients; clicks on some recommendations go back as feedback.

    Clicks are stamped on the data's clock, not the wall clock: ``data_now_ms`` (the
    newest replayed event's time) plus the time since the burst began. The replayed
    stream lives in its own time (a synthetic 2025, a MovieLens decade); wall-clock clicks
    would land years after every window the drift monitor judges, and its outcome rate
    would miss them all. On the data's clock they fall in the current window with the
    events they answer.
    """
    import httpx

    base = f"http://{settings.serving.host}:{settings.serving.port}"
    keys = [k.get_secret_value() for k in settings.serving.api_keys]
    headers = {"X-API-Key": keys[0]} if keys else {}
    rng = random.Random(settings.seed)
    began = time.perf_counter()

    def clock() -> int:
        return data_now_ms + int((time.perf_counter() - began) * 1000)

    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        one = partial(_one_request, client, rng=rng, feedback_share=feedback_share, clock=clock)
        with ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(one, (users[i % len(users)] for i in range(requests))))
    return _tally(requests, outcomes)


def _one_request(
    client: httpx.Client,
    user: str,
    *,
    rng: random.Random,
    feedback_share: float,
    clock: Callable[[], int],
) -> _Outcome:
    """One recommendation; with probability ``feedback_share`` a click on its first item
    posted back as feedback."""
    t = time.perf_counter()
    r = client.post("/recommend", json={"user_id": user, "k": 10})
    ms = (time.perf_counter() - t) * 1000
    replica = r.headers.get("x-rtrec-replica")
    if r.status_code != 200:
        return _Outcome(ms, r.status_code, False, False, 0, replica)
    body = r.json()
    if not body["items"] or rng.random() >= feedback_share:
        return _Outcome(ms, r.status_code, body["fallback"], False, 0, replica)
    ts = clock()
    event = {
        "user_id": user,
        "item_id": body["items"][0]["item_id"],
        "event_type": "click",
        "ts": ts,
        "context": {"source": "rtrec-demo"},
    }
    clicked = client.post("/feedback", json={"events": [event]}).status_code == 202
    return _Outcome(ms, r.status_code, body["fallback"], clicked, ts, replica)


def _tally(requests: int, outcomes: list[_Outcome]) -> BurstResult:
    """Status counts, latency percentiles, fallbacks and clicks over every request."""
    statuses: dict[int, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    latencies = [o.ms for o in outcomes]
    lat = np.array(latencies)
    figures = {
        "requests": requests,
        "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "fallbacks": sum(int(o.fallback) for o in outcomes),
        "clicks_posted": sum(int(o.clicked) for o in outcomes),
    }
    replicas = Counter(o.replica for o in outcomes if o.replica is not None)
    if replicas:  # behind a load balancer: which replica answered how many
        figures["replicas"] = dict(sorted(replicas.items()))
    return BurstResult(figures, latencies, [o.ts for o in outcomes if o.clicked])
