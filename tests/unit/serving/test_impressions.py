"""The impression log: every answer has a request id and is queued as an impression; a
background thread sends them in batches; a full queue, a dead broker and a stop drop
them, counted by reason; a hanging producer never slows an answer.

The producer here is a stand-in that records what it is given (or hangs, or fails); the
real broker is in ``tests/integration/test_serving.py``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from rtrec.serving.degradation import Degradations
from rtrec.serving.impression_sender import RECORD_ITEMS, impression
from rtrec.serving.impression_sender import chunks as _chunks
from rtrec.serving.impressions import (
    BROKER_DOWN,
    QUEUE_FULL,
    STOPPED,
    ImpressionLog,
    kafka_producer,
)
from rtrec.serving.lifecycle import Loaded, load_dir
from rtrec.serving.retrieval import Engine
from rtrec.serving.schemas import RecommendRequest, RecommendResponse

from rtrec.config import Settings, load_settings
from rtrec.errors import InvalidInput
from rtrec.events import pack_impressions, unpack_impressions
from rtrec.logging import redact_id
from tests.conftest import free_port

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def dropped(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("rtrec_serving_impressions_dropped_total", {"reason": reason})
        or 0.0
    )


def sent() -> float:
    return REGISTRY.get_sample_value("rtrec_serving_impressions_total") or 0.0


class Done:
    def get(self, timeout: float | None = None) -> None:
        return None


class Producer:
    """Keeps every record; each flush ends a batch. ``hang`` blocks flushes until set."""

    def __init__(self, hang: threading.Event | None = None) -> None:
        self.records: list[tuple[str, bytes, dict[str, Any]]] = []
        self.batches: list[int] = []
        self.sends = 0
        self.hang = hang
        self.waiting = False
        self._since_flush = 0

    def __call__(self, bootstrap: str, timeout_s: float) -> Producer:
        return self  # the log's producer factory

    def send(self, topic: str, *, key: bytes | None, value: bytes) -> Done:
        """One record holds a batch: kept here as one entry per impression, under its
        raw user id, as a consumer unpacks it."""
        assert key is None  # batches of many users: no key
        for body in unpack_impressions(value):
            self.records.append((topic, body["user_id"].encode(), body))
            self._since_flush += 1
        self.sends += 1
        return Done()

    def flush(self, timeout: float | None = None) -> None:
        if self.hang is not None:
            self.waiting = True
            self.hang.wait()
        self.batches.append(self._since_flush)
        self._since_flush = 0

    def close(self, timeout: float | None = None) -> None:
        pass


def wait_until(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def answer(n_items: int = 3, request_id: str = "ab" * 16) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "user_id_hash": redact_id("u1"),
        "variant": "champion",
        "experiment": "7-vs-8",
        "model_version": "7",
        "items": [{"item_id": f"i{n}", "score": 1.0 - n / 10} for n in range(n_items)],
        "fallback": False,
        "fallback_reason": None,
        "server_ms": 1.0,
    }


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Nothing listens on the broker address: the probe never closes a breaker here."""
    out = load_settings(work_dir=tmp_path)
    out.kafka.bootstrap_servers = f"127.0.0.1:{free_port()}"
    return out


def test_the_event_carries_what_attribution_needs() -> None:
    """The raw id is there for the join with feedback (as on the events topic); the
    redacted one is what answers, readouts and logs name."""
    body = impression((1_750_000_000_123, "u1", 10, None, answer(3)))
    assert body == {
        "request_id": "ab" * 16,
        "ts": 1_750_000_000_123,
        "user_id": "u1",
        "user_id_hash": redact_id("u1"),
        "variant": "champion",
        "experiment": "7-vs-8",
        "model_version": "7",
        "k": 10,
        "items": [
            {"item_id": "i0", "position": 1, "score": 1.0},
            {"item_id": "i1", "position": 2, "score": 0.9},
            {"item_id": "i2", "position": 3, "score": 0.8},
        ],
        "fallback": False,
        "fallback_reason": None,
    }
    assert unpack_impressions(pack_impressions([body, body])) == [body, body]


def test_a_record_that_is_no_impressions_batch_is_refused_by_name() -> None:
    for value, field in ((b"{not json", "value"), (b'{"schema": 1}', "schema")):
        with pytest.raises(InvalidInput) as err:
            unpack_impressions(value)
        assert err.value.field == field
    with pytest.raises(InvalidInput, match="list of impressions"):
        unpack_impressions(b'{"schema": 2, "impressions": [1]}')


def test_records_stay_under_the_item_bound() -> None:
    impressions = [impression((1, f"u{n}", 50, None, answer(50))) for n in range(200)]
    chunks = _chunks(impressions)
    assert [imp for chunk in chunks for imp in chunk] == impressions  # all, in order
    assert all(sum(len(i["items"]) + 1 for i in chunk) <= RECORD_ITEMS for chunk in chunks)
    assert len(chunks) == 3  # 51 items each: 78 fit in 4,000


def test_batches_carry_raw_user_ids_and_are_counted(settings: Settings) -> None:
    producer = Producer()
    log = ImpressionLog(
        settings, Degradations(), batch_size=100, interval_s=0.01, producer=producer
    )
    before = sent()
    for n in range(250):  # queued before the thread starts: three batches
        log.record(f"user-{n}", 5, answer(2, request_id=f"{n:032x}"), None)
    log.start()
    try:
        assert wait_until(lambda: len(producer.records) == 250)
    finally:
        log.shutdown(flush_s=1)
    assert producer.batches == [100, 100, 50]
    assert producer.sends == 3  # one record per round, not one per answer
    assert {topic for topic, _, _ in producer.records} == {settings.kafka.impressions_topic}
    assert [key for _, key, _ in producer.records] == [f"user-{n}".encode() for n in range(250)]
    assert [body["request_id"] for _, _, body in producer.records] == [
        f"{n:032x}" for n in range(250)
    ]
    assert sent() - before == 250


def test_a_full_queue_drops_and_counts_by_reason(settings: Settings) -> None:
    degradations, producer = Degradations(), Producer()
    log = ImpressionLog(settings, degradations, queue_items=30, producer=producer)
    before = dropped(QUEUE_FULL)
    for _ in range(5):  # 11 each (10 items + the answer): two fit in 30
        log.record("u1", 10, answer(10), None)
    assert dropped(QUEUE_FULL) - before == 3
    assert degradations.status()["counts"] == {QUEUE_FULL: 3}
    assert degradations.status()["last"]["detail"] == "30 items queued"
    log.shutdown(flush_s=1)  # the two queued are sent at shutdown
    assert len(producer.records) == 2


def test_a_dead_broker_opens_the_breaker_and_drops_are_counted(settings: Settings) -> None:
    degradations = Degradations()
    log = ImpressionLog(settings, degradations, interval_s=0.01, producer=kafka_producer)
    before = dropped(BROKER_DOWN)
    for _ in range(3):
        log.record("u1", 10, answer(), None)
    log.start()
    try:
        assert wait_until(lambda: log.down_reason is not None)
        assert wait_until(lambda: dropped(BROKER_DOWN) - before == 3)  # the queued batch
        t = time.perf_counter()
        log.record("u1", 10, answer(), None)  # breaker open: dropped at once, not queued
        assert time.perf_counter() - t < 0.01
        assert dropped(BROKER_DOWN) - before == 4 and not log._queue
        assert degradations.status()["counts"] == {BROKER_DOWN: 4}
        assert "impression broker" in log.down_reason
    finally:
        log.shutdown(flush_s=0.5)


def test_shutdown_is_bounded_when_the_broker_hangs(settings: Settings) -> None:
    hang = threading.Event()
    degradations = Degradations()
    log = ImpressionLog(
        settings, degradations, timeout_s=0.2, batch_size=2, producer=Producer(hang)
    )
    before = dropped(BROKER_DOWN) + dropped(STOPPED)
    for _ in range(10):
        log.record("u1", 10, answer(), None)
    t = time.perf_counter()
    log.shutdown(flush_s=0.3)  # the first flush hangs: its batch is dropped at 0.2 s
    assert time.perf_counter() - t < 1.5
    hang.set()
    assert dropped(BROKER_DOWN) + dropped(STOPPED) - before == 10
    log.record("u1", 10, answer(), None)  # after shutdown: dropped, not queued forever
    assert not log._queue and sum(degradations.status()["counts"].values()) == 11


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    from rtrec.serving.synthetic import synthetic_bundle

    path = synthetic_bundle(tmp_path_factory.mktemp("b") / "b", n_items=60, n_users=10, seed=3)
    return load_dir(path, "7", "test")


def engine_with(settings: Settings, loaded: Loaded, log: ImpressionLog | None) -> Engine:
    engine = Engine(settings, features=lambda users: [{"recent_items": None} for _ in users])
    engine.swap("champion", loaded)
    engine.impressions = log
    return engine


def test_every_answer_has_a_request_id_and_is_logged(settings: Settings, loaded: Loaded) -> None:
    producer = Producer()
    log = ImpressionLog(settings, Degradations(), interval_s=0.01, producer=producer)
    engine = engine_with(settings, loaded, log)
    warm = asyncio.run(engine.recommend_async(RecommendRequest(user_id="u1", k=4)))
    cold = engine.recommend_or_fallback(RecommendRequest(user_id="stranger", k=3))
    for out in (warm, cold):
        assert HEX32.match(out["request_id"]), out["request_id"]
        RecommendResponse.model_validate(out)  # the documented shape, request_id included
    assert warm["request_id"] != cold["request_id"] and cold["fallback"] is True
    log.start()
    try:
        assert wait_until(lambda: len(producer.records) == 2)
    finally:
        log.shutdown(flush_s=1)
    (_, key_w, body_w), (_, key_c, body_c) = producer.records
    assert (key_w, key_c) == (b"u1", b"stranger")
    assert body_w["request_id"] == warm["request_id"] and body_w["k"] == 4
    assert [i["item_id"] for i in body_w["items"]] == [i["item_id"] for i in warm["items"]]
    assert [i["position"] for i in body_w["items"]] == [1, 2, 3, 4]
    assert body_c["fallback"] is True and body_c["fallback_reason"] == "cold user"
    assert body_c["user_id_hash"] == redact_id("stranger") == cold["user_id_hash"]


def test_a_hanging_producer_never_slows_an_answer(settings: Settings, loaded: Loaded) -> None:
    """The producer blocks its flush until released; answers keep their pace (a wait on
    it would cost each a second, the broker deadline), and once the deadline passes the
    breaker opens and impressions are dropped and counted instead of waited for."""
    hang = threading.Event()
    producer = Producer(hang)
    log = ImpressionLog(
        settings, Degradations(), interval_s=0.005, timeout_s=1.0, producer=producer
    )
    engine = engine_with(settings, loaded, log)
    req = RecommendRequest(user_id="u1", k=10)
    before = dropped(BROKER_DOWN)
    log.start()
    try:
        # The producer hangs until the end of the test: an answer that waited for it
        # would never come back, so answers completing is the proof, not their speed.
        assert _answered(engine, req, 200) == 200
        assert producer.waiting and not hang.is_set()  # served while the producer hung
        assert wait_until(lambda: log.down_reason is not None)
        assert wait_until(lambda: dropped(BROKER_DOWN) > before)
        assert _answered(engine, req, 20) == 20 and not log._queue  # dropped at once now
    finally:
        hang.set()
        log.shutdown(flush_s=0.5)


def _answered(engine: Engine, req: RecommendRequest, n: int) -> int:
    """Answers completed out of ``n`` (a minute's bound only so a hang fails clearly)."""

    async def run() -> int:
        done = 0
        for _ in range(n):
            await engine.recommend_async(req)
            done += 1
            await asyncio.sleep(0.001)  # let the drain thread run between answers
        return done

    return asyncio.run(asyncio.wait_for(run(), 60))
