"""The processor's reliance on kafka-python internals and on the broker kind, made explicit.

A missing internal turns its guard off with one WARNING (attribute and kafka-python
version) and a metric; the Tansu stale-assignment workaround runs against Tansu only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kafka
import pytest
from prometheus_client import REGISTRY
from rtrec.streaming import kafka_compat
from rtrec.streaming.kafka_compat import INTERNALS, PARTITIONS_FOR_TOPIC, broker_kind, internal
from rtrec.streaming.processor import StreamProcessor

from rtrec.config import Settings, load_settings


@pytest.fixture(autouse=True)
def fresh_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees a process in which no guard was turned off yet."""
    monkeypatch.setattr(kafka_compat, "_disabled", {})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(work_dir=tmp_path)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rtrec.streaming.kafka_compat" and r.levelno == logging.WARNING
    ]


def test_every_internal_the_guards_read_exists_in_the_installed_kafka_python(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A canary for kafka-python upgrades: fails here, not silently in production."""
    from kafka import KafkaConsumer

    # api_version given: no bootstrap, so no broker is needed to build the consumer.
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g", api_version=(2, 5, 0))
    try:
        with caplog.at_level(logging.WARNING, logger="rtrec.streaming.kafka_compat"):
            for path in INTERNALS:
                value = internal(consumer, path)
                assert value is not None or path.endswith("_assignment_snapshot"), path
    finally:
        consumer.close()
    assert warnings_of(caplog) == [] and kafka_compat.disabled_guards() == {}


def test_a_missing_internal_warns_once_naming_it_and_the_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    moved = SimpleNamespace(_client=SimpleNamespace())  # a release without .cluster
    with caplog.at_level(logging.WARNING, logger="rtrec.streaming.kafka_compat"):
        assert internal(moved, PARTITIONS_FOR_TOPIC) is None
        assert internal(moved, PARTITIONS_FOR_TOPIC) is None
    lines = warnings_of(caplog)
    assert len(lines) == 1, lines
    assert f"kafka-python {kafka.__version__}" in lines[0]
    assert "SimpleNamespace._client.cluster.partitions_for_topic" in lines[0]
    assert "partition count" in lines[0]
    attribute = "SimpleNamespace._client.cluster.partitions_for_topic"
    assert kafka_compat.disabled_guards() == {"partition_count": attribute}
    labels = {"guard": "partition_count", "attribute": attribute}
    assert REGISTRY.get_sample_value("rtrec_stream_guard_disabled", labels) == 1.0


def fake_processor(settings: Settings, consumer: Any, kind: str) -> Any:
    return SimpleNamespace(
        settings=settings,
        consumer=consumer,
        broker=kafka_compat.BrokerKind(kind, "setting", "test"),  # type: ignore[arg-type]
        _assignor=SimpleNamespace(computed={"m1": {0, 1, 2, 3}}),
    )


def test_partition_guard_without_its_internal_is_off_and_says_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    proc = fake_processor(settings, SimpleNamespace(), "tansu")
    with caplog.at_level(logging.WARNING, logger="rtrec.streaming.kafka_compat"):
        assert StreamProcessor._partition_count(proc) == 0
    assert len(warnings_of(caplog)) == 1


def leader(member: str = "m1") -> SimpleNamespace:
    return SimpleNamespace(
        _coordinator=SimpleNamespace(_generation=SimpleNamespace(member_id=member))
    )


def test_stale_assignment_check_runs_against_tansu(settings: Settings) -> None:
    proc = fake_processor(settings, leader(), "tansu")
    assert StreamProcessor._assignment_is_stale(proc, [0, 1, 2]) is True  # given 3 of 4
    proc._assignor.computed = {"m1": {0, 1, 2}}
    assert StreamProcessor._assignment_is_stale(proc, [0, 1, 2]) is False
    proc._assignor.computed = {"m2": {0, 1, 2, 3}}  # not the leader: nothing to compare
    assert StreamProcessor._assignment_is_stale(proc, [0, 1, 2]) is False


def test_stale_assignment_check_is_off_against_kafka(settings: Settings) -> None:
    proc = fake_processor(settings, leader(), "kafka")
    assert StreamProcessor._assignment_is_stale(proc, [0, 1, 2]) is False
    assert proc._assignor.computed is None  # consumed either way: never compared later


def test_stale_assignment_without_the_generation_internal_warns(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    proc = fake_processor(settings, SimpleNamespace(_coordinator=SimpleNamespace()), "tansu")
    with caplog.at_level(logging.WARNING, logger="rtrec.streaming.kafka_compat"):
        assert StreamProcessor._assignment_is_stale(proc, [0]) is False
    assert "_coordinator._generation.member_id" in warnings_of(caplog)[0]
    assert "stale_assignment" in kafka_compat.disabled_guards()


@pytest.mark.parametrize("kind", ["tansu", "kafka"])
def test_configured_broker_kind_is_not_detected(tmp_path: Path, kind: str) -> None:
    def never() -> dict[str, Any]:
        raise AssertionError("a configured kind must not ask the cluster")

    s = load_settings(work_dir=tmp_path, kafka={"broker_kind": kind})
    got = broker_kind(s, describe=never)
    assert (got.kind, got.how) == (kind, "setting")


@pytest.mark.parametrize(
    ("cluster_id", "kind"),
    [("tansu_cluster", "tansu"), ("MkU3OEVBNTcwNTJENDM2Qk", "kafka"), (None, "kafka")],
)
def test_auto_detects_from_the_cluster_id(settings: Settings, cluster_id: Any, kind: str) -> None:
    got = broker_kind(settings, describe=lambda: {"cluster_id": cluster_id})
    assert (got.kind, got.how) == (kind, "detected")
    assert repr(cluster_id) in got.source


def test_failed_detection_assumes_kafka_and_warns(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def dead() -> dict[str, Any]:
        raise kafka.errors.KafkaTimeoutError("no answer")

    with caplog.at_level(logging.WARNING, logger="rtrec.streaming.kafka_compat"):
        got = broker_kind(settings, describe=dead)
    assert (got.kind, got.how) == ("kafka", "assumed")
    assert "KafkaTimeoutError" in got.source
    assert any("workaround is off" in m for m in warnings_of(caplog))


def test_announce_logs_at_info_and_sets_the_metric(caplog: pytest.LogCaptureFixture) -> None:
    kind = kafka_compat.BrokerKind("tansu", "detected", "cluster id 'tansu_cluster'")
    with caplog.at_level(logging.INFO, logger="rtrec.streaming.kafka_compat"):
        kafka_compat.announce(kind)
    assert any(
        r.levelno == logging.INFO and "broker kind: tansu" in r.getMessage() for r in caplog.records
    )
    labels = {"kind": "tansu", "how": "detected"}
    assert REGISTRY.get_sample_value("rtrec_stream_broker_info", labels) == 1.0
