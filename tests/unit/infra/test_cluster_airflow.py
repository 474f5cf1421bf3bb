"""The cluster profile's Airflow settings, environment and secrets, and the choice of DAG
runner by profile, without starting Airflow."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rtrec.app import cluster_airflow
from rtrec.app.dag_runs import DagRunner, SchedulerRunner, dag_runner
from rtrec.config import load_settings

PROFILE_FILE = Path(__file__).resolve().parents[3] / "infra" / "rtrec.local-cluster.yaml"
SECRET_FILES = ("airflow_password", "airflow_jwt_secret", "airflow_api_secret_key")

pytestmark = pytest.mark.usefixtures("clean_rtrec_env")


def test_the_profile_file_starts_airflow_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_CONFIG", str(PROFILE_FILE))
    settings = load_settings()
    assert cluster_airflow.is_local(settings)
    assert urlsplit(settings.cluster.airflow.api_url).hostname == "127.0.0.1"
    assert settings.cluster.airflow.password is None


def test_the_environment_points_every_process_at_postgres_and_one_api(tmp_path: Path) -> None:
    api_url = "http://127.0.0.1:28123"
    settings = load_settings(work_dir=tmp_path, cluster={"airflow": {"api_url": api_url}})
    env = cluster_airflow.airflow_env(settings, log_port=28999)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (db.scheme, db.username, db.path) == ("postgresql+psycopg2", "airflow", "/airflow")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{api_url}/execution/"
    assert (env["AIRFLOW__API__HOST"], env["AIRFLOW__API__PORT"]) == ("127.0.0.1", "28123")
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow-cluster")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "28999"
    bundles = json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    assert bundles[1]["kwargs"]["path"] == str(tmp_path / "airflow-cluster" / "dags")


def test_generated_secrets_are_private_stable_and_distinct(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path)
    first = cluster_airflow.airflow_env(settings, log_port=1)
    again = cluster_airflow.airflow_env(load_settings(work_dir=tmp_path), log_port=1)
    assert first == again
    values = {(tmp_path / "secrets" / name).read_text().strip() for name in SECRET_FILES}
    assert len(values) == len(SECRET_FILES) and all(len(v) >= 24 for v in values)
    users = Path(first["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert json.loads(users.read_text()) == {"rtrec": cluster_airflow.password(settings)}
    for path in (tmp_path / "secrets").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700


def test_a_configured_password_wins(tmp_path: Path) -> None:
    cluster = {"airflow": {"password": "from-the-environment", "username": "ops"}}
    settings = load_settings(work_dir=tmp_path, cluster=cluster)
    env = cluster_airflow.airflow_env(settings, log_port=1)
    assert not (tmp_path / "secrets" / "airflow_password").exists()
    users = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
    assert users == {"ops": "from-the-environment"}
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "ops:admin"
    assert "from-the-environment" not in repr(settings)


def test_a_managed_airflow_is_not_started(tmp_path: Path) -> None:
    remote = {"airflow": {"api_url": "https://airflow.example.com"}}
    settings = load_settings(work_dir=tmp_path, cluster=remote)
    assert not cluster_airflow.is_local(settings)
    cluster_airflow.start(settings)  # returns at once: nothing to start here
    assert not (tmp_path / "run").exists() and not (tmp_path / "airflow-cluster").exists()


def test_the_profile_picks_the_runner(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path)
    assert isinstance(dag_runner(settings), DagRunner)
    with dag_runner(settings, "cluster") as runner:
        assert isinstance(runner, SchedulerRunner)
        assert runner.api.base_url == settings.cluster.airflow.api_url
