"""Airflow for the cluster profile: its scheduler, DAG processor and API server, each a
process of its own, LocalExecutor, metadata in the profile's PostgreSQL.

``up`` migrates the ``cluster.postgres.airflow_db`` database (``airflow db migrate``,
idempotent), then starts ``airflow api-server``, ``airflow scheduler`` and ``airflow
dag-processor`` side by side under :func:`rtrec.app.processes.start_managed`, ready once the
API server reports each of them healthy with a heartbeat newer than its start (a stale one
from a previous scheduler would pass a plain health check) and rtrec's DAGs are parsed.
The DAGs are rtrec's own (the ``rtrec.dags`` folder) and ``<home>/dags``, as in the
embedded standalone (:mod:`rtrec.app.embedded_airflow`), unpaused when first registered.

Everything is configured through ``AIRFLOW__*`` variables in the processes' environment,
secrets included: the database URI (with its password), the JWT secret the scheduler signs
task tokens with and the API server checks, the API's session key and the Fernet key.
They are generated once into ``<work_dir>/secrets`` (0600), and ``<home>/airflow.cfg`` is
written near-empty beforehand, because Airflow would otherwise write one holding fresh keys
of its own. The API's user (``cluster.airflow.username``, the simple auth manager's, role
admin) gets its token at ``/auth/token`` with ``cluster.airflow.password``. With the
LocalExecutor, tasks run under the scheduler and so inherit that environment.

``cluster.airflow.api_url`` off this machine starts nothing: DAG runs go to that Airflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psutil

from rtrec.app import cluster_postgres as postgres
from rtrec.app import embedded_airflow as embedded
from rtrec.app.dag_runs.airflow_api import AirflowApi
from rtrec.app.processes import managed_pid, start_managed, stop_managed
from rtrec.app.stack import ComponentStatus
from rtrec.config import Settings, host_port
from rtrec.errors import RtrecError, Unavailable

API_SERVER = "airflow-api-server"
SCHEDULER = "airflow-scheduler"
DAG_PROCESSOR = "airflow-dag-processor"
PROCESSES = (API_SERVER, SCHEDULER, DAG_PROCESSOR)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PAUSE_TOLERANCE_S = 300


def is_local(settings: Settings) -> bool:
    """Whether the profile starts Airflow: its API address is on this machine."""
    return host_port(settings.cluster.airflow.api_url, 8080)[0] in _LOOPBACK


def home(settings: Settings) -> Path:
    return Path(settings.cluster.airflow.home or settings.work_dir / "airflow-cluster")


def _secret(settings: Settings, name: str, make: Callable[[], str]) -> str:
    """``<work_dir>/secrets/<name>``, made once (0600; a concurrent ``up`` keeps the first)."""
    path = settings.work_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(make() + "\n")
    return path.read_text().strip()


def password(settings: Settings) -> str:
    """The API user's password: the setting, else the work dir's generated one."""
    configured = settings.cluster.airflow.password
    if configured is not None:
        return configured.get_secret_value()
    return _secret(settings, "airflow_password", lambda: secrets.token_urlsafe(24))


def api(settings: Settings) -> AirflowApi:
    """A REST client of the profile's Airflow, logged in as ``cluster.airflow.username``."""
    conf = settings.cluster.airflow
    return AirflowApi(conf.api_url, conf.username, password(settings))


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _users_file(settings: Settings) -> Path:
    """The simple auth manager's passwords file (``{user: password}``, 0600), written
    before it starts, so it never generates a password and prints it to its log."""
    path = settings.work_dir / "secrets" / "airflow_users.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = json.dumps({settings.cluster.airflow.username: password(settings)}) + "\n"
    if not path.exists() or path.read_text() != body:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(body)
    return path


def airflow_env(settings: Settings, *, log_port: int) -> dict[str, str]:
    """The environment of the three processes (and so of every task): see the module doc."""
    conf, where = settings.cluster.airflow, home(settings)
    host, port = host_port(conf.api_url, 8080)
    par = str(conf.parallelism)
    bundles = embedded.dag_bundles(settings)
    bundles[1]["kwargs"] = {**bundles[1]["kwargs"], "path": str(where / "dags")}  # type: ignore[dict-item]
    return {
        "AIRFLOW_HOME": str(where),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.database_uri(
            settings, settings.cluster.postgres.airflow_db
        ),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": par,
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": par,
        "AIRFLOW__CORE__DAGS_FOLDER": str(embedded.dags_folder()),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": _secret(settings, "airflow_fernet_key", _fernet_key),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{port}/execution/",
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "10",
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": str(embedded.EXECUTION_API_TIMEOUT_S),
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        # Sensitive values stay masked; rtrec reads the executor there (executor_of).
        "AIRFLOW__API__EXPOSE_CONFIG": "True",
        # Tolerate pauses: a scheduler whose own heartbeat is older than this marks itself
        # failed and resets its running tasks. Airflow's 30 s is shorter than a stall of the
        # whole process seen on a loaded 2-core machine (80-150 s); a scheduler that really
        # died is noticed this much later (one stopped by `down` at once).
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": str(PAUSE_TOLERANCE_S),
        "AIRFLOW__API__SECRET_KEY": _secret(settings, "airflow_api_secret_key", _token),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(settings, "airflow_jwt_secret", _token),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{conf.username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_users_file(settings)),
        # The scheduler's log server (task logs while they run) on a port of its own, on
        # loopback: Airflow's default 8793 on every interface collides with a second one.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        **{key: os.environ.get(key, default) for key, default in embedded.OVERRIDABLE.items()},
        "DO_NOT_TRACK": "1",
        # The venv's scripts first, as for the embedded standalone: whatever Airflow or a
        # task starts by name (`airflow`, `spark-submit`) comes from this installation.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _token() -> str:
    return secrets.token_urlsafe(32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _migrate(settings: Settings, env: dict[str, str]) -> None:
    """``airflow db migrate`` against PostgreSQL: creates the schema once, seconds after."""
    proc = subprocess.run(
        [embedded.airflow_exe(), "db", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=settings.cluster.airflow.start_timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise Unavailable(f"`airflow db migrate` exited {proc.returncode}: {proc.stderr[-1500:]}")


def _heartbeat_since(client: AirflowApi, part: str, since: datetime) -> bool:
    """The API server reports ``part`` healthy with a heartbeat after ``since``."""
    body = (client.health() or {}).get(part) or {}
    beat = body.get(f"latest_{part}_heartbeat")
    return body.get("status") == "healthy" and beat is not None and _when(beat) > since


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _dags_parsed(client: AirflowApi) -> bool:
    try:
        listed = {d["dag_id"] for d in client.all("/dags", "dags")}
    except RtrecError:  # the API server is still starting, or not yet taking tokens
        return False
    return set(embedded.DAG_IDS) <= listed


def start(settings: Settings) -> None:
    """Migrate, then the three processes side by side (each idempotent); ready as above."""
    if not is_local(settings) or all(managed_pid(settings, n) for n in PROCESSES):
        return
    where = home(settings)
    (where / "dags").mkdir(parents=True, exist_ok=True)
    cfg = where / "airflow.cfg"
    if not cfg.exists():
        cfg.write_text("# rtrec sets every option as AIRFLOW__* in the environment\n")
        cfg.chmod(0o600)
    env = airflow_env(settings, log_port=_free_port())
    _migrate(settings, env)
    client, since = api(settings), datetime.now(UTC)
    ready: dict[str, Callable[[], bool]] = {
        API_SERVER: lambda: client.health() is not None,
        SCHEDULER: lambda: _heartbeat_since(client, "scheduler", since),
        DAG_PROCESSOR: lambda: (
            _heartbeat_since(client, "dag_processor", since) and _dags_parsed(client)
        ),
    }
    commands = {
        API_SERVER: "api-server",
        SCHEDULER: "scheduler",
        DAG_PROCESSOR: "dag-processor",
    }
    host, port = host_port(settings.cluster.airflow.api_url, 8080)

    def one(name: str) -> int:
        return start_managed(
            settings,
            name,
            [embedded.airflow_exe(), commands[name]],
            port=(host, port) if name == API_SERVER else None,
            env=env,
            cwd=where,
            ready=ready[name],
            timeout=settings.cluster.airflow.start_timeout_s,
            # SIGTERM to the scheduler alone: its LocalExecutor joins its workers, which
            # finish their running tasks; a signal to the whole group would fail them.
            signal_leader_only=name == SCHEDULER,
        )

    try:
        with ThreadPoolExecutor(max_workers=len(PROCESSES)) as pool:
            for done in [pool.submit(one, name) for name in PROCESSES]:
                done.result()
    finally:
        client.close()


def status(settings: Settings) -> ComponentStatus:
    """One row: the scheduler's and DAG processor's health, and the running scheduler's
    executor (from its job record), as the API server reports them."""
    url = settings.cluster.airflow.api_url
    managed = any(managed_pid(settings, n) is not None for n in PROCESSES)
    with api(settings) as client:
        health = client.health()
        if health is None:
            return ComponentStatus("airflow", url, False, "API server not answering", managed)
        parts = {p: (health.get(p) or {}).get("status") for p in ("scheduler", "dag_processor")}
        ok = all(s == "healthy" for s in parts.values())
        try:
            executor = executor_of(client)
        except RtrecError as exc:
            return ComponentStatus("airflow", url, False, f"API: {exc}"[:200], managed)
    detail = f"scheduler {parts['scheduler']}, dag processor {parts['dag_processor']}"
    # The health check calls a scheduler healthy until its heartbeat is PAUSE_TOLERANCE_S
    # old: a process of ours that is gone says so at once.
    gone = [n for n in PROCESSES if managed_pid(settings, n) is None] if managed else []
    if gone:
        ok, detail = False, f"not running: {', '.join(gone)}; {detail}"
    return ComponentStatus("airflow", url, ok, f"{detail}, {executor}", managed)


def executor_of(client: AirflowApi) -> str:
    """The configured executor (``[core] executor``, which the API shows when
    ``[api] expose_config`` is on, as on the profile's own) and the scheduler running now
    (its job record: the job leaves its executor class empty for the default one)."""
    resp = client.request(
        "GET", "/config/section/core/option/executor", headers={"Accept": "application/json"}
    )
    if resp.status_code == 200:
        options = resp.json()["sections"][0]["options"]
        executor = str(options[0]["value"])
    else:  # 403: a managed Airflow that keeps its configuration to itself
        executor = f"executor not shown by the API ({resp.status_code})"
    params = {"job_type": "SchedulerJob", "job_state": "running", "order_by": "-id"}
    jobs = client.get("/jobs", **params, limit=1)["jobs"]
    if not jobs:
        return f"{executor}, no scheduler running"
    return f"{executor} (scheduler job {jobs[0]['id']} on {jobs[0]['hostname']})"


def _descendants(settings: Settings, name: str) -> list[psutil.Process]:
    pid = managed_pid(settings, name)
    if pid is None:
        return []
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def stop(settings: Settings) -> list[str]:
    """Scheduler first (it stops executing), then the DAG processor, the API server last
    (task supervisors report to it until the end). Task processes leave the scheduler's
    process group (each runs in a session of its own): those still alive after it are
    stopped here, with their own children (a task's Spark driver)."""
    stopped = []
    for name in (SCHEDULER, DAG_PROCESSOR, API_SERVER):
        below = _descendants(settings, name)
        if stop_managed(settings, name, timeout=30):
            stopped.append(name)
        _end(below)
    return stopped


def _end(procs: list[psutil.Process]) -> None:
    """SIGTERM what still runs of ``procs`` (and their children), SIGKILL after 10 s."""
    alive = [p for p in procs if p.is_running()]
    with contextlib.suppress(psutil.Error):
        alive += [c for p in alive for c in p.children(recursive=True)]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, left = psutil.wait_procs(alive, timeout=10)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)
