"""The cluster profile's Redis Cluster settings and nginx configuration, without starting
them: the password clients send, Feast's cluster connection string (read back with
Feast's own parser), the generated secret's file modes, and nginx's verdict (``nginx -t``)
on the configuration rtrec writes.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from rtrec.features.repo import repo_config_dict

from rtrec.app.cluster_nginx import nginx_config
from rtrec.app.cluster_redis import _write_config, ensure_password
from rtrec.config import Settings, load_settings
from rtrec.errors import ConfigError
from rtrec.redis_clients import PASSWORD_FILE, cluster_nodes, password

PROFILE_FILE = Path(__file__).resolve().parents[3] / "infra" / "rtrec.local-cluster.yaml"
NODES = {"url": "redis://127.0.0.1:17002", "cluster": True}

pytestmark = pytest.mark.usefixtures("clean_rtrec_env")


def _cluster(tmp_path: Path, **redis: object) -> Settings:
    return load_settings(work_dir=tmp_path, redis={**NODES, **redis})


def test_the_profile_file_makes_redis_a_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTREC_CONFIG", str(PROFILE_FILE))
    settings = load_settings()
    assert settings.redis.cluster and settings.redis.password is None
    assert settings.redis.host_port[1] in settings.cluster.redis.ports
    assert len(settings.cluster.redis.ports) == 3
    assert settings.serving.rate_limit_backend == "redis"  # one limit across replicas
    assert settings.serving.port not in settings.cluster.serving.replica_ports


def test_a_cluster_without_its_generated_password_is_an_error_naming_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="rtrec up --profile cluster"):
        password(_cluster(tmp_path))


def test_the_generated_password_is_private_and_reaches_feast(tmp_path: Path) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore

    settings = _cluster(tmp_path)
    secret = ensure_password(settings)
    path = tmp_path / PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(secret) >= 24 and ensure_password(settings) == secret == password(settings)
    conf = _write_config(settings, "127.0.0.1", 17002, secret)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert f'requirepass "{secret}"' in conf.read_text()
    # No replicas: one failed node must not stop the other nodes' slots (CLUSTERDOWN).
    assert "cluster-require-full-coverage no" in conf.read_text().splitlines()

    online = repo_config_dict(settings)["online_store"]
    assert online["redis_type"] == "redis_cluster"
    nodes, params = RedisOnlineStore._parse_connection_string(online["connection_string"])
    # The URL's node first, then the profile's other nodes; no db: a cluster has only 0.
    assert [n["port"] for n in nodes] == ["17002", "17001", "17003"]
    assert params == {"password": secret}


def test_a_configured_password_wins_over_the_file_and_the_url(tmp_path: Path) -> None:
    settings = _cluster(tmp_path, url="redis://:from-url@127.0.0.1:17001", password="set")
    assert password(settings) == "set"
    assert password(_cluster(tmp_path, url="redis://:from-url@127.0.0.1:17001")) is None
    plain = load_settings(work_dir=tmp_path, redis={"password": "p1"})
    conn = repo_config_dict(plain)["online_store"]["connection_string"]
    assert conn == '127.0.0.1:16379,db=0,password="p1"'


def test_a_managed_cluster_is_one_startup_node_and_no_generated_password(
    tmp_path: Path,
) -> None:
    settings = _cluster(tmp_path, url="redis://cache.internal:6379")
    assert cluster_nodes(settings) == [("cache.internal", 6379)]
    assert password(settings) is None  # nothing generated for a cluster not started here


def test_a_cluster_url_with_a_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only database 0"):
        repo_config_dict(_cluster(tmp_path, url="redis://127.0.0.1:17001/3", password="x"))


def _nginx(tmp_path: Path) -> tuple[Settings, str]:
    settings = load_settings(
        work_dir=tmp_path,
        serving={"port": 18123, "max_body_bytes": 4096},
        cluster={"serving": {"replica_ports": [18124, 18125], "client_timeout_s": 3}},
    )
    return settings, nginx_config(settings, tmp_path, [18124, 18125], user=None)


def test_nginx_limits_bodies_and_slow_clients_and_retries_the_other_replica(
    tmp_path: Path,
) -> None:
    _, text = _nginx(tmp_path)
    for line in (
        "listen 127.0.0.1:18123",
        "client_max_body_size 4096;",
        "client_header_timeout 3s;",
        "client_body_timeout 3s;",
        "server 127.0.0.1:18124 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:18125 max_fails=1 fail_timeout=5s;",
        "proxy_next_upstream_tries 2;",
    ):
        assert line in text, line
    # The errors nginx answers itself carry the service's JSON error body.
    bodies = [line.split("'")[1] for line in text.splitlines() if line.strip().startswith("return")]
    assert [json.loads(b)["field"] for b in bodies] == ["body", None]
    assert f"{tmp_path}/nginx.pid" in text  # nothing outside the work dir


@pytest.mark.skipif(
    not (shutil.which("nginx") or Path("/usr/sbin/nginx").is_file()), reason="no nginx here"
)
def test_nginx_accepts_the_generated_configuration(tmp_path: Path) -> None:
    _, text = _nginx(tmp_path)
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    out = subprocess.run(
        [exe, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
