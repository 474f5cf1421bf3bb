"""Airflow's own scheduler runs the DAGs: triggered over REST, executed by LocalExecutor.

The drift monitor, triggered through the REST API, triggers ``rtrec_training``, which
survives a scheduler restart: its tasks run in the scheduler's task processes, its
training set is built on the Spark standalone master, its one version is registered in
the MLflow server, and both serving replicas hot-swap to it (the loop's end). One training
run covers all of it: on two cores each costs minutes of CI.
"""

from __future__ import annotations

import os
import time

import pytest
from rtrec.training.registry import ModelRegistry

from rtrec.app import cluster, cluster_airflow
from rtrec.app.processes import managed_pid, stop_managed
from rtrec.config import Settings
from tests.cluster.support import wait_replicas_serve

FINISHED_TASK = ("success", "skipped")


@pytest.fixture(scope="module")
def offline_log(settings: Settings) -> int:
    """Three weeks of synthetic events with a shift in the middle, as the stream processor
    would have logged them (what ``rtrec_training`` and the drift monitor read); returns
    the shift's time. Fewer events give the two-tower's one epoch too few steps for its
    learning-rate schedule."""
    from rtrec.data import ShiftConfig, SyntheticConfig, generate
    from tests.integration.test_dags import _write_offline_log

    cfg = SyntheticConfig.small(n_users=600, n_items=300, n_events=30_000, days=21)
    data = generate(cfg.model_copy(update={"shift": ShiftConfig(at_fraction=0.5)}))
    _write_offline_log(settings, data.events, data.items, data.users)
    return int(data.meta["shift_ts"])


def _versions(settings: Settings) -> dict[str, dict[str, str]]:
    """Registered versions of the model and their tags, read through the MLflow server."""
    found = ModelRegistry(settings).client.search_model_versions(
        f"name = '{settings.mlflow.model_name}'"
    )
    return {str(mv.version): dict(mv.tags) for mv in found}


def _spark_apps(settings: Settings) -> set[str]:
    state = cluster.master_json(settings) or {}
    return {a["id"] for key in ("activeapps", "completedapps") for a in state.get(key, [])}


def _wait_task_running(api: cluster_airflow.AirflowApi, run_id: str, task_id: str) -> None:
    from rtrec.app.dag_runs.airflow_api import segment

    path = f"/dags/rtrec_training/dagRuns/{segment(run_id)}/taskInstances/{task_id}"
    deadline = time.monotonic() + 900
    while (state := api.get(path)["state"]) != "running":
        assert state in (None, "scheduled", "queued") and time.monotonic() < deadline, state
        time.sleep(1)


def test_drift_triggers_a_training_that_survives_a_scheduler_restart_and_is_served(
    settings: Settings, offline_log: int
) -> None:
    """The loop's second half on the profile's engines. The drift monitor, triggered over
    REST a day after the shift, triggers ``rtrec_training`` itself; the scheduler is
    restarted while that run trains. The run still finishes, each task in a scheduler
    task process, its training set built on the Spark master, one version registered in
    the MLflow server and one promote attempt; promoted over the untrained first
    champion, it is then what both replicas serve."""
    from rtrec.training.registry import TAG_DECISION

    from rtrec.app.dag_runs import SchedulerRunner
    from rtrec.app.dag_runs.airflow_api import segment

    before, apps = _versions(settings), _spark_apps(settings)
    with SchedulerRunner(settings) as runner:
        # One epoch for the training it triggers (the drift monitor passes it on).
        conf = {"now_ms": offline_log + 86_400_000, "scores": False, "training_epochs": 1}
        check = runner.run("rtrec_drift_monitor", conf, timeout_s=900)
        record = runner.api.get(f"/dags/rtrec_drift_monitor/dagRuns/{segment(check.run_id)}")
        assert record["triggered_by"] == "rest_api" and record["run_type"] == "manual", record
        assert check.ok, f"{ {t: v['state'] for t, v in check.tasks.items()} }: {check.log}"
        assert check.xcom("drift_check")["drifted"] is True, check.xcom("drift_check")
        (triggered,) = check.queued["rtrec_training"]
        assert triggered["conf"]["reason"].startswith("drift: "), triggered
        assert triggered["conf"]["epochs"] == 1, triggered
        _wait_task_running(runner.api, triggered["run_id"], "train_two_tower")
        old = managed_pid(settings, cluster_airflow.SCHEDULER)
        # SIGTERM, as a restart sends it: the scheduler lets its running task finish, and
        # the tasks after it wait for the next scheduler.
        started = time.monotonic()
        assert stop_managed(settings, cluster_airflow.SCHEDULER, timeout=600)
        cluster_airflow.start(settings)
        print(f"scheduler restarted in {time.monotonic() - started:.1f} s")
        assert managed_pid(settings, cluster_airflow.SCHEDULER) not in (None, old)
        run = runner.run("rtrec_training", queued=triggered["run_id"], timeout_s=1200)
    states = {t: (v["state"], v["try_number"]) for t, v in run.tasks.items()}
    print(f"rtrec_training {run.run_id}: {run.state} in {run.seconds:.0f} s by {run.executor}")
    assert run.ok, f"{states}; task logs: {run.log}"
    assert {v[0] for v in states.values()} <= set(FINISHED_TASK), states
    assert run.executor.startswith("LocalExecutor (scheduler job"), run.executor
    # Each task ran in a process of its own (the scheduler's task processes), none in
    # this one: the in-process runner would have run them all in one.
    task_pids = [v["pid"] for v in run.tasks.values() if v["state"] == "success"]
    assert task_pids and len(set(task_pids)) == len(task_pids), task_pids
    assert os.getpid() not in task_pids
    # Its training set came from an application on the standalone master.
    assert _spark_apps(settings) - apps, "no Spark application ran on the master"
    version = str(run.xcom("evaluate_and_register")["version"])
    new = {v: tags for v, tags in _versions(settings).items() if v not in before}
    assert list(new) == [version], new
    assert states["evaluate_and_register"][1] == 1 and states["promote"][1] == 1, states
    decision = run.xcom("promote")
    assert new[version][TAG_DECISION] == ("promoted" if decision["promoted"] else "kept_challenger")
    # Against the untrained first champion the gate promotes, and the loop ends with both
    # replicas serving the new champion, fetched from the MLflow server over HTTP.
    assert decision["promoted"], decision
    assert ModelRegistry(settings).champion_version() == version
    print(f"replicas swapped to v{version}: {wait_replicas_serve(settings, version)}")
