"""What the stream processor needs beyond kafka-python's public API, said out loud.

Internals: a few of the processor's guards read kafka-python state that has no public
API (the client's cached cluster metadata, the group coordinator's generation and
assignment snapshot). A kafka-python release that moves one turns that guard off, and
:func:`internal` says so once at WARNING (the attribute and the kafka-python version)
and in ``rtrec_stream_guard_disabled{guard,attribute}`` rather than silently.

Broker kind: the embedded broker (Tansu) can hand a group's leader a stale assignment,
which the processor works around; that workaround is for Tansu only.
:func:`broker_kind` takes ``kafka.broker_kind`` or, on ``auto``, asks the cluster for its
id (``DescribeCluster`` through the admin client's public API): Tansu answers with its
default id ``tansu_cluster``, a Kafka cluster with a generated one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import kafka
from rtrec.streaming import metrics

from rtrec.config import Settings

logger = logging.getLogger(__name__)

GUARDS = {
    "partition_count": "rejoining the group when the topic's partition count changes",
    "assignment_snapshot": "checking the leader's assignment snapshot against the topic",
    "stale_assignment": "the Tansu stale-assignment check (rejoin as a new member)",
    "topic_id": "noticing that the topic was created again (a new topic id)",
}
"""Guard name -> what stops working without its internal."""

PARTITIONS_FOR_TOPIC = "_client.cluster.partitions_for_topic"
TOPIC_ID = "_client.cluster.topic_id"
ASSIGNMENT_SNAPSHOT = "_coordinator._assignment_snapshot"
REQUEST_REJOIN = "_coordinator.request_rejoin"
MEMBER_ID = "_coordinator._generation.member_id"
INTERNALS = {
    PARTITIONS_FOR_TOPIC: "partition_count",
    REQUEST_REJOIN: "partition_count",
    ASSIGNMENT_SNAPSHOT: "assignment_snapshot",
    MEMBER_ID: "stale_assignment",
    TOPIC_ID: "topic_id",
}
"""Every ``KafkaConsumer`` internal the processor reads -> the guard that needs it."""

TANSU_CLUSTER_ID = "tansu_cluster"
"""The cluster id Tansu reports unless started with ``--cluster-id``."""

_MISSING = object()
_disabled: dict[str, str] = {}
_lock = threading.Lock()


def internal(consumer: Any, path: str) -> Any:
    """``consumer.<path>`` (one of :data:`INTERNALS`), or None when an attribute on the way
    is missing, which turns its guard off: logged once at WARNING and shown in metrics."""
    value = consumer
    for name in path.split("."):
        value = getattr(value, name, _MISSING)
        if value is _MISSING:
            _disable(INTERNALS[path], f"{type(consumer).__name__}.{path}")
            return None
    return value


def _disable(guard: str, attribute: str) -> None:
    with _lock:
        if guard in _disabled:
            return
        _disabled[guard] = attribute
    metrics.GUARD_DISABLED.labels(guard, attribute).set(1)
    logger.warning(
        "kafka-python %s has no %s: %s is off",
        kafka.__version__,
        attribute,
        GUARDS[guard],
    )


def disabled_guards() -> dict[str, str]:
    """Guard -> the missing attribute, for every guard turned off in this process."""
    with _lock:
        return dict(_disabled)


@dataclass(frozen=True)
class BrokerKind:
    kind: Literal["tansu", "kafka"]
    how: Literal["setting", "detected", "assumed"]
    """``assumed``: detection failed and ``kafka`` (no Tansu workaround) was taken."""
    source: str
    """What the decision rests on, for logs and status."""


def broker_kind(
    settings: Settings, *, describe: Callable[[], dict[str, Any]] | None = None
) -> BrokerKind:
    """Which broker the processor talks to (``describe``: the cluster description,
    injectable for tests; default a short-lived admin client's ``describe_cluster``)."""
    configured = settings.kafka.broker_kind
    if configured != "auto":
        return BrokerKind(configured, "setting", f"kafka.broker_kind is {configured!r}")
    try:
        cluster_id = (describe or (lambda: _describe(settings)))().get("cluster_id")
    except Exception as exc:  # any client failure: say so, and run without the workaround
        reason = f"{type(exc).__name__}: {exc}"[:300]
        logger.warning(
            "could not detect the broker kind (%s); assuming a Kafka broker, so the Tansu "
            "group-assignment workaround is off (set kafka.broker_kind to choose)",
            reason,
        )
        return BrokerKind("kafka", "assumed", f"detection failed: {reason}")
    kind: Literal["tansu", "kafka"] = "tansu" if cluster_id == TANSU_CLUSTER_ID else "kafka"
    return BrokerKind(kind, "detected", f"cluster id {cluster_id!r}")


def _describe(settings: Settings) -> dict[str, Any]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, request_timeout_ms=10_000
    )
    try:
        return admin.describe_cluster()
    finally:
        admin.close()


def announce(kind: BrokerKind) -> None:
    """Log the broker kind at INFO and publish it as ``rtrec_stream_broker_info``."""
    metrics.BROKER.labels(kind.kind, kind.how).set(1)
    logger.info(
        "broker kind: %s (%s); Tansu group-assignment workaround %s",
        kind.kind,
        kind.source,
        "on" if kind.kind == "tansu" else "off",
    )
