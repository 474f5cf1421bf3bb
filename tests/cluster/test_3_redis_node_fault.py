"""One Redis Cluster node stopped (the nodes have no replicas) while events stream in.

Serving answers every request (never a 5xx): the flagged fallback for exactly the users
whose slots the stopped node served, the usual answer for everyone else, and both replicas
show the node in ``/status``, ``/metrics`` and a WARNING. The two stream processors hold
back (their batches fail and rewind to the committed offsets; nothing is committed past
what Redis holds). ``rtrec up --profile cluster`` starts the node again with its data (its
append-only file): serving reads its users again, the processors apply what they held
back, and the online features equal those computed straight from the events.
"""

from __future__ import annotations

import time
from itertools import cycle
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from rtrec.app import cluster_redis
from rtrec.app.cli import main
from rtrec.app.cluster_stream import processors
from rtrec.app.processes import managed_pid, stop_managed
from rtrec.config import Settings
from tests.cluster.support import (
    FAULT_KEYS,
    REPLICAS,
    committed,
    own_users_events,
    recommend,
    url,
)
from tests.stream_helpers import assert_online_equals, reference, wait_for

STOPPED = cluster_redis.node_name(2)
PROBE_USERS = 36
PACE_S = 0.02
"""Between requests: the fault keys' combined rate stays under their limits."""


def _node_of(settings: Settings, users: list[str]) -> dict[str, str]:
    """Each user's online-feature key's node (``host:port``), as the cluster lays it out."""
    from redis.crc import key_slot
    from rtrec.features import OnlineReader

    from rtrec.redis_clients import redis_client

    reader = OnlineReader.for_users(settings)
    reader.prepare()
    nodes = redis_client(settings).nodes_manager
    return {u: nodes.get_node_from_slot(key_slot(reader.redis_key(u))).name for u in users}


def _write_probe_rows(settings: Settings, users: list[str]) -> None:
    """Feature rows with a history of catalog items: these users are served normally."""
    from rtrec.features import write_rows
    from rtrec.features.definitions import USER_STREAM_VIEW, user_stream_fields

    now_ms = int(time.time() * 1000)
    counts = dict.fromkeys(user_stream_fields(), 1)
    rows = [
        (u, {**counts, "recent_items": [f"i{n}", f"i{n + 1}"], "last_event_ms": now_ms}, now_ms)
        for n, u in enumerate(users)
    ]
    write_rows(settings, USER_STREAM_VIEW, rows)


def _ask_all(settings: Settings, users: list[str]) -> dict[str, dict[str, Any]]:
    """One /recommend through nginx per user: its status and fallback flag and reason."""
    out = {}
    keys = cycle(FAULT_KEYS)
    with httpx.Client(base_url=url(settings), timeout=10) as c:
        for user in users:
            r = recommend(c, next(keys), user)
            body = r.json() if r.status_code == 200 else {}
            out[user] = {
                "status": r.status_code,
                "fallback": body.get("fallback"),
                "reason": body.get("fallback_reason") or "",
                "replica": r.headers.get("x-rtrec-replica", ""),
            }
            time.sleep(PACE_S)
    return out


def _replica_views(settings: Settings) -> list[tuple[dict[str, Any], str]]:
    """Each replica's own /status and /metrics (straight to its port, not through nginx)."""
    views = []
    for port in settings.cluster.serving.replica_ports:
        base = f"http://{settings.serving.host}:{port}"
        headers = {"X-API-Key": FAULT_KEYS[0]}
        status = httpx.get(f"{base}/status", headers=headers, timeout=5).json()
        metrics = httpx.get(f"{base}/metrics", headers=headers, timeout=5).text
        views.append((status, metrics))
    return views


@pytest.fixture
def node_down(settings: Settings) -> Any:
    """Stops the node (SIGTERM: Redis writes its append-only file and exits); whatever
    the test does, ``rtrec up --profile cluster`` starts it again afterwards."""
    host, port = settings.redis.host_port[0], settings.cluster.redis.ports[1]
    yield f"{host}:{port}"
    if managed_pid(settings, STOPPED) is None:
        CliRunner().invoke(main, ["up", "--profile", "cluster"])


def _log_has(settings: Settings, names: list[str], text: str) -> bool:
    return all(text in (settings.log_dir / f"{n}.log").read_text(errors="replace") for n in names)


def test_a_stopped_node_costs_only_its_users_and_the_processors_lose_nothing(
    settings: Settings, node_down: str
) -> None:
    from rtrec.streaming import replay_dataset

    users = [f"probe-{n}" for n in range(PROBE_USERS)]
    _write_probe_rows(settings, users)
    on_stopped = {u for u, node in _node_of(settings, users).items() if node == node_down}
    assert 0 < len(on_stopped) < len(users), on_stopped  # users on both sides
    before = _ask_all(settings, users)
    assert all(a["status"] == 200 and a["fallback"] is False for a in before.values()), before
    data = own_users_events("fault-", seed=13, start_ts=1_760_000_000_000)
    assert node_down in _node_of(settings, data.users["user_id"].tolist()).values()

    base = committed(settings)  # every earlier test's events
    assert stop_managed(settings, STOPPED)
    stopped = time.monotonic()
    replay_dataset(settings, data, progress=False)
    published = time.monotonic()

    def marked_down() -> bool:
        return all(node_down in st["online_store_nodes_down"] for st, _ in _replica_views(settings))

    wait_for(marked_down, 30, "both replicas did not mark the stopped node down")
    print(f"both replicas marked {node_down} down {time.monotonic() - stopped:.1f} s after")
    replicas = set()
    for _ in range(2):  # nginx spreads each round over both replicas
        during = _ask_all(settings, users)
        assert {a["status"] for a in during.values()} == {200}, during  # never a 5xx
        assert {u for u, a in during.items() if a["fallback"]} == on_stopped, during
        assert all(node_down in during[u]["reason"] for u in on_stopped), during
        replicas |= {a["replica"] for a in during.values()}
    assert replicas == REPLICAS
    for status, metrics in _replica_views(settings):
        assert status["online_store_down"] is None, status  # the store itself is up
        down = [ln for ln in metrics.splitlines() if ln.startswith("rtrec_serving_online_node_d")]
        assert any(f'node="{node_down}"' in ln and ln.endswith(" 1.0") for ln in down), down
    assert _log_has(settings, sorted(REPLICAS), f"node {node_down} marked down")

    # The processors hold back: alive, their batches rewound, nothing committed past Redis.
    time.sleep(max(0.0, 8.0 - (time.monotonic() - published)))  # 4 offline flushes' time
    done = committed(settings)
    assert done < base + len(data.events), (base, done)
    names = [name for name, _ in processors(settings)]
    assert all(managed_pid(settings, n) is not None for n in names)  # running, not crashed
    assert _log_has(settings, names, "rewinding to committed offsets")

    started = time.monotonic()
    out = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    print(f"node back through rtrec up in {time.monotonic() - started:.1f} s")
    assert out.exit_code == 0, out.output
    wait_for(
        lambda: not any(st["online_store_nodes_down"] for st, _ in _replica_views(settings)),
        30,
        "the replicas did not see the node back",
    )

    def served_normally() -> bool:
        answers = _ask_all(settings, users).values()
        return all(a["status"] == 200 and a["fallback"] is False for a in answers)

    wait_for(served_normally, 30, "its users were not served normally again")
    print(f"every user served normally {time.monotonic() - started:.1f} s after `up` began")

    def all_committed() -> bool:
        return committed(settings) >= base + len(data.events)

    wait_for(all_committed, 120, "the processors did not commit every event after the return")
    print(f"every held-back event committed {time.monotonic() - started:.1f} s after `up` began")
    assert_online_equals(settings, reference(data.events))  # nothing lost, nothing twice
