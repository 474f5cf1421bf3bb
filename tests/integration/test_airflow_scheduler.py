"""Airflow's own scheduler runs the DAGs: ``rtrec airflow up`` (scheduler, DAG processor,
API server, LocalExecutor on the embedded SQLite DB) against the test stack, runs
triggered through Airflow's REST API as a user would, a user DAG from ``rtrec.dags.operators``
beside ours, and nothing left running after ``rtrec airflow down``.

One Airflow for the module, in a work dir of its own (fresh registry, offline log and
Airflow home) on the session's broker and Redis. The data has its drift in the middle:
the latest window is calm, so the drift monitor's scheduled run (an unpaused DAG is run
for its latest interval at once) does not retrain, and a run triggered for the day after
the shift does.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from rtrec.app import embedded_airflow as embedded
from rtrec.app.dag_runs.airflow_api import TIMEOUT_S, AirflowApi
from rtrec.config import Settings, get_settings, load_settings
from tests.conftest import free_port, restore_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

DAY = 86_400_000
USER_DAG = Path(__file__).parent / "user_dags" / "my_refresh_and_retrain.py"
USER_DAG_ID = "my_refresh_and_retrain"
DONE = ("success", "failed")
LATE_DAG = """
from datetime import UTC, datetime

from airflow.sdk import DAG

from rtrec.dags.operators import DriftCheckOperator

with DAG("saved_later", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
    DriftCheckOperator(task_id="drift_check", scores=False, alert=False)
"""


@dataclass
class Airflow:
    """The running embedded Airflow: its settings, REST clients (plain HTTP for reads,
    rtrec's for triggers) and the data's shift."""

    settings: Settings
    api: httpx.Client
    client: AirflowApi
    shift_ts: int

    def get(self, path: str, **params: Any) -> Any:
        resp = self.api.get(path, params=params)
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text[:500]}"
        return resp.json()

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v2/dags/{dag_id}/dagRuns`` (what the UI's trigger button sends)
        through rtrec's client, which sends it again if the answer is lost."""
        return self.client.trigger(dag_id, conf, run_id=run_id)

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns", order_by="run_after", limit=100)["dag_runs"]

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float) -> dict[str, Any]:
        """Poll until the scheduler has finished the run (success or failed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.get(f"/dags/{dag_id}/dagRuns/{_q(run_id)}")
            if run["state"] in DONE:
                return run
            assert time.monotonic() < deadline, (
                f"{dag_id} run {run_id} still {run['state']} after {timeout_s:.0f} s: "
                f"{self.task_states(dag_id, run_id)}"
            )
            time.sleep(2)

    def wait_idle(self, dag_id: str, timeout_s: float) -> list[dict[str, Any]]:
        """Poll until no run of ``dag_id`` is queued or running; its runs."""
        deadline = time.monotonic() + timeout_s
        while True:
            runs = self.runs(dag_id)
            if all(r["state"] in DONE for r in runs):
                return runs
            assert time.monotonic() < deadline, f"{dag_id} runs still going: {runs}"
            time.sleep(2)

    def failures(self, dag_id: str, run_id: str) -> str:
        """The error lines of the run's failed tasks (the work dir may be gone when a
        failure is read, so the assertion message carries them)."""
        out = []
        for ti in self.get(f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances")["task_instances"]:
            if ti["state"] != "failed":
                continue
            for line in self.task_log(dag_id, run_id, ti["task_id"], ti["try_number"]):
                if line.get("level") in ("error", "critical"):
                    detail = json.dumps(line.get("error_detail", ""))[-3000:]
                    out.append(f"{ti['task_id']}: {line['event']} {detail}")
        return "\n".join(out) or "no failed task"

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.get(f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.get(path)["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[dict]:
        """The task's log as Airflow stored it: one dict per line (event, level, logger)."""
        path = f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/logs/{try_number}"
        resp = self.api.get(path, headers={"Accept": "application/json"})
        assert resp.status_code == 200, resp.text[:500]
        return [line for line in resp.json()["content"] if "level" in line]


def _q(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def _airflow_processes(home: Path) -> list[int]:
    """Live processes whose environment names this Airflow home: the standalone, its
    components, workers and task processes, and the JVMs the tasks started."""
    marker = f"AIRFLOW_HOME={home}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            pids.append(int(proc.name))
    return pids


def _write_offline_log(settings: Settings) -> int:
    """Three weeks of events with a shift in the middle, as the stream would have logged
    them; returns the shift's timestamp."""
    from rtrec.data import ShiftConfig, SyntheticConfig, generate
    from tests.integration.test_dags import _write_offline_log as write

    cfg = SyntheticConfig.small(n_users=600, n_items=300, n_events=30_000, days=21)
    data = generate(cfg.model_copy(update={"shift": ShiftConfig(at_fraction=0.5)}))
    write(settings, data.events, data.items, data.users)
    return int(data.meta["shift_ts"])


@pytest.fixture(scope="module")
def airflow(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    from rtrec.app.cli import main

    work = tmp_path_factory.mktemp("scheduler-work")
    env = {
        "RTREC_WORK_DIR": str(work),
        "RTREC_AIRFLOW__PORT": str(free_port()),
        "RTREC_AIRFLOW__PARALLELISM": "2",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    settings = load_settings()
    home = Path(str(settings.airflow.home))
    shift = _write_offline_log(settings)
    # The user's DAG, saved where `rtrec airflow up` looks for DAGs of one's own.
    embedded.user_dags_folder(settings).mkdir(parents=True)
    shutil.copy(USER_DAG, embedded.user_dags_folder(settings) / USER_DAG.name)

    runner = CliRunner()
    # Reads wait as long as rtrec's own client: the server may wait up to 60 s for its DB.
    api = httpx.Client(base_url=f"{embedded.server_url(settings)}/api/v2", timeout=TIMEOUT_S)
    client = embedded.api(settings)
    try:
        up = runner.invoke(main, ["airflow", "up", "--timeout", "300"])
        assert up.exit_code == 0, up.output
        # A DAG saved while Airflow runs (checked last: the scheduler had minutes to see it).
        late = embedded.user_dags_folder(settings) / "saved_later.py"
        late.write_text(LATE_DAG)
        yield Airflow(settings, api, client, shift)
    finally:
        api.close()
        client.close()
        down = runner.invoke(main, ["airflow", "down"])
        deadline = time.monotonic() + 30
        while _airflow_processes(home) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _airflow_processes(home)
        restore_env(old)
    assert down.exit_code == 0 and "airflow stopped" in down.output, down.output
    assert left == [], f"processes of this Airflow still running: {left}"


def _assert_clean_log(log: list[dict], what: str) -> None:
    """No line stored at error level in a task that succeeded."""
    bad = [line for line in log if line.get("level") in ("error", "critical")]
    assert bad == [], f"{what}: lines stored as errors: {json.dumps(bad)[:2000]}"


def _registry_versions(settings: Settings) -> dict[str, dict[str, str]]:
    """Registered versions and their tags (none before a task has created the registry:
    creating its DB from here could race a task's MLflow doing the same)."""
    from mlflow import MlflowClient

    uri = str(settings.mlflow.tracking_uri)
    if not Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    found = MlflowClient(tracking_uri=uri).search_model_versions(
        f"name = '{settings.mlflow.model_name}'"
    )
    return {str(mv.version): dict(mv.tags) for mv in found}


def test_dags_come_up_unpaused_in_their_bundles(airflow: Airflow) -> None:
    dags = {d["dag_id"]: d for d in airflow.get("/dags")["dags"]}
    dags.pop("saved_later", None)  # saved after start: the last test's
    assert set(dags) == {*embedded.DAG_IDS, USER_DAG_ID}
    assert {d["dag_id"]: d["is_paused"] for d in dags.values()} == dict.fromkeys(dags, False)
    assert dags[USER_DAG_ID]["bundle_name"] == "user"
    assert {dags[d]["bundle_name"] for d in embedded.DAG_IDS} == {"rtrec"}
    assert airflow.get("/importErrors")["import_errors"] == []


def test_drift_monitor_triggered_over_rest_retrains_under_the_scheduler(airflow: Airflow) -> None:
    from rtrec.training.registry import TAG_DECISION

    before = _registry_versions(airflow.settings)
    # One epoch for the training it triggers: this is about who runs what, not the model.
    conf = {"now_ms": airflow.shift_ts + DAY, "scores": False, "training_epochs": 1}
    run = airflow.trigger("rtrec_drift_monitor", "drift-over-rest", conf)
    # Queued when created; running already if the first answer was lost and it is read back.
    assert run["state"] in ("queued", "running"), run
    assert run["triggered_by"] == "rest_api" and run["run_type"] == "manual", run

    done = airflow.wait_run("rtrec_drift_monitor", "drift-over-rest", timeout_s=300)
    states = airflow.task_states("rtrec_drift_monitor", "drift-over-rest")
    assert done["state"] == "success", airflow.failures("rtrec_drift_monitor", "drift-over-rest")
    assert states == {"drift_check": "success", "drifted": "success", "trigger_training": "success"}
    verdict = airflow.xcom("rtrec_drift_monitor", "drift-over-rest", "drift_check")
    assert verdict["drifted"] is True, verdict["reason"]

    # The scheduled run the unpaused DAG got at start judged the calm latest window.
    monitor_runs = airflow.wait_idle("rtrec_drift_monitor", timeout_s=300)
    for other in (r for r in monitor_runs if r["dag_run_id"] != "drift-over-rest"):
        assert other["run_type"] == "scheduled" and other["state"] == "success", other
        calm = airflow.xcom("rtrec_drift_monitor", other["dag_run_id"], "drift_check")
        assert calm["drifted"] is False, calm["reason"]

    # The training run the trigger queued: the scheduler runs it to the end.
    (training,) = airflow.runs("rtrec_training")
    assert training["conf"]["reason"] == f"drift: {verdict['reason']}"
    assert training["conf"]["epochs"] == 1, training["conf"]
    trained = airflow.wait_run("rtrec_training", training["dag_run_id"], timeout_s=900)
    run_id = trained["dag_run_id"]
    states = airflow.task_states("rtrec_training", run_id)
    assert trained["state"] == "success", airflow.failures("rtrec_training", run_id)
    assert all(s in ("success", "skipped") for s in states.values()), states

    version = str(airflow.xcom("rtrec_training", run_id, "evaluate_and_register")["version"])
    decision = airflow.xcom("rtrec_training", run_id, "promote")
    after = _registry_versions(airflow.settings)
    assert set(after) - set(before) == {version}
    # Promoted or refused, the gate's decision is recorded on the version.
    recorded = after[version][TAG_DECISION]
    assert recorded == ("promoted" if decision["promoted"] else "kept_challenger"), decision
    assert states["tell_serving"] == ("success" if decision["promoted"] else "skipped")

    # Task logs: our lines at INFO with the step's figures, nothing benign as an error.
    train_log = airflow.task_log("rtrec_training", run_id, "train_two_tower")
    ours = [ln for ln in train_log if str(ln.get("logger", "")).startswith("rtrec.training.")]
    assert ours and all(ln["level"] in ("info", "warning") for ln in ours)
    result = [
        ln["event"] for ln in train_log if "rtrec step train_two_tower result:" in ln["event"]
    ]
    assert len(result) == 1 and '"bundle_dir"' in result[0]
    for task_id, state in states.items():
        if state == "success":
            _assert_clean_log(airflow.task_log("rtrec_training", run_id, task_id), task_id)
    check_log = airflow.task_log("rtrec_drift_monitor", "drift-over-rest", "drift_check")
    _assert_clean_log(check_log, "drift_check")
    assert any(
        ln["logger"] == "rtrec.monitoring.drift" and '"drift_share"' in ln["event"]
        for ln in check_log
    ), "the verdict's figures (log extras) are missing from the drift check's log"


def test_user_dag_from_the_operators_runs_under_the_scheduler(airflow: Airflow) -> None:
    from rtrec.training.registry import TAG_DECISION

    airflow.wait_idle("rtrec_training", timeout_s=900)  # one training at a time on 2 cores
    before = _registry_versions(airflow.settings)
    conf = {"now_ms": airflow.shift_ts + DAY, "epochs": 1}
    airflow.trigger(USER_DAG_ID, "user-dag-over-rest", conf)

    done = airflow.wait_run(USER_DAG_ID, "user-dag-over-rest", timeout_s=900)
    states = airflow.task_states(USER_DAG_ID, "user-dag-over-rest")
    assert done["state"] == "success", airflow.failures(USER_DAG_ID, "user-dag-over-rest")
    assert set(states.values()) == {"success"}, states

    def xcom(task_id: str) -> Any:
        return airflow.xcom(USER_DAG_ID, "user-dag-over-rest", task_id)

    assert xcom("backfill_features")["users"] > 0
    verdict = xcom("drift_check")
    assert verdict["drifted"] is True
    assert xcom("training_set")["counts"]["train"] > 5_000
    version = str(xcom("register")["version"])
    decision = xcom("promote")
    after = _registry_versions(airflow.settings)
    assert set(after) - set(before) == {version}
    assert after[version][TAG_DECISION] == (
        "promoted" if decision["promoted"] else "kept_challenger"
    )
    for task_id in states:
        _assert_clean_log(airflow.task_log(USER_DAG_ID, "user-dag-over-rest", task_id), task_id)


def test_a_dag_saved_while_airflow_runs_is_picked_up(airflow: Airflow) -> None:
    deadline = time.monotonic() + embedded.USER_BUNDLE_REFRESH_S + 60
    while True:
        dags = {d["dag_id"]: d for d in airflow.get("/dags")["dags"]}
        if "saved_later" in dags or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "saved_later" in dags, sorted(dags)
    assert dags["saved_later"]["bundle_name"] == "user"
    assert dags["saved_later"]["is_paused"] is False
