"""Run a DAG to completion on the embedded Airflow metadata DB, without a scheduler.

``run_dag(settings, "rtrec_training", {"epochs": 3})`` is ``dag.test()`` (Airflow's own
in-process runner: a real DAG run with task instances, XComs and logs recorded in the
metadata DB, visible in the UI once ``rtrec airflow up`` runs) in a subprocess whose
Airflow environment is set before Airflow is imported. ``queued=True`` executes the
oldest run a trigger queued (``rtrec_drift_monitor`` queues ``rtrec_training``) under
its run id and conf, instead of starting an unrelated one.

Why not the standalone: on one small machine a scheduler plus a fresh interpreter per
task (torch, Spark) costs minutes a run; ``rtrec demo`` and the tests want the same DAGs
in seconds. On real infrastructure the scheduler runs them; nothing here is needed.

:class:`DagRunner` keeps that subprocess alive for several runs (``rtrec demo``): Airflow,
torch, Evidently and the Spark JVM are loaded once and stay warm, which on two cores is
half a minute a run. Each run's output still goes to its DAG's own log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

RESULT = "RTREC_DAG_RUN "


@dataclass
class DagRunResult:
    """What one run left in the metadata DB."""

    dag_id: str
    run_id: str
    state: str
    conf: dict[str, Any]
    tasks: dict[str, dict[str, Any]]
    """task id -> ``{"state": ..., "xcom": return value or None}``."""
    queued: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """dag id -> runs still queued afterwards (``run_id``, ``conf``): what triggers left."""
    replaced: str | None = None
    """The queued run this run replaced when it could not keep that run's id (see
    :class:`DagRunner`); None when it ran under the queued run's own id, or none was queued."""
    seconds: float = 0.0
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "success"

    def xcom(self, task_id: str) -> Any:
        return (self.tasks.get(task_id) or {}).get("xcom")


def migrate(settings: Settings) -> None:
    """Create or upgrade the metadata DB (idempotent; seconds when already current)."""
    from rtrec.app.embedded_airflow import airflow_cli

    airflow_cli(settings, "db", "migrate")


def run_dag(
    settings: Settings,
    dag_id: str,
    conf: dict[str, Any] | None = None,
    *,
    queued: bool | str = False,
    timeout_s: float = 1800,
) -> DagRunResult:
    """Run ``dag_id`` once, in a runner process of its own, and return its recorded outcome.

    ``queued=True`` runs the oldest queued run of ``dag_id`` instead, ``queued="<run id>"``
    that queued run; ``conf`` then adds to the conf it was queued with.
    Task output goes to ``<work_dir>/logs/dag-<dag_id>.log``; a failed run is returned
    (``ok`` False, task states say which), a runner that could not run raises.
    """
    with DagRunner(settings) as runner:
        return runner.run(dag_id, conf, queued=queued, timeout_s=timeout_s)


class DagRunner:
    """One warm runner subprocess for many DAG runs; ``run`` is :func:`run_dag`.

    ``warm=True`` also loads the tasks' heavy dependencies and starts the Spark session
    as soon as the process is up, so that work overlaps whatever the caller does before
    the first run. A runner that died (or a run past its timeout, which kills it) is
    replaced by a fresh one on the next ``run``.
    """

    def __init__(self, settings: Settings, *, warm: bool = False) -> None:
        self.settings = settings
        self.warm = warm
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._logs = Path(settings.work_dir) / "logs"

    @property
    def pid(self) -> int | None:
        """The runner process's pid while it runs (None before the first run)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> DagRunner:
        """Start the process now (``run`` does it on first use)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        from rtrec.app.embedded_airflow import airflow_env, dags_folder

        self._logs.mkdir(parents=True, exist_ok=True)
        self._lines = queue.Queue()
        args = [sys.executable, "-m", "rtrec.app.dag_runs", "--serve", str(dags_folder())]
        with (self._logs / "dag-runner.log").open("a") as boot_log:
            self._proc = subprocess.Popen(
                [*args, *(["--warm"] if self.warm else [])],
                env={**os.environ, **airflow_env(self.settings)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=boot_log,
                text=True,
                bufsize=1,
            )
        # The pump gets this process's queue: a killed predecessor's pump must not post
        # its end-of-process marker into the queue of the process that replaced it.
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True).start()
        return self

    def run(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        queued: bool | str = False,
        timeout_s: float = 1800,
    ) -> DagRunResult:
        """Run ``dag_id`` once in this runner; see :func:`run_dag`."""
        self.start()
        assert self._proc is not None and self._proc.stdin is not None
        log = self._logs / f"dag-{dag_id}.log"
        request = {"dag_id": dag_id, "conf": conf or {}, "queued": queued or None, "log": str(log)}
        started = time.perf_counter()
        try:
            self._proc.stdin.write(json.dumps(request, default=str) + "\n")
            self._proc.stdin.flush()
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self.close(kill=True)
            raise Unavailable(f"DAG {dag_id} ran past {timeout_s:.0f} s; see {log}") from None
        except BrokenPipeError:
            line = None
        if line is None:
            code = self._proc.wait()
            self._proc = None
            raise Unavailable(f"the DAG runner exited ({code}) running {dag_id}; see {log}")
        body = json.loads(line.removeprefix(RESULT))
        if "error" in body:
            raise Unavailable(f"running DAG {dag_id} failed: {body['error']}; see {log}")
        return DagRunResult(**body["run"], seconds=time.perf_counter() - started, log=str(log))

    def close(self, *, kill: bool = False) -> None:
        """Let the process finish (end of input), or kill it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            if kill:
                raise subprocess.TimeoutExpired(proc.args, 0)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> DagRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(kill=exc_type is not None)


def _execute(
    dag_id: str, conf: dict[str, Any], folder: str, queued: str | None, api: _RestApi
) -> dict[str, Any]:
    """Inside the subprocess: run the DAG, then read back states, XComs and queued runs."""
    dag = _load_dag(folder, dag_id)
    replaced: str | None = None
    if not queued:
        run_id = dag.test(run_conf=conf).run_id
    else:
        waiting = api.all(f"/dags/{_q(dag_id)}/dagRuns", "dag_runs", state="queued")
        if queued != "True":
            waiting = [r for r in waiting if r["dag_run_id"] == queued]
        if not waiting:
            raise SystemExit(f"no queued run of {dag_id} ({queued})")
        first = min(waiting, key=lambda r: _when(r["run_after"]))
        run_conf = {**(first.get("conf") or {}), **conf}
        run_after = _when(first["run_after"])
        if first.get("logical_date") and first["dag_run_id"] == f"manual__{run_after.isoformat()}":
            # A trigger's own id (``manual__<run_after>``, what TriggerDagRunOperator, the UI
            # and the REST API give a run): dag.test() with the queued run's dates makes
            # exactly that id and replaces the queued record, so links to it stay valid.
            logical_date = _when(first["logical_date"])
            run_id = dag.test(
                logical_date=logical_date, run_after=run_after, run_conf=run_conf
            ).run_id
        else:
            # dag.test() names its run itself; no public call runs a queued record under an
            # id of the triggerer's choosing (or one without a logical date). The queued
            # record goes, its conf and dates run under dag.test()'s id, and the result
            # says which run it replaced.
            replaced = first["dag_run_id"]
            logger.warning(
                "queued run %s of %s has an id dag.test() cannot reproduce; it runs as a new "
                "run that replaces it",
                replaced,
                dag_id,
            )
            api.delete(f"/dags/{_q(dag_id)}/dagRuns/{_q(replaced)}")
            # Without a logical date dag.test() takes its default (now), never None: None
            # would make it replace whichever run of the DAG has no logical date.
            extra = (
                {"logical_date": _when(first["logical_date"])} if first.get("logical_date") else {}
            )
            run_id = dag.test(run_after=run_after, run_conf=run_conf, **extra).run_id
    run = api.get(f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")
    out: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": run_id,
        "state": str(run["state"]),
        "conf": run.get("conf") or {},
        "tasks": {},
        "queued": {},
        "replaced": replaced,
    }
    path = f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances"
    for ti in api.all(path, "task_instances"):
        xcom = api.get(f"{path}/{_q(ti['task_id'])}/xcomEntries/return_value", missing_ok=True)
        out["tasks"][ti["task_id"]] = {
            "state": str(ti["state"]),
            "xcom": xcom.get("value") if xcom else None,
        }
    for dr in api.all("/dags/~/dagRuns", "dag_runs", state="queued"):
        out["queued"].setdefault(dr["dag_id"], []).append(
            {"run_id": dr["dag_run_id"], "conf": dr.get("conf")}
        )
    return out


def _load_dag(folder: str, dag_id: str) -> Any:
    """The DAG ``dag_id`` defined by ``<folder>/<dag_id>.py`` (rtrec names each DAG file after
    its DAG), imported afresh so a run sees the file as it is now."""
    import importlib.util

    from airflow.sdk import DAG

    path = Path(folder) / f"{dag_id}.py"
    if not path.is_file():
        raise SystemExit(f"no DAG file {path} for {dag_id}")
    spec = importlib.util.spec_from_file_location(f"rtrec_dag_file_{dag_id}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for value in vars(module).values():
        if isinstance(value, DAG) and value.dag_id == dag_id:
            return value
    raise SystemExit(f"{path} defines no DAG {dag_id}")


def _q(part: str) -> str:
    """One path segment of a REST URL (run ids hold ``:`` and ``+``)."""
    return quote(part, safe="~")


def _when(text: str) -> datetime:
    """A timestamp of the REST API (ISO 8601, ``Z`` for UTC) as an aware datetime."""
    return datetime.fromisoformat(text)


class _RestApi:
    """Airflow's stable REST API (``/api/v2``), served in this process over ASGI.

    The runner has no API server to call (the standalone may not be up), so it mounts
    Airflow's own API application in process: the same endpoints, the same metadata DB.
    The embedded environment makes every caller an admin (loopback only), so no token.
    """

    def __init__(self) -> None:
        import asyncio

        import httpx
        from airflow.api_fastapi.app import create_app

        self._loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=create_app("core"))
        self._client = httpx.AsyncClient(transport=transport, base_url="http://airflow/api/v2")

    def _call(self, method: str, path: str, params: dict[str, Any]) -> Any:
        return self._loop.run_until_complete(self._client.request(method, path, params=params))

    def get(self, path: str, *, missing_ok: bool = False, **params: Any) -> dict[str, Any]:
        resp = self._call("GET", path, params)
        if missing_ok and resp.status_code == 404:
            return {}
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path}: {resp.status_code} {resp.text[:500]}")
        return resp.json()

    def all(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged list endpoint."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.get(path, **params, limit=100, offset=len(items))
            items += page[key]
            if not page[key] or len(items) >= page["total_entries"]:
                return items

    def delete(self, path: str) -> None:
        resp = self._call("DELETE", path, {})
        if resp.status_code not in (200, 204):
            raise RuntimeError(f"DELETE {path}: {resp.status_code} {resp.text[:500]}")


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    """Result lines from the runner's stdout into ``lines``; None once it has exited."""
    assert stream is not None
    for line in stream:
        if line.startswith(RESULT):
            lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def _output_to(path: str) -> Iterator[None]:
    """Send file descriptors 1 and 2 (Python, Airflow, the JVM) to ``path`` for a while."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _warm_up() -> None:
    """Load what the tasks load (seconds each on two cores) and start the Spark session."""
    import torch  # noqa: F401

    from rtrec.config import get_settings
    from rtrec.training import spark_session, train  # noqa: F401  (loads the pipeline)

    spark_session(get_settings())
    import mlflow  # noqa: F401

    from rtrec.monitoring import drift_report  # noqa: F401  (loads Evidently)


def serve(folder: str, *, warm: bool = False) -> int:
    """Answer one JSON request a line on stdin (``dag_id``, ``conf``, ``queued``, ``log``)
    with one result line on stdout, until stdin closes."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    # Airflow and its REST API are loaded before the first request, not during it.
    api = _RestApi()

    if warm:
        try:
            _warm_up()
        except Exception:  # a run will load (and report) whatever failed here
            traceback.print_exc()
    for line in sys.stdin:
        req = json.loads(line)
        with _output_to(req["log"]):
            try:
                queued = req.get("queued")
                run = _execute(
                    req["dag_id"],
                    req["conf"],
                    folder,
                    None if queued is None else str(queued),
                    api,
                )
                answer: dict[str, Any] = {"run": run}
            except (Exception, SystemExit) as exc:
                traceback.print_exc()
                answer = {"error": f"{type(exc).__name__}: {exc}"}
        channel.write(RESULT + json.dumps(answer, default=str) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rtrec.app.dag_runs --serve DAGS_FOLDER [--warm]`` (see :class:`DagRunner`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--serve":
        raise SystemExit("usage: python -m rtrec.app.dag_runs --serve DAGS_FOLDER [--warm]")
    return serve(args[1], warm="--warm" in args[2:])


if __name__ == "__main__":
    raise SystemExit(main())
