"""The cluster profile's Redis Cluster and its serving replicas behind nginx, really run.

``rtrec up --profile cluster`` (the CLI, with ``RTREC_CONFIG`` at the profile's settings
file, free ports and a fresh work dir) starts everything once for the module. Then: a
three-node Redis Cluster serves every slot behind a password that is on no command line;
Feast, rtrec's own writer and the two stream processors write into it and the serving reader
and Feast read the same values back; nginx spreads requests over both replicas, answers
oversized requests itself and cuts slow clients off; the Redis-shared rate limit holds
across the replicas; a replica killed under load is routed around and ``up`` brings it
back; and ``rtrec down --profile cluster`` leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from click.testing import CliRunner

from rtrec.app import cluster
from rtrec.app.cli import main
from rtrec.app.processes import alive, managed_names, managed_pid
from rtrec.config import Settings, load_settings
from rtrec.redis_clients import PASSWORD_FILE, password
from tests.conftest import cluster_ports, free_port, settings_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(
        shutil.which("redis-server") is None
        or not (shutil.which("nginx") or Path("/usr/sbin/nginx").is_file()),
        reason="needs redis-server and nginx (make system-deps)",
    ),
]

PROFILE_FILE = Path(__file__).resolve().parents[2] / "infra" / "rtrec.local-cluster.yaml"
RATE = 20
"""Requests per second per API key, across the replicas."""
CLIENT_TIMEOUT_S = 1.0
LOAD_KEY, BURST_KEY = secrets.token_hex(16), secrets.token_hex(16)
REPLICAS = {"serving-1", "serving-2"}


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Free ports, a fresh work dir (0711: PostgreSQL runs as its own account under
    root), a small synthetic model bundle for the replicas and two API keys."""
    from rtrec.serving.synthetic import synthetic_bundle

    work = Path(tempfile.mkdtemp(prefix="rtrec-cluster-serving-"))
    os.chmod(work, 0o711)
    bundle = synthetic_bundle(work / "bundle", n_items=400, seed=1)
    nodes = cluster_ports(3)
    env = {
        "RTREC_CONFIG": str(PROFILE_FILE),
        "RTREC_WORK_DIR": str(work),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "RTREC_REDIS__URL": f"redis://127.0.0.1:{nodes[0]}",
        "RTREC_CLUSTER__REDIS__PORTS": json.dumps(nodes),
        "RTREC_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "RTREC_SPARK__MASTER": f"spark://127.0.0.1:{free_port()}",
        "RTREC_CLUSTER__POSTGRES__PORT": str(free_port()),
        "RTREC_CLUSTER__SPARK__UI_PORT": str(free_port()),
        "RTREC_SERVING__PORT": str(free_port()),
        "RTREC_CLUSTER__SERVING__REPLICA_PORTS": json.dumps([free_port(), free_port()]),
        "RTREC_CLUSTER__STREAM__METRICS_PORTS": json.dumps([free_port(), free_port()]),
        "RTREC_CLUSTER__SERVING__CLIENT_TIMEOUT_S": str(CLIENT_TIMEOUT_S),
        "RTREC_SERVING__BUNDLE_PATH": str(bundle),
        "RTREC_SERVING__API_KEYS": json.dumps([LOAD_KEY, BURST_KEY]),
        "RTREC_SERVING__RATE_LIMIT_PER_S": str(RATE),
    }
    with settings_env(env):
        yield env
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(cluster_env: dict[str, str]) -> Iterator[Settings]:
    """The profile, up through the CLI; brought down at the end even if a test failed."""
    s = load_settings()
    started = time.monotonic()
    out = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    print(f"rtrec up --profile cluster: {time.monotonic() - started:.1f} s\n{out.output}")
    try:
        assert out.exit_code == 0, out.output
        yield s
    finally:
        cluster.down(s)


def _url(s: Settings) -> str:
    return f"http://{s.serving.host}:{s.serving.port}"


def _recommend(c: httpx.Client, key: str, user: str = "u1") -> httpx.Response:
    return c.post("/recommend", json={"user_id": user, "k": 5}, headers={"X-API-Key": key})


def test_a_three_node_cluster_serves_every_slot_behind_a_password(settings: Settings) -> None:
    import redis

    rows = {r.name: r for r in cluster.status(settings)}
    assert rows["redis-cluster"].healthy and rows["redis-cluster"].managed
    assert "16384/16384 slots covered by 3 masters" in rows["redis-cluster"].detail
    slots = 0
    for i in (1, 2, 3):
        node = rows[f"redis-node-{i}"]
        assert node.healthy and node.managed and "master" in node.detail, node
        slots += int(node.detail.split(" slots")[0].rsplit(" ", 1)[1])
    assert slots == 16384

    secret = password(settings)
    assert secret and (settings.work_dir / PASSWORD_FILE).stat().st_mode & 0o777 == 0o600
    for port in settings.cluster.redis.ports:
        conf = settings.work_dir / "redis-cluster" / str(port) / "redis.conf"
        assert conf.stat().st_mode & 0o777 == 0o600
        with pytest.raises(redis.RedisError, match=r"NOAUTH|Authentication"):
            redis.Redis(port=port, socket_timeout=2).ping()  # no password: refused
    for name in managed_names(settings):  # never on a command line
        pid = managed_pid(settings, name)
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
                assert secret not in " ".join(proc.cmdline()), name
    repo = Path(str(settings.feast.repo_path)) / "feature_store.yaml"
    assert repo.stat().st_mode & 0o777 == 0o600
    online = yaml.safe_load(repo.read_text())["online_store"]
    assert (online["type"], online["redis_type"]) == ("redis", "redis_cluster")


def test_feast_and_the_writer_agree_through_both_readers(settings: Settings) -> None:
    """Rows written by Feast and by rtrec's writer (grouped per node) read back the same
    through the serving path's asyncio cluster reader and Feast's get_online_features."""
    import pandas as pd
    from redis.asyncio.cluster import RedisCluster
    from rtrec.features import OnlineReader, get_store, online_features, write_rows
    from rtrec.features.definitions import USER_STREAM_VIEW, user_stream_fields

    fields, now_ms = user_stream_fields(), 1_760_000_000_123

    def row(n: int, history: list[str]) -> dict[str, object]:
        counts = {name: n * 977 + j for j, name in enumerate(fields)}
        return {
            **counts,
            "recent_items": history,
            "last_event_ms": now_ms - n,
            "written_ms": now_ms,
        }

    by_writer = {f"w-{n}": row(n, [f"i{n}", "项目", "i 9"]) for n in range(40)}
    by_feast = {f"f-{n}": row(n + 100, [f"i{n}"] * (n % 5 + 1)) for n in range(40)}
    write_rows(settings, USER_STREAM_VIEW, [(u, v, now_ms) for u, v in by_writer.items()])
    stamp = pd.Timestamp(now_ms, unit="ms", tz="UTC")
    frame = pd.DataFrame(
        [{"user_id": u, **v, "event_timestamp": stamp} for u, v in by_feast.items()]
    )
    get_store(settings).write_to_online_store(USER_STREAM_VIEW, frame)
    users = [*by_writer, *by_feast, "never-seen"]

    reader = OnlineReader.for_users(settings)
    reader.prepare()

    async def read_all() -> tuple[list[dict[str, object]], list[dict[str, object]], object]:
        try:
            batch = await reader.read(users)
            one_by_one = [(await reader.read([u]))[0] for u in users]
            return batch, one_by_one, reader._client
        finally:
            await reader.aclose()

    batch, one_by_one, client = asyncio.run(read_all())
    assert isinstance(client, RedisCluster)
    feast = online_features(settings, users)
    assert batch == feast and one_by_one == feast
    for user, want in {**by_writer, **by_feast}.items():
        assert feast[users.index(user)] == {n: want[n] for n in fields}, user
    assert all(v is None for v in feast[-1].values())
    store_client = get_store(settings)._get_provider().online_store._client
    keys = [reader.redis_key(u) for u in users[:-1]]
    assert len({store_client.get_node_from_key(k).name for k in keys}) == 3  # every node


def test_two_stream_processors_share_the_stream_into_the_cluster(settings: Settings) -> None:
    """The profile's two processors, one consumer group: both apply events, and the
    online features in the cluster equal those computed straight from the events."""
    from rtrec.features import trending_items
    from rtrec.streaming import replay_dataset
    from rtrec.streaming.processor import offsets_key

    from rtrec.app.cluster_stream import applied, metrics_text, processors
    from rtrec.data import SyntheticConfig, generate
    from rtrec.redis_clients import redis_client
    from tests.stream_helpers import assert_online_equals, reference, wait_for

    data = generate(SyntheticConfig.small(seed=5, n_users=80, n_items=60, n_events=2000))
    replay_dataset(settings, data, progress=False)
    client = redis_client(settings)

    def done() -> bool:
        offsets = client.hgetall(offsets_key(settings))
        return sum(int(v) + 1 for v in offsets.values()) >= len(data.events)

    wait_for(done, 120, "the processors did not apply every event")
    counts = {name: applied(metrics_text(port) or "") for name, port in processors(settings)}
    print(f"events applied per processor: {counts}")
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
    assert_online_equals(settings, reference(data.events))  # Feast reads the cluster
    assert len(trending_items(settings, 5)) == 5


def test_nginx_spreads_requests_and_shields_the_replicas(settings: Settings) -> None:
    with httpx.Client(base_url=_url(settings), timeout=10) as c:
        answers = [_recommend(c, LOAD_KEY, f"u{n}") for n in range(20)]
        assert {r.status_code for r in answers} == {200}
        assert {r.headers["x-rtrec-replica"] for r in answers} == REPLICAS
        limit = settings.serving.max_body_bytes
        big = c.post("/recommend", content=b"x" * (limit + 1), headers={"X-API-Key": LOAD_KEY})
    assert big.status_code == 413, big.text
    assert big.json() == {"error": f"body exceeds {limit} bytes", "field": "body"}
    assert "x-rtrec-replica" not in big.headers  # nginx answered: no replica read a byte

    # A client that never finishes its headers, and one that stops sending its body.
    partial = {
        "headers": b"POST /recommend HTTP/1.1\r\nHost: x\r\n",
        "body": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    }
    for what, data in partial.items():
        with socket.create_connection((settings.serving.host, settings.serving.port)) as sock:
            sock.sendall(data)
            sock.settimeout(CLIENT_TIMEOUT_S + 10)
            started = time.monotonic()
            answer = sock.recv(1024)
            waited = time.monotonic() - started
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), (what, answer)
        assert CLIENT_TIMEOUT_S - 0.2 < waited < CLIENT_TIMEOUT_S + 5, (what, waited)


def test_the_rate_limit_holds_across_replicas(settings: Settings) -> None:
    """3x the limit at once, spread over both replicas: no more than the limit admitted,
    as for one process; with per-process limits two replicas would admit twice it."""
    import redis
    from rtrec.serving.ratelimit import WINDOW_MS

    host, port = settings.redis.host_port
    sec, usec = redis.Redis(host=host, port=port, password=password(settings)).time()
    now_ms = sec * 1000 + usec // 1000
    time.sleep((WINDOW_MS - now_ms % WINDOW_MS) / 1000 + 0.005)  # all in one window

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=_url(settings), timeout=10) as c:
            body = {"user_id": "u1", "k": 5}
            headers = {"X-API-Key": BURST_KEY}
            return await asyncio.gather(
                *[c.post("/recommend", json=body, headers=headers) for _ in range(3 * RATE)]
            )

    answers = asyncio.run(burst())
    statuses = [r.status_code for r in answers]
    admitted = statuses.count(200)
    print(f"admitted {admitted} of {len(answers)} (limit {RATE}/s), 429: {statuses.count(429)}")
    assert set(statuses) <= {200, 429}
    assert RATE - 2 <= admitted <= RATE  # at most one unused lease of 1 per replica
    assert {r.headers["x-rtrec-replica"] for r in answers} == REPLICAS
    assert {r.headers["x-rtrec-replica"] for r in answers if r.status_code == 429} == REPLICAS


class _Load(threading.Thread):
    """Sequential /recommend through nginx at ``rate``: (sent, status, replica)."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.period, self.stop = url, 1.0 / rate, threading.Event()
        self.results: list[tuple[float, int, str]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = _recommend(c, LOAD_KEY)
                    self.results.append((sent, r.status_code, r.headers.get("x-rtrec-replica", "")))
                except httpx.HTTPError as exc:
                    self.results.append((sent, -1, type(exc).__name__))
                time.sleep(max(0.0, self.period - (time.monotonic() - sent)))


def _kill_tree(pid: int) -> None:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def test_a_killed_replica_is_routed_around_and_up_restarts_it(settings: Settings) -> None:
    loads = [_Load(_url(settings), rate=8) for _ in range(2)]
    for load in loads:
        load.start()
    time.sleep(3)
    _kill_tree(managed_pid(settings, "serving-1"))  # the arbiter and its worker, SIGKILL
    killed = time.monotonic()
    time.sleep(4)
    for load in loads:
        load.stop.set()
        load.join(15)
    results = sorted(r for load in loads for r in load.results)
    failed = [r for r in results if r[1] != 200]
    print(f"{len(results)} requests, failed: {failed}")
    assert len(failed) <= len(loads), failed  # at most those in flight when it died
    assert {r[2] for r in results if r[0] < killed} == REPLICAS
    after = [r for r in results if r[0] > killed + 0.1]
    assert after and {r[2] for r in after} == {"serving-2"}
    rows = {r.name: r for r in cluster.status(settings)}
    assert not rows["serving-1"].healthy and rows["nginx"].healthy

    out = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    assert out.exit_code == 0, out.output
    deadline = time.monotonic() + 30  # nginx tries a failed server again after 5 s
    seen: set[str] = set()
    with httpx.Client(base_url=_url(settings), timeout=10) as c:
        while seen != REPLICAS and time.monotonic() < deadline:
            seen.add(_recommend(c, LOAD_KEY).headers.get("x-rtrec-replica", ""))
            time.sleep(0.2)
    assert seen == REPLICAS


def test_down_leaves_no_process(settings: Settings) -> None:
    names = managed_names(settings)
    for needed in ("nginx", "serving-1", "serving-2", "redis-node-1", "stream-processor-2"):
        assert needed in names
    pids = {name: managed_pid(settings, name) for name in names}
    assert all(pids.values()), pids
    tree = {
        p.pid
        for pid in pids.values()
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    }
    out = CliRunner().invoke(main, ["down", "--profile", "cluster"])
    assert out.exit_code == 0, out.output
    left = sorted(pid for pid in tree if alive(pid))
    assert not left, f"still running after down: {left}"
    assert managed_names(settings) == []
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    work = str(settings.work_dir)
    strays = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.info["pid"] not in ours and any(work in a for a in (p.info["cmdline"] or []))
    ]
    assert not strays, f"processes naming the work dir after down: {strays}"
