from pathlib import Path

import pytest
from pydantic import ValidationError

from rtrec.config import load_settings
from rtrec.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_rtrec_env")


def test_defaults_point_at_embedded_stack(tmp_path: Path) -> None:
    s = load_settings(work_dir=tmp_path)
    assert s.kafka.bootstrap_servers.startswith("127.0.0.1:")
    assert s.redis.host_port[0] == "127.0.0.1"
    assert s.feast.repo_path == tmp_path / "feature_repo"
    assert s.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert s.airflow.home == tmp_path / "airflow"
    assert s.offline_dir == tmp_path / "offline"
    assert s.serving.api_keys == []  # no default secrets


def test_env_overrides_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("RTREC_REDIS__URL", "redis://redis.prod:6379/2")
    monkeypatch.setenv("RTREC_SERVING__API_KEYS", '["k1", "k2"]')
    s = load_settings(work_dir=tmp_path)
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.redis.host_port == ("redis.prod", 6379)
    assert [k.get_secret_value() for k in s.serving.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(s)  # secrets never printed


def test_yaml_file_and_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "rtrec.yaml"
    cfg.write_text(
        "kafka:\n  partitions: 12\n  events_topic: prod.events\nspark:\n  master: spark://m:7077\n"
    )
    monkeypatch.setenv("RTREC_CONFIG", str(cfg))
    monkeypatch.setenv("RTREC_KAFKA__PARTITIONS", "6")  # env beats the file
    s = load_settings(work_dir=tmp_path)
    assert s.kafka.partitions == 6
    assert s.kafka.events_topic == "prod.events"
    assert s.spark.master == "spark://m:7077"


def test_missing_yaml_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_CONFIG", "/nonexistent/rtrec.yaml")
    with pytest.raises(ConfigError, match=r"/nonexistent/rtrec\.yaml"):
        load_settings()


def test_unknown_setting_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="bootstrap"):
        load_settings(work_dir=tmp_path, kafka={"bootstrap": "x:1"})
