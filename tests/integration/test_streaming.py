"""Stream processor against a real broker, Redis and Feast."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from rtrec.features import item_features, online_features
from rtrec.streaming import read_events, replay_dataset
from rtrec.streaming.processor import StreamProcessor

from rtrec.config import Settings
from rtrec.data import SyntheticConfig, generate
from tests.stream_helpers import (
    assert_items_exact,
    assert_online_equals,
    dead_letters,
    env,
    free_port,
    isolated,
    reference,
    start_processor,
    wait_applied,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig.small(seed=3, n_users=300, n_items=200, n_events=20_000))


def test_online_features_equal_reference(stack: Settings, tmp_path: Path, data) -> None:
    s = isolated(stack, tmp_path)
    replay_dataset(s, data, progress=False)
    total = StreamProcessor(s).run(max_idle_s=3)
    assert total.applied == len(data.events) and total.dead == 0
    assert_online_equals(s, reference(data.events))
    assert_items_exact(s, data.events)
    last = data.events.sort_values("ts", kind="stable").iloc[-1]
    row = item_features(s, [str(last["item_id"])])[0]
    assert row["item_cnt_7d"] >= row["item_cnt_24h"] >= row["item_cnt_1h"] >= 1
    log = read_events(s.offline_dir / "events")
    assert len(log) == len(data.events)
    assert set(log.columns) >= {
        "user_id",
        "item_id",
        "event_type",
        "ts",
        "event_time",
        "partition",
        "offset",
    }


BAD = {
    "bad_json": b'{"user_id": "u1", ',
    "missing_field": json.dumps({"user_id": "u1", "event_type": "view", "ts": 1}).encode(),
    "wrong_type": json.dumps(
        {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "soon"}
    ).encode(),
    "unknown_type": json.dumps(
        {"user_id": "u1", "item_id": "i1", "event_type": "like", "ts": 1}
    ).encode(),
    "future": json.dumps(
        {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 10**14}
    ).encode(),
    "oversized": json.dumps(
        {"user_id": "u1", "item_id": "x" * 20_000, "event_type": "view", "ts": 1}
    ).encode(),
    "random_bytes": os.urandom(64) + b"\xff",
    "odd_unicode": '{"user_id": "\u202e\ud83d", "item_id": 1}'.encode("utf-8", "surrogatepass"),
    "negative_ts": json.dumps(
        {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": -5}
    ).encode(),
}


def test_malformed_events_are_dead_lettered_and_processing_goes_on(
    stack: Settings, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    s = isolated(stack, tmp_path)
    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, max_request_size=2**20)
    good = {"user_id": "ok-user", "item_id": "i1", "event_type": "click", "ts": 1_700_000_000_000}
    for value in BAD.values():
        producer.send(s.kafka.events_topic, key=b"u1", value=value)
    producer.send(s.kafka.events_topic, key=b"ok-user", value=json.dumps(good).encode())
    producer.flush()
    total = StreamProcessor(s).run(max_idle_s=3)
    assert total.dead == len(BAD) and total.applied == 1
    assert online_features(s, ["ok-user"])[0]["recent_items"] == ["i1"]
    letters = dead_letters(s)
    assert len(letters) == len(BAD)
    assert {bytes(d["value"]) for d in letters} == set(BAD.values())  # original bytes kept
    assert all(d["reason"] and d["source"].startswith(s.kafka.events_topic) for d in letters)
    fields = {d["field"] for d in letters}
    assert {"<json>", "item_id", "ts", "event_type"} <= fields


@pytest.mark.slow
def test_sigkill_mid_stream_loses_and_doubles_nothing(
    stack: Settings, tmp_path: Path, data
) -> None:
    s = isolated(stack, tmp_path)
    from rtrec.streaming.producer import publish, publish_catalog

    publish_catalog(s, data)
    pairs = list(data.iter_keyed_event_json())
    half = len(pairs) // 2
    publish(s, pairs[:half], progress=False)
    import threading

    import redis
    from rtrec.streaming.processor import offsets_key

    proc = start_processor(s, env(s))
    rest = threading.Thread(
        target=publish, args=(s, pairs[half:]), kwargs={"progress": False, "rate": 2000}
    )
    try:  # a failed wait must not leave the processor running past the test
        wait_applied(s, half, timeout=60)  # the backlog is in: now a live stream
        rest.start()
        wait_applied(s, half + 1500, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-stream: some batches done, more arriving
        proc.wait()
        if rest.is_alive():
            rest.join()
    applied = sum(
        int(v) + 1 for v in redis.Redis.from_url(s.redis.url).hgetall(offsets_key(s)).values()
    )
    assert 0 < applied < len(pairs), applied
    proc = start_processor(s, env(s))
    try:
        wait_applied(s, len(pairs), timeout=90)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # clean stop on SIGTERM
    log = read_events(s.offline_dir / "events")  # repeats after a crash are dropped here
    assert len(log) == len(pairs)
    assert sorted(log["offset"].groupby(log["partition"]).count()) == sorted(
        log.groupby("partition")["offset"].max() + 1
    )  # every offset of every partition, none missing
    assert_online_equals(s, reference(data.events))
    assert_items_exact(s, data.events)


@pytest.mark.slow
def test_two_processors_share_the_stream_through_a_rebalance(
    stack: Settings, tmp_path: Path, data
) -> None:
    import httpx
    from rtrec.streaming.producer import make_producer, publish, publish_catalog

    s = isolated(stack, tmp_path)
    publish_catalog(s, data)
    pairs = list(data.iter_keyed_event_json())
    ports = [free_port(), free_port()]

    def applied(port: int) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return -1.0  # not serving yet
        return _metric(text, 'rtrec_stream_events_total{outcome="applied"}')

    first = start_processor(s, env(s), "--metrics-port", str(ports[0]))
    second = None
    producer = make_producer(s)
    try:
        # Feed slowly: the second member starts once the first is up, joins the group
        # while the first is consuming, and takes partitions over; then the rest of the
        # events at full speed. Once it is started the feed trickles (100 events/s), so
        # the data lasts however long its start and the group's rebalance take on a
        # loaded machine (tens of seconds), not a fixed 20 s.
        sent = 0
        while sent < len(pairs) and (second is None or applied(ports[1]) <= 0):
            step, rate = (250, 1000) if second is None else (50, 100)
            publish(s, pairs[sent : sent + step], rate=rate, progress=False, producer=producer)
            sent += step
            if second is None and applied(ports[0]) >= 0:
                second = start_processor(s, env(s), "--metrics-port", str(ports[1]))
        assert sent < len(pairs), "the second processor never got partitions"
        publish(s, pairs[sent:], progress=False, producer=producer)
        wait_applied(s, len(pairs), timeout=90)
        counts = [applied(p) for p in ports]
        assert all(n > 0 for n in counts) and sum(counts) >= len(pairs), counts
        text = httpx.get(f"http://127.0.0.1:{ports[0]}/metrics", timeout=5).text
        assert "rtrec_stream_freshness_seconds_bucket" in text
        assert "rtrec_stream_consumer_lag" in text
    finally:
        producer.close()
        procs = [p for p in (first, second) if p is not None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in procs]
    assert codes == [0, 0]  # both stop cleanly on SIGTERM
    assert_online_equals(s, reference(data.events))
    assert_items_exact(s, data.events)
    assert len(read_events(s.offline_dir / "events")) == len(pairs)


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.slow
def test_redis_connections_dropped_mid_stream_change_nothing(
    stack: Settings, tmp_path: Path, data
) -> None:
    """Redis connections killed under the processor: batches fail, rewind, and the end
    state is still exact (the recovery path of ``StreamProcessor.run``)."""
    import threading

    import redis

    s = isolated(stack, tmp_path)
    replay_dataset(s, data, progress=False)
    proc = StreamProcessor(s, max_records=500)  # many batches, so kills land mid-stream
    admin = redis.Redis.from_url(s.redis.url)
    stop = threading.Event()
    kills = []

    def killer() -> None:  # a handful of drops, spread over the run
        while len([k for k in kills if k]) < 6 and not stop.wait(0.3):
            kills.append(admin.client_kill_filter(_type="normal", skipme=True))

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        time.sleep(0.5)
        total = proc.run(max_idle_s=3)
    finally:
        stop.set()
        thread.join()
    assert sum(kills) > 0
    # Never applied twice. Not "== len": a connection killed after Redis ran the commit
    # but before its reply arrived leaves that batch applied yet uncounted by this
    # process (it is skipped as already applied on the re-read). The exact end state
    # below is the guarantee.
    assert 0 < total.applied <= len(data.events)
    assert_online_equals(s, reference(data.events))
    assert_items_exact(s, data.events)
    assert len(read_events(s.offline_dir / "events")) == len(data.events)
