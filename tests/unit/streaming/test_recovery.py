"""The processor's check that a polled batch belongs to the log its Redis state describes.

kafka-python fetches by topic name and refreshes its cached metadata only now and then.
After the embedded broker restarted empty, a fetch at the old log's positions returns the
recreated topic's events while the cached topic id still names the old log; judged
against the old log's applied offsets they were applied, and applied again once the new
id showed. These tests drive ``Recovery._log_changed`` with a consumer whose cached id
is stale until metadata is fetched again (the broker's side of that interplay is in
``tests/reliability/test_stream_restarts.py``).
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import TopicPartition
from rtrec.streaming import kafka_compat
from rtrec.streaming.recovery import Recovery

TOPIC = "rtrec.events"
OLD, NEW = uuid.uuid4(), uuid.uuid4()


class StaleMetadataConsumer:
    """The calls ``Recovery`` makes on a ``KafkaConsumer``: the cached topic id stays
    ``cached`` until ``topics()`` refreshes the metadata; the broker reports ``broker``,
    to ``topics()`` and to a metadata request sent through the client's internals
    (``direct``: whether the consumer has them)."""

    def __init__(
        self, cached: uuid.UUID | None, broker: uuid.UUID | None, *, direct: bool = True
    ) -> None:
        self.cached, self.broker = cached, broker
        self.calls: list[tuple[Any, ...]] = []
        self._client = SimpleNamespace(cluster=SimpleNamespace(topic_id=self._topic_id))
        if direct:
            self._manager = SimpleNamespace(send=self._send, wait_for=object())
            self._net = SimpleNamespace(run=self._run)

    def _send(self, request: Any) -> Any:
        self.calls.append(("metadata", [t.name for t in request.topics]))
        assert request.allow_auto_topic_creation is False
        return request

    def _run(self, wait: Any, request: Any, timeout_ms: int) -> Any:
        assert wait is self._manager.wait_for and timeout_ms > 0
        names = [t.name for t in request.topics]
        return SimpleNamespace(
            topics=[SimpleNamespace(name=n, topic_id=self.broker) for n in names]
        )

    def _topic_id(self, name: str) -> uuid.UUID | None:
        assert name == TOPIC
        return self.cached

    def topics(self) -> set[str]:
        self.calls.append(("topics",))
        self.cached = self.broker
        return {TOPIC}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", tp.partition, offset))

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.calls.append(("seek_to_beginning", *[tp.partition for tp in tps]))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    def committed(self, tp: TopicPartition) -> int | None:
        return None


class MarkerState:
    """The log marker side of ``RedisState``: ``adopt_log`` and ``reset_log``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.resets: list[tuple[str, str]] = []

    def adopt_log(self, log_id: str) -> str:
        return self.marker

    def reset_log(self, old: str, new: str) -> bool:
        self.resets.append((old, new))
        self.marker = new
        return True


class Checked(Recovery):
    """``Recovery`` over the fakes above (no offline buffer to write out)."""

    def __init__(self, consumer: StaleMetadataConsumer, state: MarkerState) -> None:
        self.settings = SimpleNamespace(kafka=SimpleNamespace(events_topic=TOPIC))
        self.consumer, self.state = consumer, state
        self.sink = SimpleNamespace(log_id=str(OLD), forget=lambda partitions=None: None)
        self.cache, self._epoch = {"u1": object()}, 1
        self._log_id, self._check_gap = str(OLD), set()

    def maybe_flush(self, *, force: bool = False, commit: bool = True) -> None:
        return None


def records(*spans: tuple[int, int, int]) -> list[Any]:
    """Polled records: per (partition, first offset, last offset), in offset order."""
    return [
        SimpleNamespace(topic=TOPIC, partition=p, offset=o)
        for p, first, last in spans
        for o in range(first, last + 1)
    ]


@pytest.fixture(autouse=True)
def fresh_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees a process in which no guard was turned off yet."""
    monkeypatch.setattr(kafka_compat, "_disabled", {})


@pytest.mark.parametrize("direct", [True, False])
def test_records_of_a_recreated_topic_are_judged_by_metadata_fetched_after_them(
    direct: bool,
) -> None:
    # Positions 1146.. of the old log; the recreated topic already holds events there.
    consumer = StaleMetadataConsumer(cached=OLD, broker=NEW, direct=direct)
    state = MarkerState(str(OLD))
    checked = Checked(consumer, state)
    assert checked._log_changed(records((0, 1146, 1179))) is True  # the batch is dropped
    # metadata fetched before the id was read: one request, or (without the internals)
    # the consumer's own refresh
    assert consumer.calls[0] == (("metadata", [TOPIC]) if direct else ("topics",))
    assert state.resets == [(str(OLD), str(NEW))]
    assert checked._log_id == str(NEW) and checked.cache == {}
    assert ("seek_to_beginning", 0) in consumer.calls  # the new log is read from its start
    assert ("fresh_topic_id" in kafka_compat.disabled_guards()) is not direct


def test_records_of_the_same_log_pass_after_one_metadata_request() -> None:
    consumer = StaleMetadataConsumer(cached=OLD, broker=OLD)
    state = MarkerState(str(OLD))
    assert Checked(consumer, state)._log_changed(records((0, 10, 12))) is False
    assert consumer.calls == [("metadata", [TOPIC])]  # not the rate-limited refresh
    assert state.resets == []


def test_a_batch_read_while_the_id_is_unknown_is_read_again_from_its_first_records() -> None:
    consumer = StaleMetadataConsumer(cached=None, broker=None)  # the topic being created
    checked = Checked(consumer, MarkerState(str(OLD)))
    assert checked._log_changed(records((0, 5, 9), (2, 40, 41))) is True
    seeks = [c[1:] for c in consumer.calls if c[0] == "seek"]
    assert sorted(seeks) == [(0, 5), (2, 40)]  # each partition at its first record
    assert ("topics",) in consumer.calls  # the metadata refreshed for the next look
    assert checked._log_id == str(OLD)  # nothing judged yet
