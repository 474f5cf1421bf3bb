"""The broker kind against the real embedded broker: Tansu is recognised by what it answers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from rtrec.streaming.kafka_compat import broker_kind

from rtrec.config import Settings
from tests.stream_helpers import isolated

pytestmark = pytest.mark.integration


def test_embedded_tansu_is_detected_from_its_cluster_id(stack: Settings) -> None:
    got = broker_kind(stack)
    assert (got.kind, got.how) == ("tansu", "detected")
    assert "tansu_cluster" in got.source


def test_processor_reports_the_broker_kind_at_start(
    stack: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from rtrec.streaming.processor import StreamProcessor

    s = isolated(stack, tmp_path)
    with caplog.at_level(logging.INFO, logger="rtrec.streaming.kafka_compat"):
        proc = StreamProcessor(s)
    try:
        status = proc.status()
        assert status["broker_kind"] == "tansu"
        assert status["broker_kind_source"] == "detected: cluster id 'tansu_cluster'"
        assert status["disabled_guards"] == {}  # every internal found in this kafka-python
        assert any("workaround on" in r.getMessage() for r in caplog.records)
    finally:
        proc.close()
    forced = s.model_copy(update={"kafka": s.kafka.model_copy(update={"broker_kind": "kafka"})})
    assert broker_kind(forced).kind == "kafka"  # a setting overrides what Tansu answers
