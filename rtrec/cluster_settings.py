"""Settings of the cluster profile (``rtrec up --profile cluster``): the engines it starts.

Kept out of :mod:`rtrec.config` so that module stays one screenful per stage; the
:class:`ClusterSettings` object is its ``cluster`` field, loaded the same way (``RTREC_*``
variables, e.g. ``RTREC_CLUSTER__POSTGRES__PORT``, then the ``RTREC_CONFIG`` file). The
addresses clients use are not here: MLflow's is ``mlflow.tracking_uri`` and Spark's
``spark.master``, and the profile starts an engine only where that address is on this
machine, so a managed service is one changed address away.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

_STRICT = ConfigDict(extra="forbid")


class PostgresSettings(BaseModel):
    """One PostgreSQL server holding MLflow's backend store and, later, Airflow's."""

    model_config = _STRICT

    host: str = "127.0.0.1"
    """Where PostgreSQL listens; started by the profile only on a loopback address."""
    port: int = Field(15432, ge=1, le=65535)
    """Its TCP port (no Unix socket: nothing but TCP clients reach it)."""
    password: SecretStr | None = None
    """Password of every role the profile creates (superuser, MLflow's, Airflow's); set it
    with ``RTREC_CLUSTER__POSTGRES__PASSWORD``. Unset: generated once into
    ``<work_dir>/secrets/postgres_password`` (mode 0600), never into a settings file."""
    superuser: str = "rtrec"
    """The superuser initdb creates; the profile uses it only to create the roles below."""
    mlflow_db: str = "mlflow"
    """Database and owning role of MLflow's backend store."""
    airflow_db: str = "airflow"
    """Database and owning role kept for Airflow's metadata."""
    bin_dir: Path | None = None
    """Where ``initdb`` and ``postgres`` are; unset: the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian's packages), else ``PATH``."""
    os_user: str = "postgres"
    """Account the server runs as when rtrec runs as root (PostgreSQL refuses root); it
    must be able to reach the work dir."""


class AirflowClusterSettings(BaseModel):
    """Airflow's scheduler, DAG processor and API server (LocalExecutor) on the profile's
    PostgreSQL: DAG runs are triggered and watched through its REST API."""

    model_config = _STRICT

    api_url: str = "http://127.0.0.1:18080"
    """Airflow's API server (``/api/v2``, token at ``/auth/token``). On a loopback address
    the profile starts it there with a scheduler and a DAG processor; anywhere else it
    starts none and triggers runs on that Airflow (a managed one, running rtrec's DAGs)."""
    username: str = "rtrec"
    """The API user (the simple auth manager's, role admin, on the profile's own)."""
    password: SecretStr | None = None
    """Its password: ``RTREC_CLUSTER__AIRFLOW__PASSWORD``. Unset: generated once into
    ``<work_dir>/secrets/airflow_password`` (0600), never into a settings file."""
    home: Path | None = None
    """AIRFLOW_HOME of the profile's Airflow (task logs, its near-empty ``airflow.cfg``);
    default ``<work_dir>/airflow-cluster``, apart from the embedded standalone's."""
    parallelism: int = Field(2, ge=1)
    """Task processes at once (``[core] parallelism``): each is a fresh interpreter
    loading torch or a Spark driver, and two is what two cores carry."""
    start_timeout_s: float = Field(300.0, gt=0)
    """How long ``up`` waits for the three to report healthy and rtrec's DAGs to be
    parsed (seconds idle, minutes beside a busy test suite)."""


class MlflowServerSettings(BaseModel):
    """The ``mlflow server`` the profile starts on ``mlflow.tracking_uri``'s port."""

    model_config = _STRICT

    workers: int = Field(1, ge=1)
    """Uvicorn workers: one serves a training job and a few serving replicas."""
    start_timeout_s: float = Field(600.0, gt=0)
    """How long ``up`` waits for ``/health``: the first start migrates a fresh PostgreSQL
    schema, seconds on an idle machine and minutes on a busy one."""


class SparkClusterSettings(BaseModel):
    """A Spark standalone master (on ``spark.master``'s port) and its workers."""

    model_config = _STRICT

    ui_port: int = Field(18090, ge=1, le=65535)
    """The master's web UI, whose ``/json`` lists workers and applications."""
    workers: int = Field(2, ge=1)
    """Worker processes, each with the cores and memory below."""
    worker_cores: int = Field(1, ge=1)
    """Cores each worker offers to executors."""
    worker_memory: str = "1g"
    """Memory each worker offers to executors (an executor takes 1g by default)."""
    daemon_memory: str = "512m"
    """Heap of the master and worker daemons themselves."""


class RedisNodesSettings(BaseModel):
    """Redis Cluster nodes (masters, no replicas) the profile starts on ``redis.url``'s
    host when ``redis.cluster`` is set and that host is this machine."""

    model_config = _STRICT

    ports: list[int] = Field(default_factory=lambda: [17001, 17002, 17003], min_length=3)
    """One node per port (``redis.url``'s port among them); each node also listens on
    port + 10000, the cluster bus. Three is the fewest masters a cluster accepts."""
    start_timeout_s: float = Field(60.0, gt=0)
    """How long ``up`` waits for every node to answer and all 16384 slots to be served."""


class ServingReplicasSettings(BaseModel):
    """Serving replicas behind nginx: nginx takes ``serving.host``/``serving.port`` (the
    one public port) and spreads requests over the replicas on loopback ports."""

    model_config = _STRICT

    replica_ports: list[int] = Field(default_factory=lambda: [13101, 13102], min_length=1)
    """One ``bentoml serve`` process per port, on 127.0.0.1, named ``serving-1``, ..."""
    start_timeout_s: float = Field(300.0, gt=0)
    """How long ``up`` waits for a replica to answer ``/livez`` (imports take seconds)."""
    nginx: Path | None = None
    """The nginx binary; unset: ``nginx`` on ``PATH`` or ``/usr/sbin/nginx`` (Debian)."""
    client_timeout_s: float = Field(10.0, gt=0)
    """nginx's limit for a client to send its headers, its body, or read a response:
    slower clients get 408 (or are cut off) instead of holding a connection."""
    upstream_timeout_s: float = Field(15.0, gt=0)
    """How long nginx waits for a replica's answer before trying the other one."""


class StreamReplicasSettings(BaseModel):
    """Stream processors the profile starts: one ``rtrec stream run`` per port, all in
    the consumer group ``kafka.consumer_group``, so the events topic's partitions are
    shared between them (up to one processor per partition does work)."""

    model_config = _STRICT

    metrics_ports: list[int] = Field(default_factory=lambda: [19201, 19202])
    """Each processor's Prometheus port (loopback), named ``stream-processor-1``, ...;
    empty: the profile starts no processor."""
    start_timeout_s: float = Field(120.0, gt=0)
    """How long ``up`` waits for a processor's metrics endpoint to answer."""


class ClusterSettings(BaseModel):
    """The engines ``rtrec up --profile cluster`` starts beside the embedded ones."""

    model_config = _STRICT

    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    airflow: AirflowClusterSettings = Field(default_factory=AirflowClusterSettings)
    mlflow: MlflowServerSettings = Field(default_factory=MlflowServerSettings)
    spark: SparkClusterSettings = Field(default_factory=SparkClusterSettings)
    redis: RedisNodesSettings = Field(default_factory=RedisNodesSettings)
    serving: ServingReplicasSettings = Field(default_factory=ServingReplicasSettings)
    stream: StreamReplicasSettings = Field(default_factory=StreamReplicasSettings)
