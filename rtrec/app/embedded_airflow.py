"""Embedded Airflow: ``airflow standalone`` on this machine, with rtrec's DAGs and yours.

``up`` migrates the metadata DB (SQLite under ``settings.airflow.home``), reserializes the
DAGs (they list only after that) and starts the standalone (scheduler,
DAG processor, triggerer and API server, LocalExecutor) with small parallelism under
:func:`rtrec.app.stack.start_managed`; ``down`` stops it with SIGINT, which lets it stop its
own workers (SIGTERM orphans them).

Two DAG bundles: ``rtrec`` (the ``rtrec.dags`` package's directory; ``.airflowignore`` keeps
its library modules out of DAG parsing) and ``user`` (``<airflow home>/dags``, created empty), where
your own DAG files import :mod:`rtrec.dags.operators` and run under the same scheduler.

The scheduler runs the DAGs by itself: DAGs are unpaused when first registered, and the
workers reach the execution API on the port the API server really listens on (Airflow's
default, ``http://localhost:8080/execution/``, is not it). Task logs are kept at INFO.

Named ``embedded_airflow`` rather than ``airflow`` so no reader or import can mistake it
for the package.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rtrec.config import Settings
from rtrec.errors import Unavailable

if TYPE_CHECKING:
    from rtrec.app.dag_runs.airflow_api import AirflowApi

logger = logging.getLogger(__name__)

NAME = "airflow"
"""Managed-process name (``<work_dir>/run/airflow.json``, ``logs/airflow.log``)."""
DAG_IDS = (
    "rtrec_training",
    "rtrec_drift_monitor",
    "rtrec_feature_backfill",
    "rtrec_experiment_decision",
)


def dags_folder() -> Path:
    """rtrec's own DAG files (the ``rtrec`` bundle): the ``rtrec.dags`` package's folder."""
    import rtrec.dags

    return Path(rtrec.dags.__file__).resolve().parent


def user_dags_folder(settings: Settings) -> Path:
    """Where your own DAG files go (the ``user`` bundle): ``<airflow home>/dags``."""
    return Path(str(settings.airflow.home)) / "dags"


SQLITE_CONNECT_ARGS: dict[str, object] = {"timeout": 60.0}
"""Connect arguments of every embedded Airflow process's metadata DB connection (through
``[database] sql_alchemy_connect_args``): SQLite lets one writer at a time, and sqlite3's
default 5 s wait for the lock is shorter than the scheduler's transactions on a loaded
2-core machine, where a REST call (a DAG trigger's audit-log row) then failed with a 500."""

EXECUTION_API_TIMEOUT_S = 60
"""How long a task's supervisor waits for the execution API (Airflow's default 5 s): on a
loaded machine the API server answers slower than that, and the retried start call of a
task that had in fact started fails the task."""

USER_BUNDLE_REFRESH_S = 30
"""How often the DAG processor looks for new files among your DAGs (Airflow's default for
a bundle is 300 s, long to wait for a file you just saved)."""

OVERRIDABLE = {
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "http.access=WARNING",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
}
"""Defaults of the embedded stack that a variable of the same name in the environment
replaces: task logs at INFO (``WARNING`` keeps them to problems) without a line per UI
request in ``logs/airflow.log``, and DAGs that the scheduler runs as soon as they are
registered (``True`` to unpause each one in the UI)."""


def airflow_exe() -> str:
    """The ``airflow`` script of the venv running rtrec."""
    local = Path(sys.executable).parent / "airflow"
    return str(local) if local.exists() else "airflow"


def dag_bundles(settings: Settings) -> list[dict[str, object]]:
    """``[dag_processor] dag_bundle_config_list``: rtrec's DAGs and the user's folder."""
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    return [
        {"name": "rtrec", "classpath": local, "kwargs": {"path": str(dags_folder())}},
        {
            "name": "user",
            "classpath": local,
            "kwargs": {
                "path": str(user_dags_folder(settings)),
                "refresh_interval": USER_BUNDLE_REFRESH_S,
            },
        },
    ]


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for every Airflow process: home, DAG bundles, ports, parallelism, logs.

    ``RTREC_*`` variables pass through unchanged, so tasks see the same settings. The
    execution API URL must name the API server's real port: the LocalExecutor's task
    supervisors call it for every task state change, and Airflow's default (port 8080)
    fails every task at start with an empty task log.
    """
    home = Path(str(settings.airflow.home))
    par = str(settings.airflow.parallelism)
    port = settings.airflow.port
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(dag_bundles(settings)),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": par,
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": par,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{server_url(settings)}/execution/",
        # The standalone starts the scheduler seconds before the API server listens: a task
        # queued then keeps retrying its start call (backoff up to 90 s) instead of failing.
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "10",
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": str(EXECUTION_API_TIMEOUT_S),
        **_sqlite_connect_args(),
        "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        # Embedded only (binds loopback): no login page between the user and the UI, and
        # the REST API takes requests without a token.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        **{key: os.environ.get(key, default) for key, default in OVERRIDABLE.items()},
        "DO_NOT_TRACK": "1",
        # The standalone starts its components as `airflow ...` found on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _sqlite_connect_args() -> dict[str, str]:
    """The busy timeout for the embedded SQLite metadata DB; nothing when the environment
    points Airflow at another database (whose driver would reject sqlite3's arguments)."""
    conn = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite")
    if not conn.startswith("sqlite"):
        return {}
    path = f"{__name__}.SQLITE_CONNECT_ARGS"
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": path,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": path,
    }


def airflow_cli(settings: Settings, *args: str, timeout_s: float = 300) -> str:
    """Run one ``airflow`` command with the embedded environment; stdout on success."""
    env = {**os.environ, **airflow_env(settings)}
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [airflow_exe(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise Unavailable(
            f"`airflow {' '.join(args)}` exited {proc.returncode}: {proc.stderr[-1500:]}"
        )
    return proc.stdout


def prepare(settings: Settings) -> None:
    """``db migrate`` then ``dags reserialize``: the DB and DAG list a standalone needs."""
    user_dags_folder(settings).mkdir(parents=True, exist_ok=True)
    airflow_cli(settings, "db", "migrate")
    airflow_cli(settings, "dags", "reserialize")


def server_url(settings: Settings) -> str:
    """The API server's address (loopback): REST API, execution API and UI behind it."""
    return f"http://127.0.0.1:{settings.airflow.port}"


def health_url(settings: Settings) -> str:
    return f"{server_url(settings)}/api/v2/monitor/health"


def api(settings: Settings) -> AirflowApi:
    """A REST client of the embedded Airflow (``/api/v2``): no login, every caller is an
    admin on loopback. ``trigger`` on it is what a script of yours would call."""
    from rtrec.app.dag_runs.airflow_api import AirflowApi

    return AirflowApi(server_url(settings))


def healthy(settings: Settings, *, timeout_s: float = 10.0) -> bool:
    """The API server answers and reports the scheduler and DAG processor healthy.

    The timeout is generous: on two busy cores (a task starting, the DAG processor
    parsing) the one API worker can take seconds to answer while all is well.
    """
    import httpx

    try:
        body = httpx.get(health_url(settings), timeout=timeout_s).json()
    except (httpx.HTTPError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "dag_processor")
    return all((body.get(p) or {}).get("status") == "healthy" for p in parts)


def up(settings: Settings, *, timeout_s: float = 180) -> int:
    """Start the embedded standalone (idempotent); returns its pid once healthy."""
    from rtrec.app import stack

    pid = stack.managed_pid(settings, NAME)
    if pid is not None:
        return pid
    prepare(settings)
    return stack.start_managed(
        settings,
        NAME,
        [airflow_exe(), "standalone"],
        port=("127.0.0.1", settings.airflow.port),
        env=airflow_env(settings),
        cwd=Path(str(settings.airflow.home)),
        ready=lambda: healthy(settings),
        timeout=timeout_s,
        stop_signal=signal.SIGINT,
    )


def down(settings: Settings) -> bool:
    """Stop the standalone with SIGINT (SIGKILL for stragglers); True if one ran."""
    from rtrec.app import stack

    return stack.stop_managed(settings, NAME, timeout=30)
