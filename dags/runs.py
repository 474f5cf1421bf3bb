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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from rtrec.config import Settings
from rtrec.errors import Unavailable

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
    seconds: float = 0.0
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "success"

    def xcom(self, task_id: str) -> Any:
        return (self.tasks.get(task_id) or {}).get("xcom")


def migrate(settings: Settings) -> None:
    """Create or upgrade the metadata DB (idempotent; seconds when already current)."""
    from dags.embedded import airflow_cli

    airflow_cli(settings, "db", "migrate")


def run_dag(
    settings: Settings,
    dag_id: str,
    conf: dict[str, Any] | None = None,
    *,
    queued: bool | str = False,
    timeout_s: float = 1800,
) -> DagRunResult:
    """Run ``dag_id`` once and return its recorded outcome.

    ``queued=True`` runs the oldest queued run of ``dag_id`` instead, ``queued="<run id>"``
    that queued run; ``conf`` then adds to the conf it was queued with.
    Task output goes to ``<work_dir>/logs/dag-<dag_id>.log``; a failed run is returned
    (``ok`` False, task states say which), a runner that could not run raises.
    """
    from dags.embedded import airflow_env, dags_folder

    env = {**os.environ, **airflow_env(settings)}
    log = Path(settings.work_dir) / "logs" / f"dag-{dag_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "dags.runs", dag_id, json.dumps(conf or {}), str(dags_folder())]
    started = time.perf_counter()
    with log.open("a") as out:
        proc = subprocess.run(
            [*args, *([f"--queued={queued}"] if queued else [])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        out.write(proc.stdout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise Unavailable(
            f"running DAG {dag_id} failed (exit {proc.returncode}); see {log}: "
            + proc.stdout[-800:]
        )
    body = json.loads(lines[-1].removeprefix(RESULT))
    return DagRunResult(**body, seconds=time.perf_counter() - started, log=str(log))


def _execute(dag_id: str, conf: dict[str, Any], folder: str, queued: str | None) -> dict[str, Any]:
    """Inside the subprocess: run the DAG, then read back states, XComs and queued runs."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    dag = DagBag(dag_folder=folder).dags[dag_id]
    if not queued:
        run = dag.test(run_conf=conf)
    else:
        with create_session() as session:
            waiting = DagRun.find(dag_id=dag_id, state=DagRunState.QUEUED, session=session)
            if queued != "True":
                waiting = [r for r in waiting if r.run_id == queued]
            if not waiting:
                raise SystemExit(f"no queued run of {dag_id} ({queued})")
            first = min(waiting, key=lambda r: r.run_after)
            run_id, run_conf = first.run_id, {**(first.conf or {}), **conf}
            # dag.test() only runs a run it creates: the queued record makes way for one
            # with the same id and conf (links from the trigger keep pointing at it).
            session.delete(first)
        with mock.patch.object(DagRun, "generate_run_id", return_value=run_id):
            run = dag.test(run_conf=run_conf)
    out: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": run.run_id,
        "state": str(run.state),
        "conf": run.conf or {},
        "tasks": {},
        "queued": {},
    }
    with create_session() as session:
        for ti in run.get_task_instances(session=session):
            query = XComModel.get_many(
                run_id=run.run_id, dag_ids=dag_id, task_ids=ti.task_id, key="return_value"
            )
            row = session.scalars(query).first()
            value = XComModel.deserialize_value(row) if row is not None else None
            out["tasks"][ti.task_id] = {"state": str(ti.state), "xcom": value}
        for dr in DagRun.find(state=DagRunState.QUEUED, session=session):
            out["queued"].setdefault(dr.dag_id, []).append({"run_id": dr.run_id, "conf": dr.conf})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m dags.runs DAG_ID CONF_JSON DAGS_FOLDER [--queued=True|RUN_ID]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in args if a.startswith("--queued=")]
    queued = flags[0].removeprefix("--queued=") if flags else None
    dag_id, conf, folder = [a for a in args if a not in flags]
    result = _execute(dag_id, json.loads(conf), folder, queued)
    print(RESULT + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
