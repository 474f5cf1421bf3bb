"""The stream processor's Redis scripts on a real three-node Redis Cluster.

The fixture starts three ``redis-server`` nodes in cluster mode in a temporary directory,
joins them with ``redis-cli --cluster create`` and stops every node afterwards. The
tests run the processor's state commits, reset, offline record and watermark read, and
the experiment commit and lease through ``redis.cluster.RedisCluster``: a call whose keys
spanned slots would fail with CROSSSLOT here, where one Redis never does.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rtrec.streaming.aggregates import WINDOW_HOURS, ItemDelta
from rtrec.streaming.attribution import ArmDelta, Tally
from rtrec.streaming.experiment_state import ExperimentState
from rtrec.streaming.state import FENCED, RedisState
from rtrec.streaming.state_layout import items_call
from rtrec.streaming.watermark import read_watermark

from rtrec.config import Settings
from tests.conftest import cluster_ports

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server here"),
]

NODES = 3
START_S = 30.0
CREATE = ["--cluster-replicas", "0", "--cluster-yes"]


def _wait_ok(port: int) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        info = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True
        ).stdout
        if "cluster_state:ok" in info:
            return
        time.sleep(0.2)
    raise AssertionError(f"cluster node {port} not ok after {START_S:g} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from redis.cluster import RedisCluster

    root: Path = tmp_path_factory.mktemp("redis-cluster")
    ports = cluster_ports(NODES)
    procs = []
    try:
        for port in ports:
            d = root / str(port)
            d.mkdir()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d)]
            args += ["--save", "", "--appendonly", "no"]
            procs.append(
                subprocess.Popen(
                    ["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port in ports:
            deadline = time.monotonic() + START_S
            while (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "ping"], capture_output=True
                ).stdout.strip()
                != b"PONG"
            ):
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.1)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], *CREATE],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            _wait_ok(port)
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        yield client
        client.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def _settings(group: str) -> Settings:
    return Settings.model_validate({"work_dir": "/nonexistent", "kafka": {"consumer_group": group}})


def test_the_batch_commit_runs_per_slot_on_a_cluster(cluster: Any) -> None:
    """Users and items of one batch live on several nodes; each call stays in one slot,
    and the fences and exactly-once folding hold across the calls."""
    cluster.flushall()
    state = RedisState(_settings("g1"), cluster, WINDOW_HOURS)
    assert state.adopt_log("L1") == "L1"
    nodes = {cluster.get_node_from_key(k).name for k in (state.offsets_key, state.trending_key)}
    assert len(nodes) == 2, "the two slots of a batch should live on two nodes here"
    users = {f"u{n}": f'{{"n":{n}}}'.encode() for n in range(50)}
    items = {f"i{n}": ItemDelta({1000: 2}, 1.5) for n in range(50)}
    out = state.commit(
        offsets={0: (-1, 9)}, states=users, batch_hour=1000, items=items, log_id="L1"
    )
    assert isinstance(out, dict) and out["i7"] == ([2] * len(WINDOW_HOURS), 1.5)
    applied, item_applied, raws = state.read(["u3", "u49"])
    assert applied == item_applied == {0: 9}
    assert raws == [b'{"n":3}', b'{"n":49}']

    # The same batch again (a member fenced off by a rebalance): nothing written.
    again = state.commit(
        offsets={0: (-1, 9)}, states=users, batch_hour=1000, items=items, log_id="L1"
    )
    assert again == FENCED

    # A commit that stopped after its item call: the redelivery folds users only.
    more = {"i7": ItemDelta({1000: 1}, 0.5)}
    state._run(items_call(state.keys, {0: (9, 12)}, more, 1000, state.window_hours, "L1"))
    applied, item_applied, _ = state.read([])
    assert (applied, item_applied) == ({0: 9}, {0: 12})
    out = state.commit(
        offsets={0: (9, 12)},
        item_offsets={0: (12, 12)},
        states={"u3": b'{"n":33}'},
        batch_hour=1000,
        items={"i7": ItemDelta()},
        log_id="L1",
    )
    assert out == {"i7": ([3] * len(WINDOW_HOURS), 2.0)}  # counted once
    assert state.read([])[:2] == ({0: 12}, {0: 12})

    assert state.record_offline({0: (12, 5000)}, {0: 12}, log_id="L1")
    mark = read_watermark(cluster, _settings("g1"))  # one MULTI, one slot
    assert (mark.log_id, mark.through) == ("L1", {0: 12})
    assert state.reset_log("L1", "L2")
    assert state.read([])[:2] == ({}, {})


def test_a_lost_item_slot_answers_lost_on_a_cluster(cluster: Any) -> None:
    cluster.flushall()
    state = RedisState(_settings("g2"), cluster, WINDOW_HOURS)
    state.adopt_log("L1")
    cluster.delete(state.keys.item_log)  # that node lost its data
    out = state.commit(offsets={1: (-1, 3)}, states={}, batch_hour=5, items={}, log_id="L1")
    assert out == "lost"


def test_the_experiment_commit_and_lease_run_on_a_cluster(cluster: Any) -> None:
    cluster.flushall()
    exp = ExperimentState(_settings("g3"), cluster, "me")
    assert exp.hold_lease(5000)
    assert not ExperimentState(_settings("g3"), cluster, "other").hold_lease(5000)
    tally = Tally(high={("impressions", 0): 4})
    tally.arms[("e1", "champion")] = ArmDelta({"impressions": 3}, {"a", "b"}, {"a"}, 10, 20)
    rows = exp.commit(tally, applied={}, states={"u1": b"{}"}, ttl_s=60)
    assert exp.read(["u1", "u2"])[1] == [b"{}", None]
    assert rows is not None and rows[0][2]["impressions"] == 3 and rows[0][2]["users"] == 2
    assert exp.applied() == {("impressions", 0): 4}
    exp.release_lease()
    assert ExperimentState(_settings("g3"), cluster, "other").hold_lease(5000)
    # The readout reads every arm in one transaction, which a cluster allows in one slot.
    from rtrec.serving.experiment_readout import experiment_status

    readout = experiment_status(_settings("g3"), client=cluster)
    assert readout["experiments"][0]["variants"]["champion"]["users"] == 2


def test_a_log_reset_cut_short_between_slots_finishes_on_the_next_look(cluster: Any) -> None:
    cluster.flushall()
    state = RedisState(_settings("g4"), cluster, WINDOW_HOURS)
    state.adopt_log("L1")
    state.commit(offsets={0: (-1, 5)}, states={"u": b"{}"}, batch_hour=1, items={}, log_id="L1")
    cluster.set(state.log_key, "L2")  # the group slot was reset to L2, the item slot not yet
    cluster.delete(state.offsets_key)
    assert state.adopt_log("L2") == "L1"  # the item slot still names the old log
    assert state.reset_log("L1", "L2")
    assert state.adopt_log("L2") == "L2"
    assert state.read([])[:2] == ({}, {})
    out = state.commit(offsets={0: (-1, 2)}, states={}, batch_hour=1, items={}, log_id="L2")
    assert out == {}
