"""The embedded stack against real processes: Tansu broker, Redis, CLI up/status/down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rtrec.app import stack as stack_mod
from rtrec.app.processes import alive
from rtrec.config import Settings, host_port, load_settings
from rtrec.errors import Unavailable
from rtrec.events import Interaction, parse_event

pytestmark = pytest.mark.integration


def test_events_round_trip_through_a_consumer_group(stack: Settings) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    events = [
        Interaction(
            user_id=f"u{i % 7}", item_id=f"i{i}", event_type="view", ts=1_700_000_000_000 + i
        )
        for i in range(500)
    ]
    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers, linger_ms=5)
    for e in events:
        producer.send(topic, key=e.user_id.encode(), value=e.to_json())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka.bootstrap_servers,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    got: list[Interaction] = []
    deadline = time.monotonic() + 30
    while len(got) < len(events) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(parse_event(r.value) for r in records)
    consumer.commit()
    consumer.close()
    assert sorted(got, key=lambda e: e.ts) == events
    # Per-user order is kept because events are keyed by user id.
    for user in {e.user_id for e in events}:
        mine = [e.ts for e in got if e.user_id == user]
        assert mine == sorted(mine)


def test_status_reports_topics_and_redis(stack: Settings) -> None:
    rows = {r.name: r for r in stack_mod.status(stack)}
    assert rows["kafka"].healthy and rows["kafka"].managed
    assert rows["redis"].healthy and rows["redis"].managed
    assert set(rows) >= {"offline-store", "mlflow-registry", "airflow-home", "evidently-workspace"}


def test_up_twice_is_harmless(stack: Settings) -> None:
    pid_before = stack_mod.managed_pid(stack, "kafka")
    stack_mod.up(stack)
    assert stack_mod.managed_pid(stack, "kafka") == pid_before


def test_port_in_use_is_named(tmp_path: Path, stack: Settings) -> None:
    # Another work dir wanting the same broker port must fail loudly, naming the port.
    other = load_settings(
        work_dir=tmp_path, kafka={"bootstrap_servers": stack.kafka.bootstrap_servers}
    )
    _, port = host_port(stack.kafka.bootstrap_servers, 9092)
    with pytest.raises(Unavailable, match=f"port {port}"):
        stack_mod.start_kafka(other)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("rtrec")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "rtrec.app.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    from tests.conftest import free_port

    env = {
        **os.environ,
        "RTREC_WORK_DIR": str(tmp_path / "w"),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RTREC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    up = _cli(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    settings = load_settings(
        work_dir=tmp_path / "w",
        kafka={"bootstrap_servers": env["RTREC_KAFKA__BOOTSTRAP_SERVERS"]},
        redis={"url": env["RTREC_REDIS__URL"]},
    )
    pids = [stack_mod.managed_pid(settings, n) for n in ("kafka", "redis")]
    assert all(pids), pids
    st = _cli(env, "status")
    assert st.returncode == 0 and "kafka" in st.stdout and "redis" in st.stdout
    down = _cli(env, "down")
    assert down.returncode == 0
    for pid in pids:
        assert pid is not None and not alive(pid)
    st = _cli(env, "status")
    assert st.returncode == 1
    assert "DOWN" in st.stdout
