"""What the scheduler needs from the embedded setup and the operators: the execution API
on the real port, unpaused DAGs, both bundles, retry defaults only where a retry helps,
Variables that fail loudly, errors split into retryable and not, the step's result in the
task log, and the README's user DAG kept the same as the one the scheduler test runs."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, AirflowRuntimeError, ErrorType
from rtrec.dags import steps
from rtrec.dags.operators import (
    SERVICE_RETRIES,
    BuildTrainingSetOperator,
    DriftCheckOperator,
    EvaluateAndRegisterOperator,
    MaterializeFeaturesOperator,
    PromoteOperator,
    TellServingOperator,
    TrainTwoTowerOperator,
    _variable,
)

from rtrec.app import embedded_airflow as embedded
from rtrec.config import load_settings
from rtrec.errors import InvalidInput, NotFound, Unavailable

ROOT = Path(__file__).resolve().parents[3]
USER_DAG = ROOT / "tests" / "integration" / "user_dags" / "my_refresh_and_retrain.py"


def test_airflow_env_points_workers_at_the_api_servers_port(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path, airflow={"port": 18555})
    env = embedded.airflow_env(settings)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18555/execution/"
    assert env["AIRFLOW__API__PORT"] == "18555"
    bundles = {
        b["name"]: b for b in json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    }
    assert bundles["rtrec"]["kwargs"]["path"] == str(embedded.dags_folder())
    assert bundles["user"]["kwargs"]["path"] == str(tmp_path / "airflow" / "dags")


def test_dags_unpaused_and_task_logs_at_info_unless_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(work_dir=tmp_path)
    for key in embedded.OVERRIDABLE:
        monkeypatch.delenv(key, raising=False)
    env = embedded.airflow_env(settings)
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "INFO"
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    assert embedded.airflow_env(settings)["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"


def test_retries_with_backoff_only_for_steps_that_talk_to_services() -> None:
    for op in (
        EvaluateAndRegisterOperator(task_id="r", fit={}),
        PromoteOperator(task_id="p", version="1", fit={}),
        TellServingOperator(task_id="t", version="1"),
        MaterializeFeaturesOperator(task_id="m"),
        DriftCheckOperator(task_id="d"),
    ):
        assert op.retries == SERVICE_RETRIES["retries"] > 0, op.task_id
        assert op.retry_delay == SERVICE_RETRIES["retry_delay"]
        assert op.retry_exponential_backoff == SERVICE_RETRIES["retry_exponential_backoff"] > 1
        assert op.max_retry_delay == SERVICE_RETRIES["max_retry_delay"]
    for op in (
        BuildTrainingSetOperator(task_id="b"),
        TrainTwoTowerOperator(task_id="tr", training_sets="/x"),
    ):
        assert op.retries == 0 and not op.retry_exponential_backoff, op.task_id


def test_your_retries_win_over_the_defaults() -> None:
    assert DriftCheckOperator(task_id="d", retries=0).retries == 0
    with DAG("x", schedule=None, default_args={"retries": 1, "retry_delay": timedelta(1)}):
        op = DriftCheckOperator(task_id="d")
    assert op.retries == 1 and op.retry_delay == timedelta(1)
    assert op.retry_exponential_backoff == SERVICE_RETRIES["retry_exponential_backoff"]


def test_variable_default_when_unset_value_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_RTREC_RUN_MODE", raising=False)
    assert _variable("rtrec_run_mode", "in_process") == "in_process"
    monkeypatch.setenv("AIRFLOW_VAR_RTREC_RUN_MODE", "command")
    assert _variable("rtrec_run_mode", "in_process") == "command"


def test_variable_errors_other_than_unset_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time import context as ctx
    from airflow.sdk.execution_time.comms import ErrorResponse

    def denied(key: str, deserialize_json: bool) -> Any:
        raise AirflowRuntimeError(ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail={}))

    monkeypatch.setattr(ctx, "_get_variable", denied)
    with pytest.raises(AirflowRuntimeError):
        _variable("rtrec_run_mode", "in_process")


def test_a_bad_run_mode_variable_fails_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_RTREC_RUN_MODE", "spark")
    with pytest.raises(AirflowFailException, match="rtrec_run_mode is 'spark'"):
        DriftCheckOperator(task_id="d").execute({})
    monkeypatch.setenv("AIRFLOW_VAR_RTREC_RUN_MODE", "command")
    monkeypatch.setenv("AIRFLOW_VAR_RTREC_STEP_COMMAND", "python -m rtrec.dags.steps")
    with pytest.raises(AirflowFailException, match="rtrec_step_command is not JSON"):
        DriftCheckOperator(task_id="d").execute({})
    monkeypatch.setenv("AIRFLOW_VAR_RTREC_STEP_COMMAND", '"python"')
    with pytest.raises(AirflowFailException, match="must be a JSON list of strings"):
        DriftCheckOperator(task_id="d").execute({})


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (InvalidInput("now_ms is negative", field="now_ms"), AirflowFailException),
        (NotFound("no events in the offline log"), AirflowFailException),
        (Unavailable("Redis at 127.0.0.1:1 refused the connection"), RuntimeError),
    ],
)
def test_permanent_errors_skip_retries_unavailable_ones_retry(
    monkeypatch: pytest.MonkeyPatch, error: Exception, raised: type[Exception]
) -> None:
    def step(settings: Any, **kwargs: Any) -> dict[str, Any]:
        raise error

    monkeypatch.setitem(steps.STEPS, "drift_check", step)
    with pytest.raises(raised, match=re.escape(f"drift_check failed: {error}")) as info:
        DriftCheckOperator(task_id="d").execute({})
    # AirflowFailException ends the task without retries; a plain error is retried.
    assert isinstance(info.value, AirflowFailException) == (raised is AirflowFailException)


def test_the_steps_result_is_logged_at_info(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def step(settings: Any, **kwargs: Any) -> dict[str, Any]:
        return {"drifted": True, "drift_share": 0.67}

    monkeypatch.setitem(steps.STEPS, "drift_check", step)
    with caplog.at_level(logging.INFO, logger="dags"):
        DriftCheckOperator(task_id="d", now_ms=5).execute({})
    lines = [r.getMessage() for r in caplog.records if r.name == "rtrec.dags.operators"]
    assert 'rtrec step drift_check result: {"drifted": true, "drift_share": 0.67}' in lines
    assert any("now_ms=5" in line for line in lines)  # the arguments, before the run


def test_user_dag_parses_with_the_operators() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(USER_DAG))
    assert bag.import_errors == {}
    dag = bag.dags["my_refresh_and_retrain"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "backfill_features",
        "drift_check",
        "training_set",
        "train",
        "register",
        "promote",
    ]


def test_readme_shows_the_user_dag_the_scheduler_test_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = USER_DAG.read_text().strip() in readme
    assert shown, f"README's 'Your own DAGs' block differs from {USER_DAG.relative_to(ROOT)}"
