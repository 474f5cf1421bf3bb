"""Alerts: drift verdicts on the Kafka alerts topic and in the log, for on-call tooling."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)


def alert_record(kind: str, verdict: dict[str, Any], **context: Any) -> dict[str, Any]:
    """The JSON shape of every alert: kind, severity, time, reason, the verdict and context."""
    return {
        "kind": kind,
        "severity": "warning" if verdict.get("drifted") else "info",
        "ts": int(time.time() * 1000),
        "reason": verdict.get("reason", ""),
        "verdict": verdict,
        **context,
    }


def send_alert(settings: Settings, record: dict[str, Any], *, timeout_s: float = 10.0) -> None:
    """Log the alert and publish it to ``settings.kafka.alerts_topic``.

    The log line is written first, so an unreachable broker never hides an alert; the
    broker failure is then raised as :class:`Unavailable` for the caller to surface.
    """
    logger.warning("ALERT %s: %s", record["kind"], record["reason"], extra={"alert": record})
    try:
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            max_block_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000),
        )
        try:
            producer.send(
                settings.kafka.alerts_topic, json.dumps(record, default=str).encode()
            ).get(timeout=timeout_s)
        finally:
            producer.close(timeout=timeout_s)
    except Exception as exc:
        raise Unavailable(
            f"alert logged but not published to {settings.kafka.alerts_topic}: {exc}"
        ) from exc
