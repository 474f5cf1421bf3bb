"""The DAG runner process: ``dag.test()`` runs on the embedded metadata DB, one a request.

:class:`rtrec.app.dag_runs.DagRunner` starts ``python -m rtrec.app.dag_runs --serve
DAGS_FOLDER [--warm]`` with Airflow's environment set before Airflow is imported, writes
one JSON request a line (``dag_id``, ``conf``, ``queued``, ``log``) and reads one result
line back. Each run's output (Python, Airflow, the JVM) goes to its DAG's log; what the
run left (states, XComs, queued runs) is read back through Airflow's REST API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rtrec.app.dag_runs.client import RESULT
from rtrec.app.dag_runs.rest import RestApi, segment, when

logger = logging.getLogger(__name__)


def _execute(
    dag_id: str, conf: dict[str, Any], folder: str, queued: str | None, api: RestApi
) -> dict[str, Any]:
    """Run the DAG (or the queued run ``queued`` names), then read back what it left."""
    dag = _load_dag(folder, dag_id)
    if not queued:
        run_id, replaced = dag.test(run_conf=conf).run_id, None
    else:
        run_id, replaced = _run_queued(dag, dag_id, conf, queued, api)
    return _read_back(api, dag_id, run_id, replaced)


def _oldest_queued(api: RestApi, dag_id: str, queued: str) -> dict[str, Any]:
    """The oldest queued run of ``dag_id`` (``queued`` "True"), or the one it names."""
    waiting = api.all(f"/dags/{segment(dag_id)}/dagRuns", "dag_runs", state="queued")
    if queued != "True":
        waiting = [r for r in waiting if r["dag_run_id"] == queued]
    if not waiting:
        raise SystemExit(f"no queued run of {dag_id} ({queued})")
    return min(waiting, key=lambda r: when(r["run_after"]))


def _run_queued(
    dag: Any, dag_id: str, conf: dict[str, Any], queued: str, api: RestApi
) -> tuple[str, str | None]:
    """Run a queued run with its conf (``conf`` added) and dates: (run id, the id of the
    queued run it replaced, or None when it kept that run's own id)."""
    first = _oldest_queued(api, dag_id, queued)
    run_conf = {**(first.get("conf") or {}), **conf}
    run_after = when(first["run_after"])
    if first.get("logical_date") and first["dag_run_id"] == f"manual__{run_after.isoformat()}":
        # A trigger's own id (``manual__<run_after>``, what TriggerDagRunOperator, the UI
        # and the REST API give a run): dag.test() with the queued run's dates makes
        # exactly that id and replaces the queued record, so links to it stay valid.
        logical_date = when(first["logical_date"])
        run = dag.test(logical_date=logical_date, run_after=run_after, run_conf=run_conf)
        return run.run_id, None
    # dag.test() names its run itself; no public call runs a queued record under an id of
    # the triggerer's choosing (or one without a logical date). The queued record goes,
    # its conf and dates run under dag.test()'s id, and the result says which run it
    # replaced.
    replaced = first["dag_run_id"]
    logger.warning(
        "queued run %s of %s has an id dag.test() cannot reproduce; it runs as a new "
        "run that replaces it",
        replaced,
        dag_id,
    )
    api.delete(f"/dags/{segment(dag_id)}/dagRuns/{segment(replaced)}")
    # Without a logical date dag.test() takes its default (now), never None: None would
    # make it replace whichever run of the DAG has no logical date.
    extra = {"logical_date": when(first["logical_date"])} if first.get("logical_date") else {}
    return dag.test(run_after=run_after, run_conf=run_conf, **extra).run_id, replaced


def _read_back(api: RestApi, dag_id: str, run_id: str, replaced: str | None) -> dict[str, Any]:
    """The run's state and conf, each task's state and return value, and every run still
    queued (any DAG): the fields of :class:`rtrec.app.dag_runs.DagRunResult`."""
    run = api.get(f"/dags/{segment(dag_id)}/dagRuns/{segment(run_id)}")
    out: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": run_id,
        "state": str(run["state"]),
        "conf": run.get("conf") or {},
        "tasks": {},
        "queued": {},
        "replaced": replaced,
    }
    path = f"/dags/{segment(dag_id)}/dagRuns/{segment(run_id)}/taskInstances"
    for ti in api.all(path, "task_instances"):
        xcom = api.get(f"{path}/{segment(ti['task_id'])}/xcomEntries/return_value", missing_ok=True)
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
    api = RestApi()

    if warm:
        try:
            _warm_up()
        except Exception:  # a run will load (and report) whatever failed here
            logger.warning("warm-up failed; the first run loads what is missing", exc_info=True)
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
    """``python -m rtrec.app.dag_runs --serve DAGS_FOLDER [--warm]``: :func:`serve` with
    the arguments :class:`rtrec.app.dag_runs.DagRunner` starts it with."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--serve":
        raise SystemExit("usage: python -m rtrec.app.dag_runs --serve DAGS_FOLDER [--warm]")
    return serve(args[1], warm="--warm" in args[2:])
