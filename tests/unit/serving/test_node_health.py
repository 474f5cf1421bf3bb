"""Per-node breakers of a Redis Cluster online store (``rtrec.serving.node_health``) and
how the serving reader uses them: one node down costs only the users whose slots it serves."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot
from rtrec.serving.node_health import SLOTS, NodeHealth, SlotMap
from rtrec.serving.online import GuardedFeatures

from rtrec.config import load_settings
from rtrec.errors import Unavailable

A, B, C = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"
THIRDS = [(0, 5460, A), (5461, 10922, B), (10923, SLOTS - 1, C)]


def _sample(name: str, node: str) -> float:
    return REGISTRY.get_sample_value(name, {"node": node}) or 0.0


def test_the_slot_map_parses_cluster_slots_and_finds_each_slots_node() -> None:
    reply = [
        [10923, 16383, [b"127.0.0.1", 7003, b"id3"]],
        [0, 5460, [b"", 7001, b"id1"]],  # empty host: the node that answered
        [5461, 10922, [b"127.0.0.1", 7002, b"id2"], [b"127.0.0.1", 7102, b"r2"]],
    ]
    slots = SlotMap.from_reply(reply, "127.0.0.1")
    assert slots.nodes == [A, B, C] and slots.covered == SLOTS
    for slot, node in ((0, A), (5460, A), (5461, B), (10922, B), (10923, C), (16383, C)):
        assert slots.node_for(slot) == node
    gap = SlotMap([(0, 99, A), (200, 299, B)])
    assert gap.node_for(150) is None and gap.node_for(300) is None and gap.covered == 200
    with pytest.raises(ValueError, match="overlapping"):
        SlotMap([(0, 100, A), (100, 200, B)])


def test_a_node_trips_after_failures_in_a_row_or_at_once_and_reports_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = NodeHealth("online store", trip_after=3)
    trips = _sample("rtrec_serving_online_node_trips_total", B)
    with caplog.at_level(logging.INFO, logger="rtrec.serving.node_health"):
        assert not health.failed(B, "late") and not health.failed(B, "late")
        health.succeeded(B)  # an answer in time: the count starts again
        assert not health.failed(B, "late") and not health.failed(B, "late")
        assert health.reason(B) is None
        assert health.failed(B, "late 3")
        assert health.down == {B: "late 3"} and health.reason(A) is None
        assert not health.trip(B, "ping failed")  # already down: counted once
        assert health.reason(B) == "ping failed"
        health.observe({A: None, B: None, C: None})
    assert health.down == {}
    assert _sample("rtrec_serving_online_node_trips_total", B) == trips + 1
    assert _sample("rtrec_serving_online_node_down", B) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and B in warnings[0] and "late 3" in warnings[0]
    assert any(B in r.getMessage() and "answers again" in r.getMessage() for r in caplog.records)

    health.observe({A: None, C: "ping failed: refused"})  # the probe trips at once
    assert health.down == {C: "ping failed: refused"}
    assert _sample("rtrec_serving_online_node_down", C) == 1
    health.observe({A: None, B: None})  # C left the layout: not down forever
    assert health.down == {}


class Reader:
    """The asyncio reader's surface: keys as Feast writes them, a read that fails or stalls
    for keys on the nodes the test names."""

    prepared = True

    def __init__(self, slots: SlotMap) -> None:
        self.slots = slots
        self.failing: set[str] = set()
        self.stalling: set[str] = set()
        self.reads = 0

    def redis_key(self, ident: str) -> bytes:
        return ident.encode() + b"project"

    async def read(self, ids: list[str]) -> list[dict[str, Any]]:
        self.reads += 1
        nodes = {self.slots.node_for(key_slot(self.redis_key(u))) for u in ids}
        if nodes & self.failing:
            raise Unavailable(f"online store read failed at {sorted(nodes & self.failing)}")
        if nodes & self.stalling:
            await asyncio.sleep(1.0)
        return [{"user": u} for u in ids]


def _users_by_node(reader: Reader) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {A: [], B: [], C: []}
    n = 0
    while min(len(v) for v in found.values()) < 3:
        user = f"u{n}"
        found[reader.slots.node_for(key_slot(reader.redis_key(user)))].append(user)
        n += 1
    return found


def _cluster_guard(tmp_path: Path) -> tuple[GuardedFeatures, Reader, dict[str, list[str]]]:
    settings = load_settings(
        work_dir=tmp_path,
        redis={"url": "redis://127.0.0.1:7001", "cluster": True, "password": "unused"},
        cluster={"redis": {"ports": [7001, 7002, 7003]}},
    )
    guard = GuardedFeatures(settings, timeout_s=0.05, trip_after_timeouts=2)
    assert guard.nodes is not None  # a cluster: a breaker per node
    reader = Reader(SlotMap(THIRDS))
    guard.reader, guard.slots = reader, reader.slots  # type: ignore[assignment]
    return guard, reader, _users_by_node(reader)


async def _outcome(guard: GuardedFeatures, user: str) -> str:
    try:
        await guard.read([user])
        return "read"
    except Unavailable as exc:
        return str(exc)


def test_failed_reads_of_one_node_cost_only_its_users(tmp_path: Path) -> None:
    guard, reader, users = _cluster_guard(tmp_path)
    reader.failing = {B}

    async def scenario() -> list[str]:
        return [await _outcome(guard, u) for u in (users[B][0], users[A][0], users[B][1])]

    first = asyncio.run(scenario())
    assert first[1] == "read" and "read failed" in first[0] and "read failed" in first[2]
    assert guard.nodes_down.keys() == {B}  # two failures in a row: B marked down
    assert guard.down_reason is None  # the store's own breaker stays closed
    reads = reader.reads
    after = asyncio.run(scenario())
    assert after[1] == "read" and reader.reads == reads + 1  # B's users not even asked
    assert after[0].startswith(f"online store node {B} marked down")
    for user in users[A] + users[C]:
        assert asyncio.run(_outcome(guard, user)) == "read"
    guard.nodes.observe({A: None, B: None, C: None})  # type: ignore[union-attr]
    reader.failing = set()
    assert [asyncio.run(_outcome(guard, u)) for u in users[B]] == ["read"] * len(users[B])


def test_late_reads_of_one_node_trip_it_within_the_deadline(tmp_path: Path) -> None:
    guard, reader, users = _cluster_guard(tmp_path)
    reader.stalling = {C}

    async def scenario() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        got = [await _outcome(guard, u) for u in (users[C][0], users[A][0], users[C][1])]
        got.append(await _outcome(guard, users[C][2]))
        return got, loop.time() - start

    got, seconds = asyncio.run(scenario())
    assert got[1] == "read"
    assert all(f"read exceeded 50 ms at node {C}" in g for g in (got[0], got[2]))
    assert got[3].startswith(f"online store node {C} marked down")  # at once, no wait
    assert seconds < 0.5, seconds  # two deadlines, not two stalls
    assert guard.nodes_down.keys() == {C}


class Node:
    """A node client for the probe: answers PING and CLUSTER SLOTS, or refuses."""

    def __init__(self, layout: list[list[Any]]) -> None:
        self.layout, self.refuse = layout, False

    def ping(self) -> bool:
        if self.refuse:
            raise ConnectionError("Connection refused")
        return True

    def execute_command(self, *args: str) -> list[list[Any]]:
        assert args == ("CLUSTER SLOTS",)
        return self.layout


def test_the_probe_marks_each_node_and_opens_the_store_only_when_none_answers(
    tmp_path: Path,
) -> None:
    guard, _, _ = _cluster_guard(tmp_path)
    layout = [[lo, hi, [b"127.0.0.1", int(n.rsplit(":")[1]), b"id"]] for lo, hi, n in THIRDS]
    clients = {n: Node(layout) for n in (A, B, C)}
    guard._node_clients = clients  # type: ignore[assignment]
    guard.slots = None
    assert guard.probe() is None and guard.slots is not None and guard.nodes_down == {}
    clients[A].refuse = True  # the URL's own node: the layout comes from another one
    assert guard.probe() is None
    assert guard.nodes_down.keys() == {A} and "refused" in guard.nodes_down[A]
    assert guard.slots.covered == SLOTS
    clients[B].refuse = clients[C].refuse = True
    reason = guard.probe()
    assert reason is not None and reason.startswith("no Redis Cluster node answered")
    assert guard.nodes_down.keys() == {A, B, C}
    for client in clients.values():
        client.refuse = False
    assert guard.probe() is None and guard.nodes_down == {}
