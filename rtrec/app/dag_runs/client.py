"""The caller's side of a DAG run: :func:`run_dag`, the warm :class:`DagRunner` and
:class:`DagRunResult`.

The runner is a subprocess (:mod:`rtrec.app.dag_runs.worker`) whose Airflow environment is
set before Airflow is imported; this side sends it one JSON request a line and reads back
one result line, so nothing here imports Airflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rtrec.config import Settings
from rtrec.errors import Unavailable

RESULT = "RTREC_DAG_RUN "
"""Prefix of the worker's result lines on its stdout: anything else printed there (at
start-up, before a run's output goes to its log) is skipped, never read as a result."""


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
    """Where the run's output is: the runner's log file, or the run's page in Airflow's UI."""
    executor: str = "dag.test() in the rtrec runner process"
    """What executed the tasks: Airflow's in-process test runner here, the scheduler's
    executor for a run of :class:`rtrec.app.dag_runs.SchedulerRunner`."""

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


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    """Result lines from the runner's stdout into ``lines``; None once it has exited."""
    assert stream is not None
    for line in stream:
        if line.startswith(RESULT):
            lines.put(line)
    lines.put(None)
