"""``GET /experiments`` behind the guard (admin scope, documented, 503 on a Redis
failure) and ``request_id`` on ``/feedback`` (kept, or a 422 naming the field)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rtrec.serving.schemas import EXAMPLE_FEEDBACK

from tests.unit.serving.test_security import (  # noqa: F401  (fixtures used by name)
    ADMIN,
    APP,
    KEYS,
    READER,
    WRITER,
    _clean_state,
    _client,
    _ready,
    _salt,
)

READOUT: dict[str, Any] = {
    "test": "pooled two-proportion z-test",
    "challenger_share": 0.5,
    "attribution_window_s": 1800.0,
    "experiments": [{"experiment": "7-vs-8", "verdict": "collecting"}],
    "outside_experiments": {},
    "unattributed": {"click": 2},
}


@pytest.fixture(autouse=True)
def _own_readout() -> Any:
    """Each test sets the readout the route answers; the service's own comes back after."""
    service_readout = APP.state.readout
    yield
    APP.state.readout = service_readout


def test_the_readout_needs_the_admin_scope() -> None:
    _ready(KEYS)
    APP.state.readout = lambda: READOUT
    client = _client()
    assert client.get("/experiments", headers={"X-API-Key": ADMIN}).json() == READOUT
    for key in (READER, WRITER):
        resp = client.get("/experiments", headers={"X-API-Key": key})
        assert resp.status_code == 403
        assert "lacks the 'admin' scope" in resp.json()["error"]
    assert client.get("/experiments").status_code == 401


def test_a_redis_failure_is_a_503_that_says_so() -> None:
    _ready(KEYS)

    def down() -> dict[str, Any]:
        raise RedisConnectionError("Connection refused")

    APP.state.readout = down
    resp = _client().get("/experiments", headers={"X-API-Key": ADMIN})
    assert resp.status_code == 503
    assert resp.json()["error"].startswith("experiment aggregates unavailable (Redis)")


def test_the_readout_is_documented() -> None:
    op = APP.openapi()["paths"]["/experiments"]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert schema.endswith("/ExperimentsResponse") and "z-test" in op["description"]
    assert {"401", "403", "503"} <= set(op["responses"])


def test_feedback_keeps_a_request_id_and_refuses_a_malformed_one() -> None:
    publish = _ready(KEYS)
    client = _client()
    resp = client.post("/feedback", json=EXAMPLE_FEEDBACK, headers={"X-API-Key": WRITER})
    assert resp.status_code == 202
    assert publish[0].request_id == EXAMPLE_FEEDBACK["events"][0]["request_id"]
    bad = {"events": [{**EXAMPLE_FEEDBACK["events"][0], "request_id": "not-an-id"}]}
    resp = client.post("/feedback", json=bad, headers={"X-API-Key": WRITER})
    assert resp.status_code == 422 and resp.json()["field"] == "events.0.request_id"
