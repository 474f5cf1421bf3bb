"""The profile's engines, each doing real work: Redis Cluster, Spark standalone, MLflow server.

A three-node Redis Cluster serves every slot behind a password that is on no command line;
Feast and rtrec's own writer write into it and the serving reader and Feast read the same
values back. Training sets are built by the real Spark job on the standalone master, and its
executors on the workers did the work. A model bundle registers through the MLflow server over
HTTP (PostgreSQL backend, artifacts served through the server) and comes back byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from rtrec.training.dataset import build_training_sets, stop_spark, write_event_log
from rtrec.training.registry import ModelRegistry
from rtrec.training.spark import spark_session

from rtrec.app import cluster, cluster_redis
from rtrec.app.cluster_postgres import connect
from rtrec.app.processes import managed_names, managed_pid
from rtrec.config import Settings
from rtrec.redis_clients import PASSWORD_FILE, password


def test_a_three_node_cluster_serves_every_slot_behind_a_password(settings: Settings) -> None:
    import redis

    rows = {r.name: r for r in cluster_redis.status(settings)}  # the rows `status` shows
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


def _worker_states(settings: Settings) -> list[dict]:
    """Each worker's own /json (its executors), through the address the master lists."""
    state = cluster.master_json(settings)
    assert state is not None
    return [
        httpx.get(f"{w['webuiaddress']}/json/", timeout=5, follow_redirects=True).json()
        for w in state["workers"]
    ]


def _finished_tasks(settings: Settings, app_id: str) -> dict[str, int]:
    """Tasks each worker's executor of ``app_id`` finished, from the executor's own log
    (``<worker work dir>/<app id>/<executor id>/stderr``): only an executor writes it."""
    counts = {}
    for i in range(1, settings.cluster.spark.workers + 1):
        app_dir = settings.work_dir / "spark" / f"spark-worker-{i}" / app_id
        logs = list(app_dir.glob("*/stderr")) if app_dir.is_dir() else []
        counts[f"spark-worker-{i}"] = sum(
            log.read_text(errors="replace").count("Finished task") for log in logs
        )
    return counts


def test_training_sets_are_built_by_executors_on_the_workers(
    settings: Settings, tmp_path: Path
) -> None:
    from rtrec.data import SyntheticConfig, generate

    cfg = SyntheticConfig.small(n_users=300, n_items=150, n_events=6000, days=10)
    source = write_event_log(generate(cfg), tmp_path / "offline")
    sets = build_training_sets(settings, source=source, out_dir=tmp_path / "sets")
    assert sets.counts["train"] > 0
    assert len(sets.read("train")) == sets.counts["train"]

    sc = spark_session(settings).sparkContext
    assert sc.master == settings.spark.master  # the standalone master, not local[*]
    app_id = sc.applicationId
    state = cluster.master_json(settings)
    assert state is not None
    (app,) = [a for a in state["activeapps"] if a["id"] == app_id]
    conf = settings.cluster.spark
    assert app["cores"] == conf.workers * conf.worker_cores, app  # every worker's cores
    hosting = [
        w for w in _worker_states(settings) if any(e["appid"] == app_id for e in w["executors"])
    ]
    assert len(hosting) == conf.workers, "an executor of the job on every worker"
    finished = _finished_tasks(settings, app_id)
    print(f"tasks finished by each worker's executor: {finished}")
    assert sum(finished.values()) > 0, finished

    stop_spark()
    state = cluster.master_json(settings)
    assert state is not None
    (done,) = [a for a in state["completedapps"] if a["id"] == app_id]
    assert done["state"] == "FINISHED"


def test_a_bundle_registers_over_http_and_comes_back(settings: Settings, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "top.txt").write_text("i1 i2 i3\n")
    (bundle / "weights.bin").write_bytes(os.urandom(4096))
    registry = ModelRegistry(settings)
    run_id, version = registry.log_and_register(
        bundle, params={"profile": "cluster"}, metrics={"ndcg@10": 0.25}
    )
    back = registry.download_bundle(version, dst=tmp_path / "downloaded")
    for name in ("top.txt", "weights.bin"):
        assert (back / name).read_bytes() == (bundle / name).read_bytes()

    # Served artifacts: the experiment points at the server's proxy, and the bytes are in
    # the server's artifact destination, put there through HTTP.
    exp = registry.client.get_experiment_by_name(settings.mlflow.experiment)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    stored = list(Path(str(settings.mlflow.artifact_root)).rglob("weights.bin"))
    assert stored and stored[0].read_bytes() == (bundle / "weights.bin").read_bytes()
    # The backend store is PostgreSQL: the run and the version are rows there.
    pg = settings.cluster.postgres
    conn = connect(settings, pg.mlflow_db, pg.mlflow_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run_id,))
            assert cur.fetchone()[0] == 1
            cur.execute(
                "SELECT count(*) FROM model_versions WHERE name = %s AND version = %s",
                (settings.mlflow.model_name, int(version)),
            )
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()
