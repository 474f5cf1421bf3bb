"""The cluster profile on this machine: real PostgreSQL, MLflow server and Spark standalone.

``rtrec up --profile cluster`` (the CLI, with ``RTREC_CONFIG`` at the profile's settings file
and free ports) starts every engine once for the module; the tests then build training
sets with the real Spark job on the standalone master and show its executors on the
workers did the work, register a model bundle through the MLflow server over HTTP and
fetch it back, and finally ``rtrec down --profile cluster`` must leave no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner
from rtrec.training.dataset import build_training_sets, stop_spark, write_event_log
from rtrec.training.registry import ModelRegistry
from rtrec.training.spark import spark_session

from rtrec.app import cluster, cluster_airflow
from rtrec.app.cli import main
from rtrec.app.cluster_postgres import connect
from rtrec.app.processes import alive, managed_names, managed_pid, stop_managed
from rtrec.config import Settings, load_settings
from tests.conftest import cluster_ports, free_port, settings_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(1500),
]

PROFILE_FILE = Path(__file__).resolve().parents[2] / "infra" / "rtrec.local-cluster.yaml"
AIRFLOW = cluster_airflow.PROCESSES
FINISHED_TASK = ("success", "skipped")


@pytest.fixture(scope="module")
def cluster_env() -> Iterator[dict[str, str]]:
    """The profile's settings file with free ports and a fresh work dir. The work dir is
    made under /tmp with mode 0711, not pytest's 0700 tree: run as root, PostgreSQL runs
    as its own account, which must be able to enter it."""
    work = Path(tempfile.mkdtemp(prefix="rtrec-cluster-"))
    os.chmod(work, 0o711)
    nodes = cluster_ports(3)
    env = {
        "RTREC_CONFIG": str(PROFILE_FILE),
        "RTREC_WORK_DIR": str(work),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RTREC_REDIS__URL": f"redis://127.0.0.1:{nodes[0]}",
        "RTREC_CLUSTER__REDIS__PORTS": json.dumps(nodes),
        "RTREC_SERVING__PORT": str(free_port()),
        "RTREC_CLUSTER__SERVING__REPLICA_PORTS": json.dumps([free_port(), free_port()]),
        "RTREC_CLUSTER__STREAM__METRICS_PORTS": json.dumps([free_port(), free_port()]),
        "RTREC_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "RTREC_SPARK__MASTER": f"spark://127.0.0.1:{free_port()}",
        "RTREC_CLUSTER__POSTGRES__PORT": str(free_port()),
        "RTREC_CLUSTER__SPARK__UI_PORT": str(free_port()),
        "RTREC_CLUSTER__AIRFLOW__API_URL": f"http://127.0.0.1:{free_port()}",
    }
    with settings_env(env):
        yield env
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(cluster_env: dict[str, str]) -> Iterator[Settings]:
    """The profile, up through the CLI; brought down at the end even if a test failed."""
    s = load_settings()
    started = time.monotonic()
    out = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    print(f"rtrec up --profile cluster: {time.monotonic() - started:.1f} s")
    try:
        assert out.exit_code == 0, out.output
        for name in ("postgres", "mlflow-server", "spark", "airflow"):
            assert f"[ ok ] {name}" in out.output, out.output
        yield s
    finally:
        stop_spark()
        cluster.down(s)


def _worker_states(settings: Settings) -> list[dict]:
    """Each worker's own /json (its executors), through the address the master lists."""
    state = cluster.master_json(settings)
    assert state is not None
    return [
        httpx.get(f"{w['webuiaddress']}/json/", timeout=5, follow_redirects=True).json()
        for w in state["workers"]
    ]


def _finished_tasks(settings: Settings, app_id: str) -> dict[str, int]:
    """Tasks each worker's executor of ``app_id`` finished, from the executor's own log
    (``<worker work dir>/<app id>/<executor id>/stderr``): only an executor writes it."""
    counts = {}
    for i in range(1, settings.cluster.spark.workers + 1):
        app_dir = settings.work_dir / "spark" / f"spark-worker-{i}" / app_id
        logs = list(app_dir.glob("*/stderr")) if app_dir.is_dir() else []
        counts[f"spark-worker-{i}"] = sum(
            log.read_text(errors="replace").count("Finished task") for log in logs
        )
    return counts


def test_training_sets_are_built_by_executors_on_the_workers(
    settings: Settings, tmp_path: Path
) -> None:
    from rtrec.data import SyntheticConfig, generate

    cfg = SyntheticConfig.small(n_users=300, n_items=150, n_events=6000, days=10)
    source = write_event_log(generate(cfg), tmp_path / "offline")
    sets = build_training_sets(settings, source=source, out_dir=tmp_path / "sets")
    assert sets.counts["train"] > 0
    assert len(sets.read("train")) == sets.counts["train"]

    sc = spark_session(settings).sparkContext
    assert sc.master == settings.spark.master  # the standalone master, not local[*]
    app_id = sc.applicationId
    state = cluster.master_json(settings)
    assert state is not None
    (app,) = [a for a in state["activeapps"] if a["id"] == app_id]
    conf = settings.cluster.spark
    assert app["cores"] == conf.workers * conf.worker_cores, app  # every worker's cores
    hosting = [
        w for w in _worker_states(settings) if any(e["appid"] == app_id for e in w["executors"])
    ]
    assert len(hosting) == conf.workers, "an executor of the job on every worker"
    finished = _finished_tasks(settings, app_id)
    print(f"tasks finished by each worker's executor: {finished}")
    assert sum(finished.values()) > 0, finished

    stop_spark()
    state = cluster.master_json(settings)
    assert state is not None
    (done,) = [a for a in state["completedapps"] if a["id"] == app_id]
    assert done["state"] == "FINISHED"


def test_a_bundle_registers_over_http_and_comes_back(settings: Settings, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "top.txt").write_text("i1 i2 i3\n")
    (bundle / "weights.bin").write_bytes(os.urandom(4096))
    registry = ModelRegistry(settings)
    run_id, version = registry.log_and_register(
        bundle, params={"profile": "cluster"}, metrics={"ndcg@10": 0.25}
    )
    back = registry.download_bundle(version, dst=tmp_path / "downloaded")
    for name in ("top.txt", "weights.bin"):
        assert (back / name).read_bytes() == (bundle / name).read_bytes()

    # Served artifacts: the experiment points at the server's proxy, and the bytes are in
    # the server's artifact destination, put there through HTTP.
    exp = registry.client.get_experiment_by_name(settings.mlflow.experiment)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    stored = list(Path(str(settings.mlflow.artifact_root)).rglob("weights.bin"))
    assert stored and stored[0].read_bytes() == (bundle / "weights.bin").read_bytes()
    # The backend store is PostgreSQL: the run and the version are rows there.
    pg = settings.cluster.postgres
    conn = connect(settings, pg.mlflow_db, pg.mlflow_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run_id,))
            assert cur.fetchone()[0] == 1
            cur.execute(
                "SELECT count(*) FROM model_versions WHERE name = %s AND version = %s",
                (settings.mlflow.model_name, int(version)),
            )
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()


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


def test_training_dag_triggered_over_rest_runs_under_the_scheduler(
    settings: Settings, offline_log: int
) -> None:
    from rtrec.training.registry import TAG_DECISION

    from rtrec.app.dag_runs import SchedulerRunner, dag_runner
    from rtrec.app.dag_runs.airflow_api import segment

    before, apps = _versions(settings), _spark_apps(settings)
    with dag_runner(settings, "cluster") as runner:
        assert isinstance(runner, SchedulerRunner)
        run = runner.run("rtrec_training", {"epochs": 1}, timeout_s=1200)
        record = runner.api.get(f"/dags/rtrec_training/dagRuns/{segment(run.run_id)}")
    states = {t: v["state"] for t, v in run.tasks.items()}
    print(f"rtrec_training {run.run_id}: {run.state} in {run.seconds:.0f} s by {run.executor}")
    assert run.ok, f"{states}; task logs: {run.log}"
    assert set(states.values()) <= set(FINISHED_TASK), states
    assert record["triggered_by"] == "rest_api" and record["run_type"] == "manual", record
    assert run.executor.startswith("LocalExecutor (scheduler job"), run.executor
    # Each task ran in a process of its own (the scheduler's task processes), none in
    # this one: the in-process runner would have run them all in one.
    task_pids = [v["pid"] for v in run.tasks.values() if v["state"] == "success"]
    assert task_pids and len(set(task_pids)) == len(task_pids), task_pids
    assert os.getpid() not in task_pids
    # Its training set came from an application on the standalone master.
    assert _spark_apps(settings) - apps, "no Spark application ran on the master"
    version = str(run.xcom("evaluate_and_register")["version"])
    after = _versions(settings)
    assert set(after) - set(before) == {version}
    promoted = run.xcom("promote")["promoted"]
    assert after[version][TAG_DECISION] == ("promoted" if promoted else "kept_challenger")


def _wait_task_running(api: cluster_airflow.AirflowApi, run_id: str, task_id: str) -> None:
    from rtrec.app.dag_runs.airflow_api import segment

    path = f"/dags/rtrec_training/dagRuns/{segment(run_id)}/taskInstances/{task_id}"
    deadline = time.monotonic() + 900
    while (state := api.get(path)["state"]) != "running":
        assert state in (None, "scheduled", "queued") and time.monotonic() < deadline, state
        time.sleep(1)


def test_drift_triggers_a_training_that_survives_a_scheduler_restart(
    settings: Settings, offline_log: int
) -> None:
    """The drift monitor, triggered over REST a day after the shift, triggers
    ``rtrec_training`` itself; the scheduler is restarted while that run trains, and the
    run still finishes with one version registered and one promote attempt."""
    from rtrec.training.registry import TAG_DECISION

    from rtrec.app.dag_runs import SchedulerRunner

    before = _versions(settings)
    with SchedulerRunner(settings) as runner:
        conf = {"now_ms": offline_log + 86_400_000, "scores": False}
        check = runner.run("rtrec_drift_monitor", conf, timeout_s=900)
        assert check.ok, f"{ {t: v['state'] for t, v in check.tasks.items()} }: {check.log}"
        assert check.xcom("drift_check")["drifted"] is True, check.xcom("drift_check")
        (triggered,) = check.queued["rtrec_training"]
        assert triggered["conf"]["reason"].startswith("drift: "), triggered
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
    assert run.ok, f"{states}; task logs: {run.log}"
    version = str(run.xcom("evaluate_and_register")["version"])
    new = {v: tags for v, tags in _versions(settings).items() if v not in before}
    assert list(new) == [version], new
    assert states["evaluate_and_register"][1] == 1 and states["promote"][1] == 1, states
    decision = run.xcom("promote")
    assert new[version][TAG_DECISION] == ("promoted" if decision["promoted"] else "kept_challenger")
    if decision["promoted"]:
        assert ModelRegistry(settings).champion_version() == version


def _airflow_processes(settings: Settings) -> list[int]:
    """Live processes whose environment names the profile's Airflow home: task processes
    (which leave the scheduler's session) and their Spark drivers. Airflow's processes that
    set their title lose their environment with it; they are in the recorded tree."""
    home = str(cluster_airflow.home(settings))
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AIRFLOW_HOME") == home and proc.is_running():
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_up_again_starts_nothing_and_down_leaves_no_process(settings: Settings) -> None:
    names = managed_names(settings)
    for needed in ("postgres", "mlflow-server", "spark-master", "spark-worker-1", *AIRFLOW):
        assert needed in names
    pids = {name: managed_pid(settings, name) for name in names}
    assert all(pids.values()), pids
    again = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    assert again.exit_code == 0, again.output
    assert {name: managed_pid(settings, name) for name in names} == pids, "up restarted one"
    tree = {
        p.pid
        for pid in pids.values()
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    }
    # PostgreSQL's backends leave the postmaster's process group: list them by parent.
    tree |= {p.pid for p in psutil.Process(pids["postgres"]).children()}
    started = time.monotonic()
    out = CliRunner().invoke(main, ["down", "--profile", "cluster"])
    print(f"rtrec down --profile cluster: {time.monotonic() - started:.1f} s")
    assert out.exit_code == 0, out.output
    left = sorted(pid for pid in tree if alive(pid))
    assert not left, f"still running after down: {left}"
    assert managed_names(settings) == []
    # This process's own Spark driver JVM names the work dir too (its log4j file); it is
    # the test's, not the profile's.
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    work = str(settings.work_dir)
    strays = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.info["pid"] not in ours and any(work in a for a in (p.info["cmdline"] or []))
    ]
    assert not strays, f"processes naming the work dir after down: {strays}"
    assert not _airflow_processes(settings), "Airflow processes (tasks included) after down"
