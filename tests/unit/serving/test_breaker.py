"""The one circuit breaker behind the online store and the event broker: how it opens,
closes and reports (``down_reason``, the breaker gauge and trip counter per dependency)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from rtrec.serving.breaker import Breaker
from rtrec.serving.feedback import Publisher
from rtrec.serving.online import GuardedFeatures

from rtrec.config import load_settings
from rtrec.errors import Unavailable


def _sample(name: str, dependency: str) -> float:
    return REGISTRY.get_sample_value(name, {"dependency": dependency}) or 0.0


class Flaky(Breaker):
    """A dependency whose probe answers what the test sets."""

    def __init__(self, **kw: object) -> None:
        super().__init__(
            "flaky store",
            timeout_s=0.05,
            probe_interval_s=0.02,
            timeout_says="answer took over",
            thread_name="flaky",
            **kw,  # type: ignore[arg-type]
        )
        self.answer: str | None = None

    def probe(self) -> str | None:
        return self.answer


def _wait(condition, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_opens_counts_and_closes_once_the_probe_answers() -> None:
    breaker = Flaky()
    trips = _sample("rtrec_serving_breaker_trips_total", "flaky_store")

    def refuse() -> None:
        raise Unavailable("flaky store refused")

    with pytest.raises(Unavailable, match="refused"):
        breaker.call(refuse)
    assert breaker.down_reason == "flaky store refused"
    with pytest.raises(Unavailable, match="flaky store marked down: flaky store refused"):
        breaker.call(lambda: 1)
    breaker.trip("still down")  # already open: counted once
    assert _sample("rtrec_serving_breaker_trips_total", "flaky_store") == trips + 1
    assert _sample("rtrec_serving_breaker_open", "flaky_store") == 1

    breaker.answer = "no answer"
    breaker.start()
    try:
        time.sleep(0.1)
        assert breaker.down_reason == "still down"  # the probe fails: stays open
        breaker.answer = None
        assert _wait(lambda: breaker.down_reason is None)
    finally:
        breaker.stop()
    assert _sample("rtrec_serving_breaker_open", "flaky_store") == 0
    assert breaker.call(lambda: 7) == 7


def test_missed_deadlines_open_it_after_the_set_number_in_a_row() -> None:
    breaker = Flaky(trip_after_timeouts=2)
    with pytest.raises(Unavailable, match="flaky store answer took over 50 ms"):
        breaker.call(time.sleep, 0.2)
    assert breaker.call(lambda: 1) == 1  # a success starts the count again
    with pytest.raises(Unavailable):
        breaker.call(time.sleep, 0.2)
    assert breaker.down_reason is None
    with pytest.raises(Unavailable):
        breaker.call(time.sleep, 0.2)
    assert breaker.down_reason is not None


def test_a_probe_while_closed_opens_it_before_a_call_fails() -> None:
    eager, lazy = Flaky(probe_while_closed=True), Flaky()
    eager.answer = lazy.answer = "ping failed"
    for breaker in (eager, lazy):
        breaker.start()
    try:
        assert _wait(lambda: eager.down_reason == "ping failed")
        assert lazy.down_reason is None  # probes only while open
    finally:
        eager.stop()
        lazy.stop()


def test_online_store_and_event_broker_report_alike(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path)
    online = GuardedFeatures(settings, lambda ids: [{}])
    publisher = Publisher(settings)
    for guarded, label in ((online, "online_store"), (publisher, "event_broker")):
        assert isinstance(guarded, Breaker)
        trips = _sample("rtrec_serving_breaker_trips_total", label)
        guarded.trip("test outage")
        assert guarded.down_reason == "test outage"
        assert _sample("rtrec_serving_breaker_open", label) == 1
        assert _sample("rtrec_serving_breaker_trips_total", label) == trips + 1
        guarded.close()
        assert guarded.down_reason is None
        assert _sample("rtrec_serving_breaker_open", label) == 0


def test_awaited_calls_have_the_same_deadline_and_trip_rule(tmp_path: Path) -> None:
    """``acall`` (the event loop's form of ``call``): a missed deadline raises Unavailable
    naming it, ``trip_after_timeouts`` of them open the breaker, then calls fail at once
    without waiting; a success resets the count."""
    import asyncio

    from rtrec.errors import Unavailable

    settings = load_settings(work_dir=tmp_path)
    online = GuardedFeatures(settings, lambda ids: [{}], timeout_s=0.02, trip_after_timeouts=2)

    async def slow() -> str:
        await asyncio.sleep(1.0)
        return "late"

    async def quick() -> str:
        return "ok"

    async def scenario() -> list[str]:
        seen = []
        for fn in (slow, quick, slow, slow, quick):
            start = asyncio.get_running_loop().time()
            try:
                seen.append(await online.acall(fn))
            except Unavailable as exc:
                waited = asyncio.get_running_loop().time() - start
                seen.append(f"{'open' if 'marked down' in str(exc) else 'late'}:{waited < 0.5}")
        return seen

    try:
        assert asyncio.run(scenario()) == ["late:True", "ok", "late:True", "late:True", "open:True"]
        assert online.down_reason == "online store read exceeded 20 ms"
    finally:
        online.stop()
