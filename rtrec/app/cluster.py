"""The cluster profile: ``rtrec up --profile cluster`` starts real engines on this machine.

Beside the embedded broker and Redis (:mod:`rtrec.app.stack`) it starts PostgreSQL
(:mod:`rtrec.app.cluster_postgres`), an ``mlflow server`` on PostgreSQL with artifacts
served through it, and a Spark standalone master with ``cluster.spark.workers`` workers,
each a process of its own, recorded and stopped like the embedded ones. Clients reach them
only through the addresses in the settings (``mlflow.tracking_uri``, ``spark.master``), and
an engine is started only where that address is on this machine: pointing one of them at
a managed service leaves that engine out and changes no code.
"""

from __future__ import annotations

import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rtrec.app import cluster_airflow as airflow
from rtrec.app import cluster_postgres as postgres
from rtrec.app import cluster_redis, cluster_serving, cluster_stream, stack
from rtrec.app.stack import ComponentStatus
from rtrec.config import Settings, host_port
from rtrec.errors import ConfigError

MLFLOW = "mlflow-server"
SPARK_MASTER = "spark-master"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _local(address: str, default_port: int) -> tuple[str, int] | None:
    host, port = host_port(address, default_port)
    return (host, port) if host in _LOOPBACK else None


def check_profile(settings: Settings) -> None:
    """The cluster profile needs its settings: an HTTP tracking server and a Spark master
    that is not the driver's own ``local[*]``."""
    uri, master = str(settings.mlflow.tracking_uri), settings.spark.master
    if not uri.startswith(("http://", "https://")) or master.startswith("local"):
        raise ConfigError(
            "the cluster profile needs mlflow.tracking_uri http://… and spark.master "
            f"spark://… (got {uri.split(':', 1)[0]}:… and {master}): set "
            "RTREC_CONFIG=infra/rtrec.local-cluster.yaml"
        )


# --- MLflow tracking server ------------------------------------------------------------


def _get_json(url: str, timeout: float = 2.0) -> Any:
    import httpx

    try:
        resp = httpx.get(url, timeout=timeout, follow_redirects=True)
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    try:
        return resp.json()
    except ValueError:  # /health answers plain text
        return resp.text


def start_mlflow(settings: Settings) -> None:
    """``mlflow server`` on the tracking URI's port: PostgreSQL backend store (its URI in
    the environment, so the password is on no command line), artifacts proxied by the
    server (``--serve-artifacts``) into ``mlflow.artifact_root``."""
    uri = str(settings.mlflow.tracking_uri)
    where = _local(uri, 5000)
    if where is None:
        return
    artifacts = Path(str(settings.mlflow.artifact_root))
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", where[0]]
    cmd += ["--port", str(where[1]), "--workers", str(settings.cluster.mlflow.workers)]
    cmd += ["--serve-artifacts", "--artifacts-destination", str(artifacts)]
    env = {
        "MLFLOW_BACKEND_STORE_URI": postgres.database_uri(
            settings, settings.cluster.postgres.mlflow_db
        ),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # No GenAI job runner: rtrec submits no server-side jobs, and it would add eight
        # processes (about 2 GB) and a scratch directory in /dev/shm left behind on stop.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    stack.start_managed(
        settings,
        MLFLOW,
        cmd,
        port=where,
        env=env,
        cwd=settings.work_dir,
        ready=lambda: _get_json(f"{uri.rstrip('/')}/health") is not None,
        timeout=settings.cluster.mlflow.start_timeout_s,
    )


def _mlflow_status(settings: Settings) -> ComponentStatus:
    uri = str(settings.mlflow.tracking_uri)
    managed = stack.managed_pid(settings, MLFLOW) is not None
    answer = _get_json(f"{uri.rstrip('/')}/health")
    ok = answer is not None
    detail = "serving (PostgreSQL backend, served artifacts)" if ok else "/health not answering"
    return ComponentStatus("mlflow-server", uri, ok, detail, managed)


# --- Spark standalone ------------------------------------------------------------------


def spark_home() -> Path:
    """pyspark's own distribution: ``bin/spark-class`` and the jars."""
    import pyspark

    return Path(pyspark.__file__).parent


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def master_json(settings: Settings) -> dict[str, Any] | None:
    """The standalone master's state (workers, applications) from its web UI."""
    where = _local(settings.spark.master, 7077)
    host = where[0] if where else host_port(settings.spark.master, 7077)[0]
    state = _get_json(f"http://{host}:{settings.cluster.spark.ui_port}/json/")
    return state if isinstance(state, dict) else None


def _worker_alive(settings: Settings, port: int) -> bool:
    state = master_json(settings) or {}
    return any(
        w.get("port") == port and w.get("state") == "ALIVE" for w in state.get("workers", [])
    )


def _spark_cmd(cls: str, *args: str) -> list[str]:
    return [str(spark_home() / "bin" / "spark-class"), f"org.apache.spark.deploy.{cls}", *args]


def start_spark(settings: Settings) -> None:
    """The master on ``spark.master``'s port, then each worker, ready once registered."""
    if not settings.spark.master.startswith("spark://"):
        return
    where = _local(settings.spark.master, 7077)
    if where is None:
        return
    host, port = where
    conf = settings.cluster.spark
    env = {
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": host,
        "SPARK_DAEMON_MEMORY": conf.daemon_memory,
        "SPARK_LOG_DIR": str(settings.log_dir),
        # No REST submission server: nothing here submits through it, and its fixed port
        # (6066) would collide with a second master on the machine.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    cmd = _spark_cmd("master.Master", "--host", host, "--port", str(port))
    cmd += ["--webui-port", str(conf.ui_port)]
    stack.start_managed(
        settings,
        SPARK_MASTER,
        cmd,
        port=(host, port),
        env=env,
        ready=lambda: master_json(settings) is not None,
        timeout=120,
    )
    # Workers start side by side: each JVM's start is mostly waiting, not CPU.
    with ThreadPoolExecutor(max_workers=conf.workers) as pool:
        names = [f"spark-worker-{i}" for i in range(1, conf.workers + 1)]
        for done in [pool.submit(_start_worker, settings, name, env) for name in names]:
            done.result()


def _start_worker(settings: Settings, name: str, env: dict[str, str]) -> None:
    """One worker on free ports, ready once the master lists it ALIVE."""
    if stack.managed_pid(settings, name) is not None:
        return
    conf, host = settings.cluster.spark, host_port(settings.spark.master, 7077)[0]
    work = settings.work_dir / "spark" / name
    work.mkdir(parents=True, exist_ok=True)
    rpc, ui = _free_port(host), _free_port(host)
    cmd = _spark_cmd("worker.Worker", "--host", host, "--port", str(rpc))
    cmd += ["--webui-port", str(ui), "--cores", str(conf.worker_cores)]
    cmd += ["--memory", conf.worker_memory, "--work-dir", str(work), settings.spark.master]
    stack.start_managed(
        settings, name, cmd, env=env, ready=lambda: _worker_alive(settings, rpc), timeout=120
    )


def _spark_status(settings: Settings) -> ComponentStatus:
    master = settings.spark.master
    managed = stack.managed_pid(settings, SPARK_MASTER) is not None
    state = master_json(settings)
    if state is None:
        return ComponentStatus("spark", master, False, "master UI not answering", managed)
    alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
    want = settings.cluster.spark.workers if managed else 1
    detail = f"{len(alive)} workers alive, {state.get('cores', 0)} cores"
    return ComponentStatus("spark", master, len(alive) >= want, detail, managed)


# --- the profile -----------------------------------------------------------------------


def _postgres_status(settings: Settings) -> ComponentStatus:
    pg = settings.cluster.postgres
    ok, detail, managed = postgres.health(settings)
    return ComponentStatus("postgres", f"{pg.host}:{pg.port}", ok, detail, managed)


def status(settings: Settings) -> list[ComponentStatus]:
    """The embedded components' rows, then PostgreSQL, MLflow's server, Spark, Airflow."""
    rows = stack.status(settings)
    rows += [_postgres_status(settings), _mlflow_status(settings), _spark_status(settings)]
    if settings.redis.cluster:
        rows += cluster_redis.status(settings)
    rows += cluster_stream.status(settings) + cluster_serving.status(settings)
    return [*rows, airflow.status(settings)]


def up(settings: Settings) -> list[ComponentStatus]:
    """Start what is missing (idempotent), engines after the stores they need."""
    check_profile(settings)
    stack.make_dirs(settings)
    stack.start_kafka(settings)
    stack.ensure_topics(settings)
    if settings.redis.cluster:
        cluster_redis.start(settings)
    else:
        stack.start_redis(settings)
    if settings.cluster.postgres.host in _LOOPBACK:
        postgres.start(settings)
    # MLflow's server (a schema migration on first start), Spark's JVMs and Airflow (its
    # own migration, then three processes) need nothing of each other: side by side.
    starts = (start_mlflow, start_spark, airflow.start)
    with ThreadPoolExecutor(max_workers=len(starts)) as pool:
        for done in [pool.submit(start, settings) for start in starts]:
            done.result()
    # Stream processors and serving replicas (which load the champion from MLflow's server)
    # side by side, once the feature repository they all read is there.
    cluster_serving.apply_features(settings)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(m.start, settings) for m in (cluster_stream, cluster_serving)]:
            done.result()
    return status(settings)


def down(settings: Settings) -> list[str]:
    """Stop every process of the work dir: clients before the servers they use (MLflow
    before PostgreSQL, workers before their master), then the embedded ones."""
    workers = sorted(n for n in stack.managed_names(settings) if n.startswith("spark-worker-"))
    # nginx, the serving replicas and the stream processors first: clients of the rest;
    # then Airflow (its tasks use MLflow and Spark; its DB is PostgreSQL).
    stopped = cluster_serving.stop(settings) + cluster_stream.stop(settings)
    stopped += airflow.stop(settings)
    for name in [MLFLOW, *workers, SPARK_MASTER, postgres.NAME]:
        if stack.stop_managed(settings, name):
            stopped.append(name)
    return stopped + cluster_redis.stop(settings) + stack.down(settings)
