"""By-design degradations: counted by reason, shown in /status, logged at WARNING without
flooding (first occurrence, then at most once per interval with the count since)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from rtrec.serving import metrics
from rtrec.serving.degradation import Degradations
from rtrec.serving.fallback import PopularCache
from rtrec.serving.lifecycle import load_dir
from rtrec.serving.retrieval import Engine
from rtrec.serving.schemas import RecommendRequest, StatusResponse

from rtrec.config import load_settings
from rtrec.errors import Unavailable


def sample(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rtrec.serving.degradation" and r.levelno == logging.WARNING
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_logs_first_then_once_per_interval_with_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    deg = Degradations(log_every_s=30, clock=clock)
    before = sample("rtrec_serving_degradations_total", "test outage")
    with caplog.at_level(logging.WARNING, logger="rtrec.serving.degradation"):
        for _ in range(500):
            deg.record("test outage", "redis down", metric=metrics.DEGRADATIONS)
            clock.now += 0.01  # 5 s in all
        clock.now += 30
        deg.record("test outage", "redis still down", metric=metrics.DEGRADATIONS)
    lines = warnings_of(caplog)
    assert len(lines) == 2, lines
    assert lines[0] == "degraded: test outage: redis down (1 since the last report, 1 since start)"
    assert lines[1].endswith("(500 since the last report, 501 since start)")
    assert sample("rtrec_serving_degradations_total", "test outage") == before + 501
    status = deg.status()
    assert status["counts"] == {"test outage": 501}
    assert status["last"]["reason"] == "test outage"
    assert status["last"]["detail"] == "redis still down"
    assert status["last"]["at"].endswith("+00:00")


def test_reasons_are_rate_limited_independently(caplog: pytest.LogCaptureFixture) -> None:
    deg = Degradations(log_every_s=30, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="rtrec.serving.degradation"):
        for reason in ("a", "b", "a", "b"):
            deg.record(reason, metric=metrics.DEGRADATIONS)
        deg.record("c", metric=metrics.DEGRADATIONS, log=False)
    assert [m.split(" (")[0] for m in warnings_of(caplog)] == ["degraded: a", "degraded: b"]
    assert deg.status()["counts"] == {"a": 2, "b": 2, "c": 1}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rtrec.serving.synthetic import synthetic_bundle

    return synthetic_bundle(tmp_path_factory.mktemp("b") / "b", n_items=100, n_users=10, seed=2)


def test_engine_fallbacks_are_counted_and_in_status(
    tmp_path: Path, bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = {"now": False}

    def features(ids: list[str]) -> list[dict[str, Any]]:
        if down["now"]:
            raise Unavailable("online store unreachable: connection refused")
        return [{"recent_items": None} for _ in ids]

    engine = Engine(load_settings(work_dir=tmp_path), features=features)
    engine.swap("champion", load_dir(bundle_dir, "1", "test"))
    cold = sample("rtrec_serving_fallbacks_total", "cold user")
    with caplog.at_level(logging.WARNING, logger="rtrec.serving.degradation"):
        for n in range(3):
            out = engine.recommend(RecommendRequest(user_id=f"new-{n}", k=5))
            assert out["fallback"] is True
        down["now"] = True
        out = engine.recommend(RecommendRequest(user_id="u1", k=5))
    assert "feature store unavailable" in out["fallback_reason"]
    assert sample("rtrec_serving_fallbacks_total", "cold user") == cold + 3
    status = engine.degradations.status()
    assert status["counts"]["cold user"] == 3 and status["counts"]["feature store unavailable"] == 1
    assert status["last"]["reason"] == "feature store unavailable"
    assert "connection refused" in status["last"]["detail"]
    assert len(warnings_of(caplog)) == 2  # one line per reason, not per request
    assert not any("new-" in m for m in warnings_of(caplog))  # no raw user ids
    StatusResponse.model_validate(  # what /status answers validates against its schema
        {
            "ready": True,
            "models": {},
            "last_error": None,
            "online_store_down": None,
            "event_broker_down": None,
            "fallback_source": "popular",
            "degradations": status,
            "loop": {"max_lag_ms": 0.4, "stalls": 0},
        }
    )


def test_failed_trending_refresh_keeps_the_list_and_says_so(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path, redis={"url": "redis://127.0.0.1:9/0"})
    cache = PopularCache(settings)
    cache.trending = ["i1", "i2"]
    before = sample("rtrec_serving_degradations_total", "trending refresh failed")
    cache.refresh()
    assert cache.trending == ["i1", "i2"]
    assert sample("rtrec_serving_degradations_total", "trending refresh failed") == before + 1
    last = cache.degradations.status()["last"]
    assert last["reason"] == "trending refresh failed" and "2 items" in last["detail"]
