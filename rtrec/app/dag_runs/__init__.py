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

The caller's side is :mod:`~rtrec.app.dag_runs.client`; the subprocess is
:mod:`~rtrec.app.dag_runs.worker`, which reads runs back through Airflow's REST API
(:mod:`~rtrec.app.dag_runs.rest`).

In the cluster profile no DAG runs in rtrec's processes: Airflow's scheduler executes runs
triggered through its REST API (:class:`~rtrec.app.dag_runs.scheduler.SchedulerRunner`,
same ``run`` and result). :func:`dag_runner` is the one place that picks by profile.
"""

from __future__ import annotations

from typing import Literal

from rtrec.app.dag_runs.client import DagRunner, DagRunResult, migrate, run_dag
from rtrec.app.dag_runs.scheduler import SchedulerRunner
from rtrec.config import Settings

Profile = Literal["embedded", "cluster"]


def dag_runner(
    settings: Settings, profile: Profile = "embedded", *, warm: bool = False
) -> DagRunner | SchedulerRunner:
    """The runner of ``profile``: the warm in-process runner (``warm``: load the tasks'
    dependencies at once) or, in the cluster profile, Airflow's scheduler over REST."""
    if profile == "cluster":
        return SchedulerRunner(settings)
    return DagRunner(settings, warm=warm)


__all__ = [
    "DagRunResult",
    "DagRunner",
    "Profile",
    "SchedulerRunner",
    "dag_runner",
    "migrate",
    "run_dag",
]
