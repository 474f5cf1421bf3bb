"""Where the service may listen without API keys, checked before it starts (``rtrec
serve``) and at start against the socket BentoML really bound; and the key settings."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError
from rtrec.serving import launch
from rtrec.serving.launch import bound_host, check_bind, exposure, is_loopback

from rtrec.config import ApiKey, ServingSettings
from rtrec.errors import ConfigError


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    assert is_loopback("::ffff:127.0.0.1")  # IPv4-mapped
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.org", "128.0.0.1", ""):
        assert not is_loopback(host), host


def test_no_keys_on_an_exposed_address_is_refused_naming_the_fixes() -> None:
    assert exposure(ServingSettings()) == "loopback"  # the default: 127.0.0.1, no keys
    exposed = ServingSettings(host="0.0.0.0")
    with pytest.raises(ConfigError) as refused:
        check_bind(exposed)
    message = str(refused.value)
    for fix in ("RTREC_SERVING__API_KEYS", "127.0.0.1", "RTREC_SERVING__ALLOW_ANONYMOUS=true"):
        assert fix in message
    assert "'0.0.0.0'" in message
    with pytest.raises(ConfigError):  # the address really bound wins over the setting
        exposure(ServingSettings(), "10.0.0.5")
    assert exposure(ServingSettings(host="0.0.0.0", allow_anonymous=True)) == "anonymous"
    assert exposure(ServingSettings(host="0.0.0.0", api_keys=["k-secret"])) == "keys"
    assert exposure(ServingSettings(host="::1", allow_anonymous=True)) == "loopback"


def test_bound_host_reads_the_socket_bentoml_passed_and_leaves_it_open() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        fd = str(sock.fileno())
        assert bound_host(["worker", "--fd", fd, "--service-name", "rtrec"]) == "127.0.0.1"
        assert bound_host(["worker", f"--fd={fd}"]) == "127.0.0.1"
        assert sock.getsockname()[0] == "127.0.0.1"  # still open: only a duplicate closed
    assert bound_host(["pytest"]) is None
    assert bound_host(["worker", "--fd", "$(circus.sockets.x)"]) is None
    assert bound_host(["worker", "--fd", "987654"]) is None  # not an open descriptor


def test_refusal_at_start_raises_and_leaves_a_non_worker_parent_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside a BentoML worker (here: pytest) the refusal must not signal the parent."""
    signalled = []
    monkeypatch.setattr(launch.os, "getppid", lambda: signalled.append("asked") or 1)
    with pytest.raises(ConfigError, match="without API keys"):
        launch.refuse_exposed_start(ServingSettings(host="0.0.0.0"))
    assert signalled == [] and "refusing to serve" in caplog.text
    assert launch.refuse_exposed_start(ServingSettings(api_keys=["k-secret"])) == "keys"


def test_structured_keys_are_validated() -> None:
    ok = ApiKey(name="web.app-1", key="s3cret", scopes=["recommend"], users=["u1", "web-*", "*"])
    assert ok.get_secret_value() == "s3cret" and "s3cret" not in repr(ok)
    bad: list[dict] = [
        {"name": "web", "key": "s", "scopes": []},  # a key says what it is for
        {"name": "web", "key": "s"},
        {"name": "web", "key": "s", "scopes": ["everything"]},
        {"name": "has space", "key": "s", "scopes": ["admin"]},
        {"name": "web", "key": "s", "scopes": ["admin"], "users": ["we*b"]},  # '*' only last
        {"name": "web", "key": "s", "scopes": ["admin"], "extra": 1},
    ]
    for entry in bad:
        with pytest.raises(ValidationError):
            ServingSettings(api_keys=[entry])
    with pytest.raises(ValidationError, match="distinct"):
        ServingSettings(api_keys=[{"name": "a", "key": "same", "scopes": ["admin"]}, "same"])
    with pytest.raises(ValidationError, match="distinct"):
        ServingSettings(
            api_keys=[
                {"name": "a", "key": "one", "scopes": ["admin"]},
                {"name": "a", "key": "two", "scopes": ["admin"]},
            ]
        )
    bare = ServingSettings(api_keys=["k1", "k2"]).api_keys
    assert [k.scopes for k in bare] == [["recommend", "feedback", "admin"]] * 2
    assert bare[0].name != bare[1].name and all(k.users is None for k in bare)
