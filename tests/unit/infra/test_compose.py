"""The docker-compose deployment must define every address its settings name."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from rtrec.config import load_settings

INFRA = Path(__file__).resolve().parents[3] / "infra"

pytestmark = pytest.mark.usefixtures("clean_rtrec_env")


def _hosts(settings) -> dict[str, str]:
    hosts = {
        "kafka": settings.kafka.bootstrap_servers,
        "redis": settings.redis.url,
        "mlflow": settings.mlflow.tracking_uri,
        "spark": settings.spark.master,
    }
    out = {}
    for name, addr in hosts.items():
        for part in addr.split(","):
            netloc = urlparse(part if "://" in part else f"tcp://{part}").hostname
            out[f"{name}:{part}"] = netloc
    return out


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_every_settings_address_is_a_compose_service(
    compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTREC_CONFIG", str(INFRA / "rtrec.cluster.yaml"))
    settings = load_settings()
    services = set(compose["services"])
    for what, host in _hosts(settings).items():
        assert host in services, f"{what}: host {host!r} is not a service in docker-compose.yml"


def test_compose_has_the_platform(compose: dict) -> None:
    services = compose["services"]
    for needed in (
        "kafka",
        "redis",
        "postgres",
        "mlflow",
        "spark-master",
        "spark-worker",
        "airflow-apiserver",
        "airflow-scheduler",
        "rtrec-stream",
        "rtrec-serving",
    ):
        assert needed in services
    assert "KRaft" in (INFRA / "docker-compose.yml").read_text()
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on undefined service {dep}"


def test_no_secrets_in_files(compose: dict) -> None:
    text = (INFRA / "docker-compose.yml").read_text() + (INFRA / "rtrec.cluster.yaml").read_text()
    assert "api_keys" not in (INFRA / "rtrec.cluster.yaml").read_text()
    assert "${POSTGRES_PASSWORD" in text
