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

Group membership (:class:`GroupMembership`, mixed into the processor): the consumer's
settings the guards rely on (:func:`group_consumer`), a rejoin when the topic's partition
count changed under the group's assignment, and the Tansu stale-assignment check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import kafka
from kafka import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from rtrec.streaming import metrics

from rtrec.config import Settings

logger = logging.getLogger(__name__)

GUARDS = {
    "partition_count": "rejoining the group when the topic's partition count changes",
    "assignment_snapshot": "checking the leader's assignment snapshot against the topic",
    "stale_assignment": "the Tansu stale-assignment check (rejoin as a new member)",
    "topic_id": "noticing that the topic was created again (a new topic id)",
    "fresh_topic_id": "one metadata request per batch (else the rate-limited refresh)",
}
"""Guard name -> what stops working without its internal."""

PARTITIONS_FOR_TOPIC = "_client.cluster.partitions_for_topic"
TOPIC_ID = "_client.cluster.topic_id"
METADATA_SEND = "_manager.send"
METADATA_WAIT = "_manager.wait_for"
NET_RUN = "_net.run"
ASSIGNMENT_SNAPSHOT = "_coordinator._assignment_snapshot"
REQUEST_REJOIN = "_coordinator.request_rejoin"
MEMBER_ID = "_coordinator._generation.member_id"
INTERNALS = {
    PARTITIONS_FOR_TOPIC: "partition_count",
    REQUEST_REJOIN: "partition_count",
    ASSIGNMENT_SNAPSHOT: "assignment_snapshot",
    MEMBER_ID: "stale_assignment",
    TOPIC_ID: "topic_id",
    METADATA_SEND: "fresh_topic_id",
    METADATA_WAIT: "fresh_topic_id",
    NET_RUN: "fresh_topic_id",
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


# ---- consumer-group workarounds ------------------------------------------------------------
FETCH_MAX_WAIT_MS = 20
"""How long the broker may hold a fetch waiting for data. With the 500 ms default,
freshness against Tansu showed a ~150 ms stall every half second (measured at 5k
events/s); 20 ms removed it at no throughput cost."""
METADATA_MAX_AGE_MS = 5_000


def group_consumer(settings: Settings, *, max_records: int, assignor: RecordingRange) -> Any:
    """The processor's ``KafkaConsumer`` (not yet subscribed): manual commits, large
    fetches, and the broker-facing settings its guards rely on."""
    from kafka import KafkaConsumer

    k = settings.kafka
    return KafkaConsumer(
        bootstrap_servers=k.bootstrap_servers,
        group_id=k.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=max(k.session_timeout_ms // 4, 300),
        max_poll_records=max_records,
        fetch_max_bytes=64 * 1024 * 1024,
        # 1 MB a partition (the default) is ~7k events: a backlog then costs a fetch
        # round trip every few thousand events.
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        reconnect_backoff_max_ms=2000,
        # Partitions added to the topic (or a topic created again with another count,
        # as the embedded broker does after a restart) are only noticed at a metadata
        # refresh; the 5-minute default left new partitions unread that long.
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        partition_assignment_strategy=[assignor],
    )


class RecordingRange(RangePartitionAssignor):
    """The range assignor, remembering what it computed (per member: this topic's
    partitions) so that the leader can check what the broker hands back."""

    def __init__(self) -> None:
        self.computed: dict[str, set[int]] | None = None

    def assign(self, cluster: Any, members: Any) -> Any:  # type: ignore[override]
        out = RangePartitionAssignor.assign(cluster, members)
        self.computed = {
            member: {p for _topic, parts in a.assigned_partitions for p in parts}
            for member, a in out.items()
        }
        return out


class GroupMembership:
    """The processor's guards around kafka-python's group membership (mixed into
    ``StreamProcessor``): a topic whose partition count changed is noticed and the group
    rejoined, and against Tansu a stale assignment handed to the leader is refused by
    rejoining as a new member."""

    settings: Settings
    consumer: Any
    broker: BrokerKind
    _assignor: RecordingRange
    _stale_assignment: bool
    _known_partitions: int

    def on_assigned(self, partitions: list[int]) -> None:
        """Provided by ``StreamProcessor``: take over the assigned partitions."""
        raise NotImplementedError

    def on_revoked(self) -> None:
        """Provided by ``StreamProcessor``: make the revoked partitions' work durable."""
        raise NotImplementedError

    def _subscribe(self) -> None:
        self.consumer.subscribe([self.settings.kafka.events_topic], listener=_Rebalance(self))

    def _partition_count(self) -> int:
        """Partitions of the events topic in the consumer's cached metadata (0: unknown)."""
        lookup = internal(self.consumer, PARTITIONS_FOR_TOPIC)
        found = lookup(self.settings.kafka.events_topic) if lookup is not None else None
        return len(found or ())

    def _rejoin_if_partitions_changed(self) -> None:
        """Rejoin the group when the topic's partitions differ from those the group's
        last assignment was computed from (partitions added; a topic created again with
        another count, as the embedded broker does after a restart). kafka-python
        compares against a metadata snapshot it does not always refresh; a partition
        nobody is assigned is never read. The leader (which computed the assignment)
        checks its snapshot; every member checks the count it saw when assigned."""
        now = self._partition_count()
        if not now:
            return
        snapshot = internal(self.consumer, ASSIGNMENT_SNAPSHOT) or {}
        planned = snapshot.get(self.settings.kafka.events_topic)
        was = len(planned) if planned is not None else self._known_partitions
        if not was or now == was:
            return
        logger.warning(
            "topic %s has %d partitions, the assignment saw %d: rejoining the group",
            self.settings.kafka.events_topic,
            now,
            was,
        )
        self._known_partitions = now
        rejoin = internal(self.consumer, REQUEST_REJOIN)
        if rejoin is None:
            return
        if snapshot:
            self.consumer._coordinator._assignment_snapshot = None  # judged: rejoin once
        rejoin()

    def _assignment_is_stale(self, partitions: list[int]) -> bool:
        """As the group's leader: did the broker hand back the assignment we computed?

        The embedded broker (Tansu) keeps a group's generation when its only member
        rejoins, and answers every later SyncGroup of that generation with the first
        assignment it stored: after a topic came back with more partitions, the leader
        sends all of them and is given the old ones, and the rest are never read. A
        Kafka broker hands back what the leader sent, so only Tansu is checked.
        """
        computed, self._assignor.computed = self._assignor.computed, None
        if self.broker.kind != "tansu" or computed is None:
            return False
        member = internal(self.consumer, MEMBER_ID)
        if member not in computed:
            return False  # not the leader this round: nothing to compare with
        if computed[member] == set(partitions):
            return False
        logger.warning(
            "the broker assigned partitions %s, the leader computed %s (a stale group "
            "generation): rejoining the group as a new member",
            sorted(partitions),
            sorted(computed[member]),
        )
        return True

    def _rejoin_as_new_member(self) -> None:
        """Leave the group and subscribe again: a new member id makes the broker start
        a new generation, which takes the leader's assignment."""
        self._stale_assignment = False
        self.on_revoked()  # unsubscribing revokes without calling the listener
        self.consumer.unsubscribe()
        self._subscribe()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, member: GroupMembership) -> None:
        self.member = member

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.member.on_revoked()

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.member.on_assigned([tp.partition for tp in assigned])
