"""feature_store.yaml from settings: what Feast's Redis online store will connect with.

Each connection string is read back with Feast's own parser, so the test proves what
``redis.Redis`` receives, not what we meant to write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rtrec.features.repo import redacted_url, redis_connection_string, repo_config_dict

from rtrec.config import host_port, load_settings
from rtrec.errors import ConfigError


def feast_sees(url: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    from feast.infra.online_stores.redis import RedisOnlineStore

    return RedisOnlineStore._parse_connection_string(redis_connection_string(url))


def test_plain_url_keeps_host_port_and_db() -> None:
    nodes, params = feast_sees("redis://127.0.0.1:16379/4")
    assert nodes == [{"host": "127.0.0.1", "port": "16379"}]
    assert params == {"db": 4}


def test_defaults_are_redis_defaults() -> None:
    nodes, params = feast_sees("redis://cache.internal")
    assert nodes == [{"host": "cache.internal", "port": "6379"}] and params == {"db": 0}


def test_password_username_and_tls_reach_feast() -> None:
    nodes, params = feast_sees("rediss://svc:s3cr%40t=x@redis.prod:6380/2")
    assert nodes == [{"host": "redis.prod", "port": "6380"}]
    assert params == {"db": 2, "ssl": True, "username": "svc", "password": "s3cr@t=x"}


@pytest.mark.parametrize("password", ["123", "null", "true", 'q"uote', "ünï"])
def test_password_that_looks_like_json_stays_a_string(password: str) -> None:
    from urllib.parse import quote

    _, params = feast_sees(f"redis://:{quote(password, safe='')}@h:1/0")
    assert params["password"] == password and type(params["password"]) is str


def test_query_options_pass_through_typed() -> None:
    _, params = feast_sees("redis://h:1/0?socket_timeout=0.5&ssl_cert_reqs=none")
    assert params["socket_timeout"] == 0.5 and params["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://:pa%2Css@h:1/0", "the password contains ','"),
        ("unix:///tmp/redis.sock", "Unix socket"),
        ("redis://[::1]:6379/0", "IPv6"),
        ("redis://h:1/zero", "not a number"),
        ("http://h:1/0", "not a Redis URL"),
    ],
)
def test_what_feast_cannot_carry_is_a_config_error(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        redis_connection_string(url)
    assert "pa,ss" not in str(info.value) and "pa%2Css" not in str(info.value)


def test_redacted_url_hides_only_the_password() -> None:
    assert redacted_url("rediss://svc:hunter2@redis.prod:6380/2") == (
        "rediss://svc:***@redis.prod:6380/2"
    )
    assert redacted_url("redis://127.0.0.1:16379/0") == "redis://127.0.0.1:16379/0"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("rediss://svc:s3cr%40t:x@redis.prod:6380/2", ("redis.prod", 6380)),
        ("redis://:pw@127.0.0.1:9/3", ("127.0.0.1", 9)),
        ("redis://cache.internal", ("cache.internal", 6379)),
        ("[::1]:19092", ("::1", 19092)),
        (" broker-1:9093", ("broker-1", 9093)),
        ("http://127.0.0.1:3000/recommend", ("127.0.0.1", 3000)),
    ],
)
def test_one_parser_reads_every_address(address: str, expected: tuple[str, int]) -> None:
    # Credentials, IPv6 brackets and paths never leak into the host (the Redis probe and
    # the stack's checks connect where Feast does).
    assert host_port(address, 6379) == expected


def test_an_address_without_a_numeric_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no valid port"):
        host_port("broker:ninety", 9092)


def test_repo_config_uses_redis_whatever_redis_is_doing(tmp_path: Path) -> None:
    # Nothing listens on port 9; the config still says Redis: no silent switch.
    settings = load_settings(work_dir=tmp_path, redis={"url": "redis://:pw@127.0.0.1:9/3"})
    online = repo_config_dict(settings)["online_store"]
    assert online["type"] == "redis"
    assert online["connection_string"] == '127.0.0.1:9,db=3,password="pw"'


def test_sqlite_only_when_asked_for(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path, feast={"online_store": "sqlite"})
    online = repo_config_dict(settings)["online_store"]
    assert online == {"type": "sqlite", "path": str(tmp_path / "feature_repo" / "online.db")}
