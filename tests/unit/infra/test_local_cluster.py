"""The cluster profile's settings file and its secrets, without starting any engine."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rtrec.app.cluster import check_profile
from rtrec.app.cluster_postgres import PASSWORD_FILE, database_uri, password
from rtrec.config import load_settings
from rtrec.errors import ConfigError

PROFILE_FILE = Path(__file__).resolve().parents[3] / "infra" / "rtrec.local-cluster.yaml"

pytestmark = pytest.mark.usefixtures("clean_rtrec_env")


def test_the_profile_file_points_every_engine_at_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RTREC_CONFIG", str(PROFILE_FILE))
    settings = load_settings()
    check_profile(settings)
    assert urlsplit(str(settings.mlflow.tracking_uri)).hostname == "127.0.0.1"
    assert settings.spark.master.startswith("spark://127.0.0.1:")
    assert settings.cluster.postgres.host == "127.0.0.1"
    assert settings.cluster.spark.workers == 2
    assert "password" not in PROFILE_FILE.read_text().split("#")[0]
    assert settings.cluster.postgres.password is None


def test_the_embedded_defaults_are_not_a_cluster_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rtrec\.local-cluster\.yaml"):
        check_profile(load_settings(work_dir=tmp_path))


def test_a_generated_password_is_private_and_stable(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path)
    first = password(settings)
    path = tmp_path / PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first) >= 24
    assert password(load_settings(work_dir=tmp_path)) == first


def test_a_configured_password_wins_and_is_quoted_in_the_uri(tmp_path: Path) -> None:
    secret = "p@ss/w:rd"
    settings = load_settings(work_dir=tmp_path, cluster={"postgres": {"password": secret}})
    assert password(settings) == secret
    assert not (tmp_path / PASSWORD_FILE).exists()
    parts = urlsplit(database_uri(settings, "mlflow"))
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 15432, "/mlflow")
    assert parts.username == "mlflow"
    assert secret not in repr(settings)
