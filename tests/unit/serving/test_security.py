"""The service's guard in front of the real FastAPI app (state set by hand, no BentoML
server): 503 until the keys are loaded, scopes per route, rate buckets per key name and
per anonymous client, feedback stamped with its key and kept to the key's users."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from rtrec.serving import service
from rtrec.serving.auth import ApiKeys, RateLimiter, scope_for
from rtrec.serving.feedback import SOURCE_KEY
from rtrec.serving.schemas import EXAMPLE_FEEDBACK
from rtrec.serving.stalls import LoopWatch
from starlette.testclient import TestClient

from rtrec import logging as rtrec_logging
from rtrec.config import ApiKey, load_settings

APP = service.app
ADMIN, READER, WRITER, LIMITED = "admin-secret", "reader-secret", "writer-secret", "web-secret"
KEYS = [
    ApiKey.plain(ADMIN),  # the bare form: every scope
    ApiKey(name="reader", key=READER, scopes=["recommend"]),
    ApiKey(name="writer", key=WRITER, scopes=["feedback"]),
    ApiKey(name="web", key=LIMITED, scopes=["feedback"], users=["web-*", "guest"]),
]
EVENT = EXAMPLE_FEEDBACK["events"][0]


class Engine:
    """Just enough of the engine for the handlers reached here."""

    ready = True
    models: dict[str, Any] = {}
    online = SimpleNamespace(down_reason=None, nodes_down={})
    popular = SimpleNamespace(items=lambda: ([], "trending"))
    degradations = SimpleNamespace(status=lambda: {"counts": {}, "last": None})

    def similar(self, item_id: str, k: int) -> dict[str, Any]:
        return {"item_id": item_id, "items": [], "model_version": "local"}

    def recommend_or_fallback(self, body: Any) -> dict[str, Any]:
        return {"user_id_hash": "h:0", "items": [], "model_version": "local"}

    async def recommend_async(self, body: Any) -> dict[str, Any]:
        return self.recommend_or_fallback(body)


class Publish(list):
    """The feedback publisher: keeps what it was given."""

    down_reason = None

    def __call__(self, events: list[Any]) -> None:
        self.extend(events)


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtrec_logging, "_salt", {})
    rtrec_logging.use_redact_salt("unit-test-salt")


STATE = ("engine", "watcher", "publish", "limiter", "max_body", "loop_watch", "keys")


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    """The app is the module's own: leave its state as a starting service has it."""
    yield
    for name in STATE:
        APP.state._state.pop(name, None)


def _ready(keys: list[ApiKey], *, rate: float = 1000.0) -> Publish:
    """Set the state the service sets at start; returns the publisher stub."""
    publish = Publish()
    values = (
        Engine(),
        SimpleNamespace(last_error=None),
        publish,
        RateLimiter(rate),
        64 * 1024,
        LoopWatch(),
        ApiKeys(keys),
    )
    for name, value in zip(STATE, values, strict=True):
        setattr(APP.state, name, value)
    return publish


def _client(address: str = "testclient") -> TestClient:
    return TestClient(APP, client=(address, 50000))


def test_guard_answers_503_until_the_keys_are_loaded_and_open_paths_stay_open() -> None:
    _ready(KEYS)
    del APP.state.keys  # what a starting service has: no keys yet
    client = _client()
    for method, path in (("POST", "/recommend"), ("GET", "/status"), ("POST", "/feedback")):
        resp = client.request(method, path, json={"user_id": "u1"})
        assert resp.status_code == 503, path  # never passed through unchecked
        assert resp.json() == {
            "error": "service is starting: not ready for requests",
            "field": None,
        }
        assert resp.headers["retry-after"] == "1"
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_each_route_needs_its_scope_and_a_403_names_the_missing_one() -> None:
    _ready(KEYS)
    client = _client()
    calls = {
        "recommend": lambda h: client.post("/recommend", json={"user_id": "u1"}, headers=h),
        "similar": lambda h: client.get("/similar/i7", headers=h),
        "feedback": lambda h: client.post("/feedback", json=EXAMPLE_FEEDBACK, headers=h),
        "status": lambda h: client.get("/status", headers=h),
    }
    allowed = {
        ADMIN: {"recommend", "similar", "feedback", "status"},
        READER: {"recommend", "similar"},
        WRITER: {"feedback"},
    }
    needs = {"recommend": "recommend", "similar": "recommend", "feedback": "feedback"}
    for key, ok in allowed.items():
        for route, call in calls.items():
            resp = call({"X-API-Key": key})
            if route in ok:
                assert resp.status_code in (200, 202), (key, route, resp.text)
            else:
                scope = needs.get(route, "admin")
                assert resp.status_code == 403, (key, route)
                assert resp.json()["field"] == "X-API-Key"
                assert f"lacks the '{scope}' scope" in resp.json()["error"]
                assert key not in resp.text  # the key itself is never echoed
    assert client.get("/status").status_code == 401  # no key at all is still a 401


def test_paths_map_to_scopes_and_unknown_paths_need_admin() -> None:
    assert scope_for("/recommend") == "recommend" and scope_for("/similar/a/b") == "recommend"
    assert scope_for("/feedback") == "feedback" and scope_for("/status") == "admin"
    assert scope_for("/") == "admin" and scope_for("/experiments/x") == "admin"


def test_rate_buckets_are_per_key_name_and_per_anonymous_client() -> None:
    _ready(KEYS, rate=2)
    client = _client()
    codes = [client.get("/similar/i1", headers={"X-API-Key": READER}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert client.get("/similar/i1", headers={"X-API-Key": ADMIN}).status_code == 200

    _ready([], rate=2)  # auth off: one bucket per client address
    first = _client("10.0.0.1")
    assert [first.get("/similar/i1").status_code for _ in range(3)] == [200, 200, 429]
    assert _client("10.0.0.2").get("/similar/i1").status_code == 200


def test_feedback_is_stamped_with_the_key_name_over_any_client_value() -> None:
    publish = _ready(KEYS)
    forged = {**EVENT, "context": {"device": "ios", SOURCE_KEY: "someone-else"}}
    body = {"events": [forged, EVENT]}
    resp = _client().post("/feedback", json=body, headers={"X-API-Key": WRITER})
    assert resp.status_code == 202 and resp.json() == {"accepted": 2}
    assert [e.context for e in publish] == [
        {"device": "ios", SOURCE_KEY: "writer"},
        {SOURCE_KEY: "writer"},
    ]
    assert json.loads(publish[0].to_json())["context"][SOURCE_KEY] == "writer"  # on the wire
    publish.clear()
    _client().post("/feedback", json=body, headers={"X-API-Key": ADMIN})
    assert {e.context[SOURCE_KEY] for e in publish} == {ApiKey.plain(ADMIN).name}


def test_anonymous_feedback_names_a_redacted_client_address() -> None:
    publish = _ready([])
    assert _client("10.1.2.3").post("/feedback", json=EXAMPLE_FEEDBACK).status_code == 202
    source = publish[0].context[SOURCE_KEY]
    assert source == f"anonymous:{rtrec_logging.redact_id('10.1.2.3')}"
    assert "10.1.2.3" not in source


def test_a_key_limited_to_some_users_gets_403_naming_the_event_field() -> None:
    publish = _ready(KEYS)
    client = _client()
    ok = [{**EVENT, "user_id": u} for u in ("web-1", "web-xyz", "guest")]
    resp = client.post("/feedback", json={"events": ok}, headers={"X-API-Key": LIMITED})
    assert resp.status_code == 202 and len(publish) == 3
    publish.clear()
    for outsider in ("guest2", "we", "u42", "WEB-1"):
        events = [ok[0], {**EVENT, "user_id": outsider}]
        resp = client.post("/feedback", json={"events": events}, headers={"X-API-Key": LIMITED})
        assert resp.status_code == 403, outsider
        assert resp.json()["field"] == "events.1.user_id"
        assert "may not write feedback for this user" in resp.json()["error"]
        assert f"{outsider}'" not in resp.json()["error"]  # the user id is not echoed
    assert publish == []  # nothing of a refused request is published
    nobody = ApiKey(name="none", key="none-secret", scopes=["feedback"], users=[])
    _ready([nobody])
    resp = client.post("/feedback", json=EXAMPLE_FEEDBACK, headers={"X-API-Key": "none-secret"})
    assert resp.status_code == 403  # an empty list means nobody, not anybody


def test_a_full_client_context_is_refused_by_the_schema_not_after_stamping() -> None:
    """One context entry is reserved for the stamp: 31 pass (32 once stamped, the
    contract's limit), 32 are a schema 422 rather than events the stream would refuse."""
    publish = _ready(KEYS)
    client = _client()
    full = {**EVENT, "context": {f"k{i}": i for i in range(31)}}
    assert (
        client.post("/feedback", json={"events": [full]}, headers={"X-API-Key": WRITER}).status_code
        == 202
    )
    assert len(publish[0].context) == 32
    over = {**EVENT, "context": {f"k{i}": i for i in range(32)}}
    resp = client.post("/feedback", json={"events": [over]}, headers={"X-API-Key": WRITER})
    assert resp.status_code == 422 and resp.json()["field"] == "events.0.context"


def test_openapi_documents_403_and_503_on_every_operation() -> None:
    spec = APP.openapi()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert {"401", "403", "503"} <= set(op["responses"]), (method, path)


@pytest.mark.usefixtures("clean_rtrec_env")
def test_keys_from_the_environment_in_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [
        "bare-key",
        {"name": "web", "key": "web-key", "scopes": ["recommend", "feedback"], "users": ["w-*"]},
    ]
    monkeypatch.setenv("RTREC_SERVING__API_KEYS", json.dumps(entries))
    keys = ApiKeys(load_settings().serving.api_keys)
    bare, web = keys.check("bare-key"), keys.check("web-key")
    assert bare is not None and bare.name.startswith("key-") and len(bare.name) == 10
    assert bare.scopes == {"recommend", "feedback", "admin"} and bare.users is None
    assert web is not None and web.name == "web" and web.scopes == {"recommend", "feedback"}
    assert web.may_write("w-1") and not web.may_write("x-1")
    assert "web-key" not in repr(load_settings())
