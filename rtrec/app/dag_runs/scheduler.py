"""DAG runs executed by Airflow's own scheduler, triggered and watched over its REST API.

The cluster profile's side of :func:`rtrec.app.dag_runs.dag_runner`: the same ``run`` as
:class:`rtrec.app.dag_runs.DagRunner` and the same :class:`DagRunResult`, but nothing runs
in this process. ``run`` posts a DAG run (``POST /dags/{id}/dagRuns``, what the UI's trigger
button sends), polls its state until the scheduler has finished it, and reads back what it
left (task states and XComs) and which executor ran it (the running scheduler's job).

``queued=True`` means the oldest run of the DAG that is not finished yet, one a trigger
created (``rtrec_drift_monitor`` triggers ``rtrec_training``): under a scheduler it may
already be running, so it is waited for, not run again; ``queued="<run id>"`` names it.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from rtrec.app.dag_runs.airflow_api import AirflowApi, segment
from rtrec.app.dag_runs.client import DagRunResult
from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

FINISHED = ("success", "failed")
UNFINISHED = ("queued", "running")
POLL_S = 2.0
"""Seconds between two reads of a run's state: a training run takes minutes."""


class SchedulerRunner:
    """Trigger runs on the profile's Airflow and wait for its scheduler to finish them."""

    pid: int | None = None
    """No runner process here: the scheduler's task processes do the work."""

    def __init__(self, settings: Settings, *, api: AirflowApi | None = None) -> None:
        from rtrec.app import cluster_airflow

        self.settings = settings
        self.api = api or cluster_airflow.api(settings)
        self._executor: str | None = None

    def start(self) -> SchedulerRunner:
        return self

    def run(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        queued: bool | str = False,
        timeout_s: float = 1800,
    ) -> DagRunResult:
        """Trigger ``dag_id`` (or take the unfinished run ``queued`` selects) and wait until
        the scheduler has finished it; a failed run is returned (``ok`` False)."""
        started = time.perf_counter()
        dag = self.api.get(f"/dags/{segment(dag_id)}", missing_ok=True)
        if not dag:
            raise Unavailable(f"DAG {dag_id} is not registered on {self.api.base_url}")
        if dag.get("is_paused"):
            raise Unavailable(
                f"DAG {dag_id} is paused on {self.api.base_url}: its runs would wait forever "
                "(unpause it there)"
            )
        if queued:
            run_id = self._unfinished(dag_id, queued)
            if conf:
                logger.warning(
                    "conf %s not applied: run %s of %s was created by its trigger and the "
                    "scheduler runs it with that run's own conf",
                    sorted(conf),
                    run_id,
                    dag_id,
                )
        else:
            run_id = self.api.trigger(dag_id, conf or {})["dag_run_id"]
            logger.info("triggered %s run %s over REST", dag_id, run_id)
        state = self._wait(dag_id, run_id, timeout_s)
        result = self._read_back(dag_id, run_id, state)
        result.seconds = time.perf_counter() - started
        return result

    def _unfinished(self, dag_id: str, queued: bool | str) -> str:
        """The oldest queued or running run of ``dag_id``, or the run ``queued`` names
        (in any state: one that finished meanwhile is read back as it ended)."""
        path = f"/dags/{segment(dag_id)}/dagRuns"
        if queued is not True:
            if not self.api.get(f"{path}/{segment(str(queued))}", missing_ok=True):
                raise Unavailable(f"no queued run of {dag_id} ({queued}) on {self.api.base_url}")
            return str(queued)
        waiting = [r for s in UNFINISHED for r in self.api.all(path, "dag_runs", state=s)]
        if not waiting:
            raise Unavailable(f"no queued run of {dag_id} on {self.api.base_url}")
        return str(min(waiting, key=lambda r: r["run_after"])["dag_run_id"])

    def _wait(self, dag_id: str, run_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        path = f"/dags/{segment(dag_id)}/dagRuns/{segment(run_id)}"
        while True:
            run = self.api.get(path)
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"{dag_id} run {run_id} still {run['state']} after {timeout_s:.0f} s "
                    f"on {self.api.base_url}"
                )
            time.sleep(POLL_S)

    def _read_back(self, dag_id: str, run_id: str, run: dict[str, Any]) -> DagRunResult:
        """States, XComs and executor of the finished run; every run not finished yet
        (any DAG): what its triggers started."""
        from rtrec.app.cluster_airflow import executor_of

        path = f"/dags/{segment(dag_id)}/dagRuns/{segment(run_id)}/taskInstances"
        tasks: dict[str, dict[str, Any]] = {}
        tis = self.api.all(path, "task_instances")
        for ti in tis:
            xcom = self.api.get(
                f"{path}/{segment(ti['task_id'])}/xcomEntries/return_value", missing_ok=True
            )
            tasks[ti["task_id"]] = {
                "state": str(ti["state"]),
                "xcom": xcom.get("value") if xcom else None,
                "hostname": ti.get("hostname"),
                "pid": ti.get("pid"),
                "try_number": ti.get("try_number"),
            }
        # A task's own executor (``executor=`` on the operator) where one was set, else
        # the scheduler's default.
        chosen = {str(ti["executor"]) for ti in tis if ti.get("executor")}
        pending: dict[str, list[dict[str, Any]]] = {}
        for state in UNFINISHED:
            for dr in self.api.all("/dags/~/dagRuns", "dag_runs", state=state):
                pending.setdefault(dr["dag_id"], []).append(
                    {"run_id": dr["dag_run_id"], "conf": dr.get("conf"), "state": state}
                )
        return DagRunResult(
            dag_id=dag_id,
            run_id=run_id,
            state=str(run["state"]),
            conf=run.get("conf") or {},
            tasks=tasks,
            queued=pending,
            executor=", ".join(sorted(chosen)) if chosen else executor_of(self.api),
            log=f"{self.api.base_url}/dags/{dag_id}/runs/{run_id}",
        )

    def close(self, *, kill: bool = False) -> None:
        """Close the HTTP client; runs already triggered go on under the scheduler."""
        self.api.close()

    def __enter__(self) -> SchedulerRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
