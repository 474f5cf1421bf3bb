"""Redis and the broker restarted under a running stream processor (``rtrec stream run``).

Each test runs on a private broker and Redis (``own_stack``) so it can restart them.

Redis: the embedded Redis keeps an append-only file (``appendfsync everysec``).
``stop`` (SIGTERM: Redis writes the file out) keeps everything; ``kill`` (SIGKILL) can lose
the last second of writes, which the processor notices (Redis's progress is behind the
committed Kafka offsets) and re-reads; ``wipe`` (restarted with no data, as a Redis without
persistence would be) loses the log marker, and the processor rebuilds the state from the
start of the retained log. In all three the end state equals the reference: no loss, no
double counting, as long as the broker still holds the events.

Broker: the embedded Tansu broker keeps nothing across a restart (topics, events, committed
offsets). The processor rides out the outage without crashing or spinning, creates the
topics again, sees the new topic id, forgets its applied offsets (they point past the new
log's end) and processes what is published afterwards; the aggregates carry on from the
events before the restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from rtrec.streaming.producer import make_producer, publish

from rtrec.app import stack as stack_mod
from rtrec.config import Settings
from rtrec.data import SyntheticConfig, generate
from tests.stream_helpers import (
    assert_items_exact,
    assert_offline_exact,
    assert_online_equals,
    env,
    logged_count,
    online_differences,
    own_stack,
    processor_log,
    reference,
    start_processor,
    wait_applied,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]


def _restart_redis(s: Settings, how: str) -> None:
    if how == "kill":
        pid = stack_mod.managed_pid(s, "redis")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: stack_mod.managed_pid(s, "redis") is None, 10, "redis gone")
    else:
        assert stack_mod.stop_managed(s, "redis")
    if how == "wipe":  # as if Redis had no persistence: it comes back empty
        for path in (s.work_dir / "redis").iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    time.sleep(1.0)  # an outage the processor sees, not a blip
    stack_mod.start_redis(s)


@pytest.mark.parametrize("how", ["stop", "kill", "wipe"])
def test_redis_restarted_mid_stream_loses_nothing(tmp_path: Path, how: str) -> None:
    data = generate(SyntheticConfig.small(seed=7, n_users=200, n_items=120, n_events=8000))
    pairs = list(data.iter_keyed_event_json())
    half = len(pairs) // 2
    with own_stack(tmp_path) as s:
        publish(s, pairs[:half], progress=False)
        proc = start_processor(s, env(s))
        producer = make_producer(s)
        try:
            wait_applied(s, half // 2, timeout=60)
            live = threading.Thread(
                target=publish,
                args=(s, pairs[half:]),
                kwargs={"progress": False, "rate": 1000, "producer": producer},
            )
            live.start()
            wait_applied(s, half + 300, timeout=60)  # mid-stream, the live part arriving
            _restart_redis(s, how)
            live.join()
            assert proc.poll() is None, "the processor died with Redis"
            wait_applied(s, len(pairs), timeout=120)
            wait_for(lambda: logged_count(s) >= len(pairs), 30, "offline log complete")
        finally:
            producer.close()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        assert code == 0
        assert_online_equals(s, reference(data.events))
        assert_items_exact(s, data.events)
        assert_offline_exact(s, data.events)


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _partitions(s: Settings) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(  # must not create the topic by asking for it
        bootstrap_servers=s.kafka.bootstrap_servers, allow_auto_create_topics=False
    )
    try:
        return len(consumer.partitions_for_topic(s.kafka.events_topic) or ())
    finally:
        consumer.close()


def _positions(s: Settings) -> str:
    """The topic's partitions with their end offsets, and the processor's applied
    offsets in Redis (what a failure message needs to tell a stall from a loss)."""
    import redis
    from kafka import KafkaConsumer, TopicPartition
    from rtrec.streaming.processor import offsets_key

    consumer = KafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap_servers, allow_auto_create_topics=False
    )
    try:
        parts = sorted(consumer.partitions_for_topic(s.kafka.events_topic) or ())
        tps = [TopicPartition(s.kafka.events_topic, p) for p in parts]
        ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
    applied = redis.Redis.from_url(s.redis.url).hgetall(offsets_key(s))
    return f"end offsets {ends}, applied { ({int(k): int(v) for k, v in applied.items()}) }"


def _publish_acked(s: Settings, pairs: list[tuple[bytes, bytes]]) -> None:
    """Publish and wait for every acknowledgement (``publish`` does not check them, and
    a broker that just came back may refuse some): the test must know what was sent."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, linger_ms=10)
    try:
        futures = [producer.send(s.kafka.events_topic, key=k, value=v) for k, v in pairs]
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()


def test_broker_restarted_empty_the_processor_carries_on(tmp_path: Path) -> None:
    data = generate(SyntheticConfig.small(seed=9, n_users=150, n_items=100, n_events=6000))
    pairs = list(data.iter_keyed_event_json())
    cut = 3500
    with own_stack(tmp_path) as s:
        publish(s, pairs[:cut], progress=False)
        proc = start_processor(s, env(s))
        try:
            wait_applied(s, cut, timeout=60)
            wait_for(lambda: logged_count(s) >= cut, 30, "offline log has the first part")
            stack_mod.stop_managed(s, "kafka")  # topics, events, committed offsets: gone
            cpu = _cpu_seconds(proc.pid)
            time.sleep(4.0)  # the outage
            spent = _cpu_seconds(proc.pid) - cpu
            assert proc.poll() is None, "the processor died with the broker"
            assert spent < 1.0, f"{spent:.2f} CPU s in a 4 s outage: a busy loop"
            stack_mod.start_kafka(s)  # empty: nobody runs ensure_topics
            # Tansu creates a topic the first time a client asks for it (with its default
            # partition count): here the processor's own subscription does.
            wait_for(lambda: _partitions(s) > 0, 60, "the events topic back")
            _publish_acked(s, pairs[cut:])  # offsets start at 0 again
            ref = reference(data.events)
            try:
                wait_for(lambda: not online_differences(s, ref), 90, "new events online")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; {_positions(s)}; processor log:\n{processor_log(s)}"
                ) from None
            wait_for(lambda: logged_count(s) >= len(pairs) - cut, 30, "offline log complete")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        assert code == 0
        assert_online_equals(s, ref)
        assert_items_exact(s, data.events)
        log = assert_offline_exact(s, data.events)  # both logs, neither's rows dropped
        assert log["log_id"].nunique() == 2


def test_redis_that_lost_its_last_writes_is_caught_up(stack: Settings, tmp_path: Path) -> None:
    """The worst case of a Redis SIGKILL with ``appendfsync everysec``, made exact: Redis
    goes back to an earlier snapshot while Kafka's committed offsets stay ahead. The
    processor sees Redis's progress behind the committed offset and re-reads from it."""
    import redis
    from rtrec.streaming.processor import StreamProcessor

    from tests.stream_helpers import isolated

    data = generate(SyntheticConfig.small(seed=4, n_users=120, n_items=80, n_events=4000))
    pairs = list(data.iter_keyed_event_json())
    s = isolated(stack, tmp_path)
    client = redis.Redis.from_url(s.redis.url)
    publish(s, pairs[:2500], progress=False)
    assert StreamProcessor(s).run(max_idle_s=3).applied == 2500
    snapshot = {key: client.dump(key) for key in client.scan_iter()}
    publish(s, pairs[2500:], progress=False)
    assert StreamProcessor(s).run(max_idle_s=3).applied == len(pairs) - 2500
    client.flushdb()  # Redis comes back without its last writes; Kafka kept its commits
    for key, value in snapshot.items():
        client.restore(key, 0, value)
    assert StreamProcessor(s).run(max_idle_s=3).applied == len(pairs) - 2500  # re-read
    assert_online_equals(s, reference(data.events))
    assert_items_exact(s, data.events)
    assert_offline_exact(s, data.events)


def test_topic_recreated_with_more_partitions_all_are_read(tmp_path: Path) -> None:
    """The embedded broker keeps a group's generation when its only member rejoins and
    hands back the first assignment it stored: after the topic comes back with 4
    partitions the leader computes [0, 1, 2, 3] and is given [0, 1, 2]. The processor
    must notice, rejoin as a new member, and read every partition."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError
    from rtrec.streaming.processor import StreamProcessor

    data = generate(SyntheticConfig.small(seed=11, n_users=120, n_items=80, n_events=2000))
    with own_stack(tmp_path) as s:
        processor = StreamProcessor(s)
        assigned: list[list[int]] = []
        on_assigned = processor.on_assigned

        def record(partitions: list[int]) -> None:
            assigned.append(sorted(partitions))
            on_assigned(partitions)

        processor.on_assigned = record  # type: ignore[method-assign]
        worker = threading.Thread(target=processor.run, kwargs={"max_idle_s": 120})
        worker.start()
        try:
            wait_for(lambda: assigned[-1:] == [[0, 1, 2]], 60, "the first assignment")
            admin = KafkaAdminClient(bootstrap_servers=s.kafka.bootstrap_servers)
            try:
                admin.delete_topics([s.kafka.events_topic])
                # the processor's metadata request may have created it first
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(s.kafka.events_topic, 4, 1)])
            finally:
                admin.close()
            assert _partitions(s) == 4  # ours, or auto-created with the broker's default
            wait_for(lambda: assigned[-1:] == [[0, 1, 2, 3]], 60, "all four partitions assigned")
            _publish_acked(s, list(data.iter_keyed_event_json()))
            ref = reference(data.events)
            wait_for(lambda: not online_differences(s, ref), 90, "every event online")
        finally:
            processor.stop()
            worker.join(timeout=60)
        assert not worker.is_alive()
        assert_online_equals(s, ref)
