"""Settings: every address and path the platform uses, in one object.

Values come, highest priority first, from keyword arguments, ``RTREC_*`` environment
variables (nested with ``__``, e.g. ``RTREC_KAFKA__BOOTSTRAP_SERVERS``), a YAML file named
by ``RTREC_CONFIG``, then the defaults below. The defaults point at the embedded stack
that ``rtrec up`` starts, so pointing at real clusters is only a change of settings
(see ``infra/README.md``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from rtrec.apikeys import ApiKey
from rtrec.cluster_settings import ClusterSettings
from rtrec.errors import ConfigError
from rtrec.monitoring_settings import MonitoringSettings
from rtrec.training_settings import TrainingSettings

_STRICT = ConfigDict(extra="forbid")


def host_port(address: str, default_port: int) -> tuple[str, int]:
    """``host:port`` or a URL -> (host, port), parsed by ``urllib.parse`` in this one place
    for every address in the settings: credentials, IPv6 brackets and a path never end up
    in the host; a port that is not a number is a :class:`rtrec.errors.ConfigError`."""
    text = address.strip()
    parsed = urlsplit(text if "://" in text else f"//{text}")
    try:
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"address {address!r} has no valid port: {exc}") from None
    return parsed.hostname or "127.0.0.1", port or default_port


class KafkaSettings(BaseModel):
    model_config = _STRICT

    bootstrap_servers: str = "127.0.0.1:19092"
    """Comma-separated host:port list of Kafka brokers (embedded: Tansu on 19092)."""
    events_topic: str = "rtrec.events"
    """Interaction events, keyed by user id so one user's events stay in order."""
    dlq_topic: str = "rtrec.events.dlq"
    """Dead letters: the original bytes plus the reason they were rejected."""
    alerts_topic: str = "rtrec.alerts"
    """Drift and health alerts for on-call tooling."""
    impressions_topic: str = "rtrec.impressions"
    """What /recommend answered (request id, variant, items by position), keyed by user id
    and partitioned like the events topic, so feedback can be attributed to an answer."""
    partitions: int = Field(4, ge=1)
    """Partitions created for the events topic; the ceiling on parallel processors."""
    consumer_group: str = "rtrec-stream"
    """Consumer group of the stream processors."""
    session_timeout_ms: int = Field(6000, ge=1000)
    """Group session timeout; Tansu holds a join for about half of it."""
    broker_kind: Literal["auto", "tansu", "kafka"] = "auto"
    """What the brokers are: ``tansu`` turns on the stream processor's workaround for
    Tansu's group coordinator (it can hand the leader a stale assignment); ``auto``
    asks the cluster at start (Tansu answers with its default cluster id
    ``tansu_cluster``; set ``tansu`` for a Tansu started with another id)."""


class RedisSettings(BaseModel):
    model_config = _STRICT

    url: str = "redis://127.0.0.1:16379/0"
    """Redis for Feast's online store (embedded: a redis-server on 16379)."""
    cluster: bool = False
    """``url`` names a node of a Redis Cluster: every rtrec client is then a cluster
    client (``RedisCluster``, which finds the other nodes) and Feast's online store is
    ``redis_type: redis_cluster``. ``rtrec up --profile cluster`` starts the nodes
    (``cluster.redis``) where ``url`` is on this machine."""
    password: SecretStr | None = None
    """Redis's password (AUTH), used over one in ``url``; ``RTREC_REDIS__PASSWORD``. Unset,
    for cluster nodes the profile starts here: the one ``rtrec up --profile cluster``
    generated into ``<work_dir>/secrets/redis_password`` (0600), read by every process
    of the work dir."""

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of ``url`` (``urllib.parse``: credentials, IPv6 brackets, db)."""
        return host_port(self.url, 6379)


class FeastSettings(BaseModel):
    model_config = _STRICT

    project: str = "rtrec"
    """Feast project name."""
    repo_path: Path | None = None
    """Where the generated feature_store.yaml lives; default ``<work_dir>/feature_repo``."""
    online_store: Literal["redis", "sqlite"] = "redis"
    """Online store backend. ``sqlite`` (a file in the repo dir) is for Redis-less uses such
    as offline-only tools and tests, and only when set here: a Redis that does not answer
    is an error, never a reason to switch."""


class MlflowSettings(BaseModel):
    model_config = _STRICT

    tracking_uri: str | None = None
    """MLflow tracking/registry URI; default ``sqlite:///<work_dir>/mlflow/mlflow.db``."""
    artifact_root: Path | None = None
    """Artifact location for new experiments; default ``<work_dir>/mlflow/artifacts``."""
    model_name: str = "rtrec-two-tower"
    """Registered model name holding champion and challenger aliases."""
    experiment: str = "rtrec"
    """Experiment that training runs are logged under."""


class AirflowSettings(BaseModel):
    model_config = _STRICT

    home: Path | None = None
    """AIRFLOW_HOME; default ``<work_dir>/airflow``."""
    port: int = 18080
    """Port of the embedded Airflow API server / UI."""
    parallelism: int = 4
    """AIRFLOW__CORE__PARALLELISM for the embedded standalone."""


class SparkSettings(BaseModel):
    model_config = _STRICT

    master: str = "local[*]"
    """Spark master URL: local[*] embedded, spark://host:7077 or k8s://... on a cluster."""
    driver_memory: str = "2g"
    """spark.driver.memory."""


class ServingSettings(BaseModel):
    model_config = _STRICT

    host: str = "127.0.0.1"
    """Interface the service binds; without api_keys loopback only, unless allow_anonymous."""
    port: int = 13000
    """Port of the recommendation API."""
    api_keys: list[ApiKey] = Field(default_factory=list)
    """Accepted X-API-Key values; no default. Each is ``{name, key, scopes, users}`` or a
    bare string (every scope, named ``key-<first 6 hex of its SHA-256>``). Empty means
    auth is off, which the service allows on a loopback address only."""
    allow_anonymous: bool = False
    """Serve without API keys on a non-loopback address (a trusted network only): logged
    at WARNING at start and shown in /status."""
    rate_limit_per_s: float = 500.0
    """Sustained requests per second allowed per API key name, or per client address
    without keys (token bucket, burst = 1 s)."""
    rate_limit_backend: Literal["memory", "redis"] = "memory"
    """``memory``: per process (N replicas allow N times); ``redis``: shared, in ``redis.url``."""
    max_k: int = 200
    """Largest k a request may ask for."""
    max_body_bytes: int = 64 * 1024
    """Requests with larger bodies get 413."""
    bundle_path: Path | None = None
    """Serve this model bundle directory instead of the MLflow champion (benchmarks, tests)."""
    watch_interval_s: float = 5.0
    """How often the service checks the registry aliases for a new champion."""
    ab_challenger_share: float = Field(0.0, ge=0.0, le=1.0)
    """Share of users (sticky, by hash) served by the challenger; 0 disables the A/B split."""
    shadow: bool = False
    """Also score the challenger for every request without returning it (logged, measured)."""
    threads: int = 1
    """Torch threads per worker: one keeps tail latency flat on small machines."""
    impressions: bool = True
    """Log every /recommend answer on ``kafka.impressions_topic``, off the request path."""
    impression_sender: Literal["process", "thread"] = "process"
    """Where impressions' Kafka client runs: a child ``process`` (off the service's GIL)."""
    replica_id: str | None = None
    """This process's name among serving replicas behind a load balancer, answered in
    every response's ``X-Rtrec-Replica`` header (the cluster profile sets it per replica)."""
    tracing: bool = False
    """Run requests through BentoML's OpenTelemetry middleware (sampling and exporter from
    BentoML's own ``tracing`` configuration). Off by default: with nothing sampled it
    still costs about 0.2 ms of CPU per request, as much as the user tower."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _bare_keys(cls, v: Any) -> Any:
        """Bare strings (the original form, still the short one) become full entries."""
        if not isinstance(v, list):
            return v
        plain = [e.get_secret_value() if isinstance(e, SecretStr) else e for e in v]
        return [ApiKey.plain(e) if isinstance(e, str) else e for e in plain]

    @field_validator("api_keys")
    @classmethod
    def _distinct(cls, v: list[ApiKey]) -> list[ApiKey]:
        """Names label rate buckets and feedback; a key must map to one of them."""
        if len({k.name for k in v}) != len(v) or len({k.get_secret_value() for k in v}) < len(v):
            raise ValueError(f"API key names and keys must be distinct: {[k.name for k in v]}")
        return v


class Settings(BaseSettings):
    """Everything configurable in rtrec. Build it with :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="RTREC_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    work_dir: Path = Field(default_factory=lambda: Path.home() / ".rtrec")
    """Root for everything the embedded stack writes: pids, logs, stores, registry."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    """Engines of ``rtrec up --profile cluster`` (PostgreSQL, MLflow server, Spark)."""
    seed: int = 42
    """Seed for data generation and training."""

    redact_salt: SecretStr | None = None
    """Secret salt of :func:`rtrec.logging.redact_id` (the user-id hashes in logs and
    answers). Unset: generated once into ``<work_dir>/secrets/redact_salt`` (mode 0600)
    and read from there by every process of that work dir."""

    @model_validator(mode="after")
    def _ab_needs_a_share(self) -> Settings:
        """An A/B test at share 0 would never see a user: refuse it at start, not later."""
        if self.training.promotion == "ab" and self.serving.ab_challenger_share <= 0:
            raise ValueError(
                "training.promotion is 'ab' but serving.ab_challenger_share is 0: "
                "set the challenger's share of users (e.g. 0.5) or promotion 'direct'"
            )
        return self

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        self.work_dir = self.work_dir.expanduser().resolve()
        if self.feast.repo_path is None:
            self.feast.repo_path = self.work_dir / "feature_repo"
        if self.mlflow.tracking_uri is None:
            self.mlflow.tracking_uri = f"sqlite:///{self.work_dir / 'mlflow' / 'mlflow.db'}"
        if self.mlflow.artifact_root is None:
            self.mlflow.artifact_root = self.work_dir / "mlflow" / "artifacts"
        if self.airflow.home is None:
            self.airflow.home = self.work_dir / "airflow"
        if self.monitoring.workspace is None:
            self.monitoring.workspace = self.work_dir / "evidently"
        return self

    # Derived locations: one place spells them.
    @property
    def offline_dir(self) -> Path:
        """Append-only offline event log and feature tables (parquet)."""
        return self.work_dir / "offline"

    @property
    def events_log_dir(self) -> Path:
        """The offline event log itself: the stream's accepted events (parquet parts)."""
        return self.offline_dir / "events"

    @property
    def run_dir(self) -> Path:
        """Pid files of processes the embedded stack started."""
        return self.work_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def data_dir(self) -> Path:
        """Generated or loaded data sets (catalog, users, events)."""
        return self.work_dir / "data"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("RTREC_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build fresh settings (env + YAML + overrides); tests use this, not the cache."""
    config_file = os.environ.get("RTREC_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"RTREC_CONFIG points at {config_file!r}, which is not a file")
    return Settings(**overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once on first use (never at import time)."""
    return load_settings()
