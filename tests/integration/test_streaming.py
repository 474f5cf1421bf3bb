"""Stream processor against a real broker, Redis and Feast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from features import count_names, item_features, online_features
from features.definitions import RECENT_ITEMS, WINDOWS
from rtrec import stack as stack_mod
from rtrec.config import Settings, load_settings
from rtrec.data import SyntheticConfig, generate
from streaming import read_events, replay_dataset
from streaming.processor import StreamProcessor

pytestmark = pytest.mark.integration
_db = iter(range(1, 16))


def isolated(stack: Settings, tmp_path: Path) -> Settings:
    """Own topics, consumer group, Redis DB and Feast repo on the shared broker/Redis."""
    tag = uuid.uuid4().hex[:6]
    base = stack.redis.url.rsplit("/", 1)[0]
    s = load_settings(
        work_dir=tmp_path,
        kafka={
            "bootstrap_servers": stack.kafka.bootstrap_servers,
            "events_topic": f"ev-{tag}",
            "dlq_topic": f"dlq-{tag}",
            "alerts_topic": f"al-{tag}",
            "consumer_group": f"g-{tag}",
            "session_timeout_ms": 2000,
            "partitions": 3,
        },
        redis={"url": f"{base}/{next(_db)}"},
    )
    stack_mod.ensure_topics(s)
    return s


def reference(events: pd.DataFrame) -> dict[str, dict]:
    """User features computed straight from the events (independent of the processor)."""
    out = {}
    for user, g in events.sort_values("ts", kind="stable").groupby("user_id"):
        last = int(g["ts"].max())
        row = {"recent_items": g["item_id"].tolist()[::-1][:RECENT_ITEMS], "last_event_ms": last}
        for t in ("view", "click", "add_to_cart", "purchase", "rating"):
            for name, span in WINDOWS.items():
                row[f"cnt_{t}_{name}"] = int(
                    ((g["event_type"] == t) & (g["ts"] > last - span)).sum()
                )
        out[str(user)] = row
    return out


def assert_online_equals(settings: Settings, ref: dict[str, dict]) -> None:
    users = sorted(ref)
    got = online_features(settings, users)
    keys = ["recent_items", "last_event_ms", *count_names()]
    bad = [u for u, g in zip(users, got, strict=True) if {k: g[k] for k in keys} != ref[u]]
    assert not bad, (
        f"{len(bad)} users differ, e.g. {bad[0]}: {got[users.index(bad[0])]} vs {ref[bad[0]]}"
    )


def assert_items_exact(settings: Settings, events: pd.DataFrame) -> None:
    """Trending scores and item hour buckets count every event exactly once."""
    import redis

    from features import TRENDING_EPOCH_KEY, TRENDING_KEY, trending_items, trending_weight
    from streaming.aggregates import HOUR_MS, WINDOW_HOURS
    from streaming.state import ITEM_CLOCK_KEY, ITEM_PREFIX

    client = redis.Redis.from_url(settings.redis.url)
    epoch, clock = int(client.get(TRENDING_EPOCH_KEY)), int(client.get(ITEM_CLOCK_KEY))
    assert clock == int(events["ts"].max()) // HOUR_MS
    longest = max(WINDOW_HOURS)
    ref_scores = {}
    for item, g in events.groupby("item_id"):
        ref_scores[item] = sum(trending_weight(int(t), epoch) for t in g["ts"])
        assert client.zscore(TRENDING_KEY, item) == pytest.approx(ref_scores[item], rel=1e-9)
        buckets = client.hgetall(ITEM_PREFIX + item)
        got = sum(int(n) for h, n in buckets.items() if clock - int(h) < longest)
        assert got == int(((clock - g["ts"] // HOUR_MS) < longest).sum()), item
    top = sorted(ref_scores, key=ref_scores.__getitem__, reverse=True)[:5]
    assert trending_items(settings, 5) == top


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
    from kafka import KafkaConsumer, KafkaProducer

    from streaming.dlq import decode

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
    consumer = KafkaConsumer(
        s.kafka.dlq_topic,
        bootstrap_servers=s.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    letters = [decode(r) for r in consumer]
    consumer.close()
    assert len(letters) == len(BAD)
    assert {bytes(d["value"]) for d in letters} == set(BAD.values())  # original bytes kept
    assert all(d["reason"] and d["source"].startswith(s.kafka.events_topic) for d in letters)
    fields = {d["field"] for d in letters}
    assert {"<json>", "item_id", "ts", "event_type"} <= fields


def _processor(s: Settings, env_extra: dict[str, str], *args: str) -> subprocess.Popen:
    env = {**os.environ, **env_extra}
    log = open(s.work_dir / f"processor-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "rtrec.cli", "--log-level", "INFO", "stream", "run", *args],
        env=env,
        stdout=log,
        stderr=log,
    )


def _env(s: Settings) -> dict[str, str]:
    k = s.kafka
    return {
        "RTREC_WORK_DIR": str(s.work_dir),
        "RTREC_REDIS__URL": s.redis.url,
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
        "RTREC_KAFKA__EVENTS_TOPIC": k.events_topic,
        "RTREC_KAFKA__DLQ_TOPIC": k.dlq_topic,
        "RTREC_KAFKA__CONSUMER_GROUP": k.consumer_group,
        "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
    }


def _wait_applied(s: Settings, n: int, timeout: float) -> None:
    import redis

    from streaming.processor import offsets_key

    client = redis.Redis.from_url(s.redis.url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = client.hgetall(offsets_key(s))
        if sum(int(v) + 1 for v in applied.values()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"processor did not reach {n} events in {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_stream_loses_and_doubles_nothing(
    stack: Settings, tmp_path: Path, data
) -> None:
    s = isolated(stack, tmp_path)
    from streaming.producer import publish, publish_catalog

    publish_catalog(s, data)
    pairs = list(data.iter_keyed_event_json())
    half = len(pairs) // 2
    publish(s, pairs[:half], progress=False)
    import threading

    import redis

    from streaming.processor import offsets_key

    proc = _processor(s, _env(s))
    _wait_applied(s, half, timeout=60)  # the backlog is in: now a live stream
    rest = threading.Thread(
        target=publish, args=(s, pairs[half:]), kwargs={"progress": False, "rate": 2000}
    )
    rest.start()
    _wait_applied(s, half + 1500, timeout=60)
    proc.send_signal(signal.SIGKILL)  # mid-stream: some batches done, more arriving
    proc.wait()
    rest.join()
    applied = sum(
        int(v) + 1 for v in redis.Redis.from_url(s.redis.url).hgetall(offsets_key(s)).values()
    )
    assert 0 < applied < len(pairs), applied
    proc = _processor(s, _env(s))
    try:
        _wait_applied(s, len(pairs), timeout=90)
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

    from streaming.producer import make_producer, publish, publish_catalog

    s = isolated(stack, tmp_path)
    publish_catalog(s, data)
    pairs = list(data.iter_keyed_event_json())
    ports = [_free_port(), _free_port()]

    def applied(port: int) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return -1.0  # not serving yet
        return _metric(text, 'rtrec_stream_events_total{outcome="applied"}')

    first = _processor(s, _env(s), "--metrics-port", str(ports[0]))
    second = None
    producer = make_producer(s)
    try:
        # Feed slowly: the second member starts once the first is up, joins the group
        # while the first is consuming, and takes partitions over; then the rest of the
        # events at full speed.
        sent = 0
        while sent < len(pairs) and (second is None or applied(ports[1]) <= 0):
            publish(s, pairs[sent : sent + 250], rate=1000, progress=False, producer=producer)
            sent += 250
            if second is None and applied(ports[0]) >= 0:
                second = _processor(s, _env(s), "--metrics-port", str(ports[1]))
        assert sent < len(pairs), "the second processor never got partitions"
        publish(s, pairs[sent:], progress=False, producer=producer)
        _wait_applied(s, len(pairs), timeout=90)
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    assert total.applied == len(data.events)  # each event applied once, failures or not
    assert_online_equals(s, reference(data.events))
    assert_items_exact(s, data.events)
    assert len(read_events(s.offline_dir / "events")) == len(data.events)
