"""The recommendation service over real HTTP: a real ``bentoml serve`` subprocess on a free
port, the session's real Tansu broker and Redis, a synthetic bundle saved by training's
``save_bundle`` and a real stream processor for the click loop.

Test order matters only for the last test, which stops Redis and starts it again.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from rtrec.serving.schemas import EXAMPLE_FEEDBACK, EXAMPLE_RECOMMEND

from rtrec.config import Settings
from rtrec.events import unpack_impressions
from tests.conftest import free_port
from tests.serving_support import recommend, wait_for, write_history

pytestmark = pytest.mark.integration

KEY = "test-key-one"
OTHER_KEY = "test-key-two"
HEADERS = {"X-API-Key": KEY}
READER, FEEDER = "test-key-reader", "test-key-feeder"
SCOPED_KEYS = [
    {"name": "reader", "key": READER, "scopes": ["recommend"]},
    {"name": "web-feed", "key": FEEDER, "scopes": ["feedback"], "users": ["prov-*"]},
]
RATE = 100


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rtrec.serving.synthetic import synthetic_bundle

    return synthetic_bundle(tmp_path_factory.mktemp("bundle") / "b", n_items=400, seed=1)


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path):
    from rtrec.training.artifacts import load_bundle

    return load_bundle(bundle_dir, use_gpu=False)


@pytest.fixture(scope="module")
def server(stack: Settings, bundle_dir: Path):
    from rtrec.features import apply
    from rtrec.serving.process import running_server

    apply(stack)  # register the feature repo once, before the service reads it
    env = {
        "RTREC_SERVING__BUNDLE_PATH": str(bundle_dir),
        "RTREC_SERVING__API_KEYS": json.dumps([KEY, OTHER_KEY, *SCOPED_KEYS]),
        "RTREC_SERVING__RATE_LIMIT_PER_S": str(RATE),
        "RTREC_SERVING__MAX_K": "1000",
    }
    log = stack.log_dir / "serving-test.log"
    with running_server(free_port(), env=env, log=log) as srv:
        yield srv


@pytest.fixture
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as c:
        yield c


def test_known_user_gets_model_recommendations(client: httpx.Client, bundle) -> None:
    out = recommend(client, **{**EXAMPLE_RECOMMEND, "user_id": "u1"})
    assert out["fallback"] is False and out["fallback_reason"] is None
    assert out["model_version"] == "local" and out["variant"] == "champion"
    assert len(out["items"]) == EXAMPLE_RECOMMEND["k"]
    ids = [i["item_id"] for i in out["items"]]
    assert len(set(ids)) == len(ids) and set(ids) <= set(bundle.item_ids)
    assert "i7" not in ids  # the example excludes it
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)
    assert 0 < out["server_ms"] < 1000
    assert "u1" not in str(out)  # only a hash of the user id comes back


def test_exclude_seen_and_filters(client: httpx.Client, stack: Settings, bundle) -> None:
    before = [i["item_id"] for i in recommend(client, "u3", k=20, exclude_seen=False)["items"]]
    seen = before[:5]
    write_history(stack, "u3", seen)
    after = recommend(client, "u3", k=20)
    got = [i["item_id"] for i in after["items"]]
    assert len(got) == 20 and not set(got) & set(seen) and after["fallback"] is False

    cats = bundle.item_categories
    only = recommend(client, "u3", k=15, filters={"include_categories": ["c1"]})["items"]
    assert len(only) == 15 and all("c1" in cats[i["item_id"]] for i in only)
    no_c2 = recommend(client, "u3", k=15, filters={"exclude_categories": ["c2"]})["items"]
    assert len(no_c2) == 15 and all("c2" not in cats[i["item_id"]] for i in no_c2)
    banned = got[:3]
    rest = recommend(client, "u3", k=20, filters={"exclude_items": banned})["items"]
    assert len(rest) == 20 and not {i["item_id"] for i in rest} & set(banned)


def test_unknown_user_gets_flagged_fallback(client: httpx.Client, bundle) -> None:
    out = recommend(client, "never-seen-user-xyz", k=10)
    assert out["fallback"] is True and "cold user" in out["fallback_reason"]
    ids = [i["item_id"] for i in out["items"]]
    assert len(ids) == 10 and set(ids) <= set(bundle.item_ids)
    degraded = client.get("/status").json()["degradations"]
    assert degraded["counts"]["cold user"] >= 1  # counted since start, by reason
    assert degraded["last"]["at"] and degraded["last"]["reason"]


def test_k_above_catalog_is_clamped(client: httpx.Client, bundle) -> None:
    # exclude_seen off: u1's history (other tests click for it) must not shorten the list.
    out = recommend(client, "u1", k=1000, exclude_seen=False)
    assert len(out["items"]) == len(bundle.item_ids)


def test_similar_items(client: httpx.Client, bundle) -> None:
    resp = client.get("/similar/i5", params={"k": 5})
    assert resp.status_code == 200, resp.text
    ids = [i["item_id"] for i in resp.json()["items"]]
    assert len(ids) == 5 and "i5" not in ids and set(ids) <= set(bundle.item_ids)
    missing = client.get("/similar/no-such-item")
    assert missing.status_code == 404 and missing.json()["field"] == "item_id"


def test_click_on_feedback_changes_recommendations(client: httpx.Client, stack: Settings) -> None:
    from rtrec.app.stack import start_managed, stop_managed

    start_managed(
        stack, "stream-serving-test", [sys.executable, "-m", "rtrec.app.cli", "stream", "run"]
    )
    try:
        user = "u11"
        first = [i["item_id"] for i in recommend(client, user, k=10)["items"]]
        clicked = first[0]
        event = {**EXAMPLE_FEEDBACK["events"][0], "user_id": user, "item_id": clicked}
        event["ts"] = int(time.time() * 1000)
        resp = client.post("/feedback", json={"events": [event]})
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"accepted": 1}
        start, changed = time.monotonic(), None
        while time.monotonic() - start < 20 and changed is None:
            now = [i["item_id"] for i in recommend(client, user, k=10)["items"]]
            if now != first:
                changed = now
            time.sleep(0.05)
        assert changed is not None, "recommendations did not change within 20 s of the click"
        assert clicked not in changed  # the click is now history, and seen items are excluded
    finally:
        stop_managed(stack, "stream-serving-test")


def test_missing_or_wrong_api_key_is_401(server) -> None:
    body = {"user_id": "u1"}
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
        resp = httpx.post(f"{server.url}/recommend", json=body, headers=headers)
        assert resp.status_code == 401 and resp.json()["field"] == "X-API-Key"
    assert httpx.get(f"{server.url}/similar/i1", headers={"X-API-Key": "x"}).status_code == 401
    # Probes, metrics and the API description stay open.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path


def test_scopes_per_route_and_feedback_provenance_on_the_topic(
    server, stack: Settings, tmp_path: Path
) -> None:
    """A key reaches only its scopes' routes; feedback arrives on Kafka stamped with the
    sending key's name over a forged one, and a key limited to some users writes no other;
    a stream processor keeps the stamp in the offline log's ``source`` column."""
    from kafka import KafkaConsumer, TopicPartition

    reader, feeder = {"X-API-Key": READER}, {"X-API-Key": FEEDER}
    user = f"prov-{uuid.uuid4().hex[:8]}"
    event = {**EXAMPLE_FEEDBACK["events"][0], "user_id": user, "ts": int(time.time() * 1000)}
    event["context"] = {"page": "home", "source_key": "forged"}
    assert httpx.post(f"{server.url}/recommend", json={"user_id": "u1"}, headers=reader).is_success
    assert httpx.get(f"{server.url}/similar/i1", headers=reader).status_code == 200
    refused = [
        httpx.post(f"{server.url}/feedback", json={"events": [event]}, headers=reader),
        httpx.get(f"{server.url}/status", headers=reader),
        httpx.get(f"{server.url}/status", headers=feeder),
        httpx.post(f"{server.url}/recommend", json={"user_id": "u1"}, headers=feeder),
    ]
    for resp, scope in zip(refused, ("feedback", "admin", "admin", "recommend"), strict=True):
        assert resp.status_code == 403 and resp.json()["field"] == "X-API-Key", resp.text
        assert f"lacks the '{scope}' scope" in resp.json()["error"]
    outsider = {**event, "user_id": "u1"}
    resp = httpx.post(f"{server.url}/feedback", json={"events": [outsider]}, headers=feeder)
    assert resp.status_code == 403 and resp.json()["field"] == "events.0.user_id"

    topic = stack.kafka.events_topic
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_end(*parts)
        for part in parts:
            consumer.position(part)  # fix the start before posting
        resp = httpx.post(f"{server.url}/feedback", json={"events": [event]}, headers=feeder)
        assert resp.status_code == 202, resp.text
        found, deadline = None, time.monotonic() + 20
        while found is None and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                mine = [json.loads(r.value) for r in records if user.encode() == r.key]
                found = mine[0] if mine else found
    finally:
        consumer.close()
    assert found is not None, "the feedback event never reached the topic"
    assert found["context"] == {"page": "home", "source_key": "web-feed"}
    _assert_logged_with_source(stack, tmp_path, user, "web-feed")


def _assert_logged_with_source(stack: Settings, work: Path, user: str, source: str) -> None:
    """A processor of its own (consumer group, work dir and Redis db: the module's other
    tests keep theirs) reads the topic and writes the offline log; ``user``'s row there
    names ``source``."""
    from rtrec.streaming import StreamProcessor, read_events

    from rtrec.config import load_settings

    base = stack.redis.url.rsplit("/", 1)[0]
    own = load_settings(
        work_dir=work,
        kafka={**stack.kafka.model_dump(), "consumer_group": f"prov-{uuid.uuid4().hex[:6]}"},
        redis={"url": f"{base}/14"},
    )
    StreamProcessor(own).run(max_idle_s=2)
    events = read_events(own.offline_dir / "events")
    mine = events[events["user_id"] == user]
    assert len(mine) == 1 and mine["source"].tolist() == [source], mine.to_dict("records")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u1", "k": 0}, "k"),
        ({"user_id": "u1", "k": "ten"}, "k"),
        ({"user_id": "u1", "exclude_seen": "maybe"}, "exclude_seen"),
        ({"user_id": "u1", "filters": {"include_categories": "c1"}}, "include_categories"),
        ({"user_id": "u1", "unknown": 1}, "unknown"),
        ({"user_id": ["u1"]}, "user_id"),
    ],
)
def test_malformed_bodies_are_4xx_naming_the_field(
    client: httpx.Client, body: dict, field: str
) -> None:
    resp = client.post("/recommend", json=body)
    assert resp.status_code == 422, resp.text
    assert field in resp.json()["field"]


def test_invalid_json_oversized_body_and_bad_events(client: httpx.Client) -> None:
    resp = client.post(
        "/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["field"].startswith("body")
    undecodable = client.post(
        "/recommend", content=b"\x80", headers={"content-type": "application/json"}
    )  # not UTF-8: FastAPI's own 400, answered in the service's shape as a 422
    assert undecodable.status_code == 422 and undecodable.json()["field"] == "body"
    for body in ({"user_id": "u1", "exclude_seen": 0}, {"user_id": "u1", "k": "10"}):
        assert client.post("/recommend", json=body).status_code == 422, body  # no coercion
    assert recommend(client, "u1", k=5.0)["items"]  # JSON Schema's integer includes 5.0
    big = client.post("/recommend", json={"user_id": "u1", "context": {"x": "y" * 200_000}})
    assert big.status_code == 413 and big.json()["field"] == "body"

    def chunks():  # no Content-Length: cut off while the body is read
        yield b'{"user_id": "u1", "context": {"x": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}}'

    chunked = client.post("/recommend", content=chunks())
    assert chunked.status_code == 413 and chunked.json()["field"] == "body"
    bad = client.post("/feedback", json={"events": [{"user_id": "u1", "item_id": "i1"}]})
    assert bad.status_code == 422 and "event_type" in bad.json()["error"]
    empty = client.post("/feedback", json={"events": []})
    assert empty.status_code == 422 and "events" in empty.json()["field"]


def test_metrics_expose_stages_fallbacks_and_version(server, client: httpx.Client) -> None:
    recommend(client, "u1")
    recommend(client, "metrics-cold-user")
    text = httpx.get(f"{server.url}/metrics").text
    for stage in ("features", "user_tower", "search", "total"):
        assert f'stage="{stage}"' in text, stage
    assert "rtrec_serving_stage_seconds_bucket" in text
    assert "rtrec_serving_fallbacks_total{" in text and 'reason="cold user"' in text
    assert "rtrec_serving_model_version{" in text and 'variant="champion"' in text
    assert "rtrec_serving_recommendations_total{" in text


def test_openapi_describes_the_api(server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/recommend", "/similar/{item_id}", "/feedback"} <= set(spec["paths"])
    assert "RecommendRequest" in spec["components"]["schemas"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    # The error bodies the service really sends are the documented ones.
    responses = spec["paths"]["/recommend"]["post"]["responses"]
    for code in ("401", "413", "422", "429"):
        ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse"), code
    assert "503" in spec["paths"]["/feedback"]["post"]["responses"]
    wrong = httpx.request("TRACE", f"{server.url}/recommend", headers=HEADERS)
    assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]


def test_logs_never_carry_raw_user_ids(server, client: httpx.Client) -> None:
    recommend(client, "secret-user-4711")
    client.post("/recommend", json={"user_id": "secret-user-4711", "k": 0})
    time.sleep(0.2)
    assert "secret-user-4711" not in server.log_text()


def test_answers_are_logged_as_impressions_on_the_topic(
    server, client: httpx.Client, stack: Settings
) -> None:
    """Each answer's request id comes back on the impressions topic, in a batch record,
    with the raw and the redacted id, variant, version and the items by position."""
    from kafka import KafkaConsumer, TopicPartition

    topic = stack.kafka.impressions_topic
    cold = f"imp-cold-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        assert len(parts) == stack.kafka.partitions  # created by ensure_topics, like events
        consumer.assign(parts)
        consumer.seek_to_end(*parts)
        for part in parts:
            consumer.position(part)  # fix the start before asking
        asked = [("u1", 5), (cold, 3), ("u1", 2)]
        answers = {(out := recommend(client, u, k=k))["request_id"]: (u, k, out) for u, k in asked}
        found: dict[str, dict] = {}
        deadline = time.monotonic() + 20
        while len(found) < len(answers) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    for body in unpack_impressions(r.value):
                        if body["request_id"] in answers:
                            found[body["request_id"]] = body
    finally:
        consumer.close()
    assert set(found) == set(answers), "not every answer reached the impressions topic"
    for rid, body in found.items():
        user, k, out = answers[rid]
        assert body["user_id"] == user  # for the join with the user's feedback
        assert body["user_id_hash"] == out["user_id_hash"] and body["k"] == k
        assert (body["variant"], body["model_version"]) == (out["variant"], out["model_version"])
        assert body["experiment"] is out["experiment"] is None  # no challenger: no experiment
        assert body["items"] == [
            {"item_id": i["item_id"], "position": n, "score": i["score"]}
            for n, i in enumerate(out["items"], start=1)
        ]
        assert body["fallback"] is out["fallback"] and body["ts"] > 0
        assert body["fallback_reason"] == ("cold user" if user == cold else None)
    counts = client.get("/status").json()["degradations"]["counts"]
    assert not [reason for reason in counts if reason.startswith("impression")], counts

    def acknowledged() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        found = re.search(r"^rtrec_serving_impressions_total ([0-9.e+]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    assert wait_for(lambda: acknowledged() >= len(answers), timeout=5)


def test_rtrec_serve_detach_starts_a_tracked_service(
    stack: Settings, bundle_dir: Path, server, client: httpx.Client
) -> None:
    import subprocess

    from rtrec.app.stack import managed_pid, stop_managed

    recommend(client, "u1")

    port = free_port()
    cmd = [sys.executable, "-m", "rtrec.app.cli", "serve", "--detach", "--bundle", str(bundle_dir)]
    done = subprocess.run([*cmd, "--port", str(port)], capture_output=True, text=True, timeout=150)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"127.0.0.1:{port}" in done.stdout and managed_pid(stack, "serving")
        out = httpx.post(
            f"http://127.0.0.1:{port}/recommend", json={"user_id": "u1"}, headers=HEADERS
        )
        assert out.status_code == 200 and out.json()["fallback"] is False
        # A second server must not wipe the first one's metrics (BentoML clears its
        # Prometheus folder at start; each server has a BentoML home of its own).
        assert 'stage="user_tower"' in httpx.get(f"{server.url}/metrics").text
    finally:
        assert stop_managed(stack, "serving")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)


def test_redis_down_gives_flagged_fallback_never_5xx(
    client: httpx.Client, stack: Settings, server
) -> None:
    """Last: stops the session's Redis, then starts it again for later modules."""
    from rtrec.app.stack import start_redis, stop_managed

    stop_managed(stack, "redis")
    try:
        for user in ("u1", "u3", "nobody"):
            resp = client.post("/recommend", json={"user_id": user, "k": 10})
            assert resp.status_code == 200, resp.text
            out = resp.json()
            assert out["fallback"] is True and "unavailable" in out["fallback_reason"]
            assert len(out["items"]) == 10
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200  # still serving (degraded), not taken out of rotation
        counts = client.get("/status").json()["degradations"]["counts"]
        assert counts["feature store unavailable"] >= 3  # each fallback counted by reason
    finally:
        start_redis(stack)
    deadline = time.monotonic() + 10
    while recommend(client, "u1")["fallback"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert recommend(client, "u1")["fallback"] is False  # recovered without a restart


def test_simulated_users_drive_recommend_and_feedback(server, bundle) -> None:
    """The simulator against the real service: every answer is clicked by the click model
    and every click accepted by /feedback with its answer's request_id (a refusal raises)."""
    from rtrec.serving.simulator import ClickModel, SimulatedUsers

    from rtrec.data import SyntheticConfig, ground_truth

    truth = ground_truth(SyntheticConfig.small(n_users=50, n_items=400, n_events=5_000, days=7))
    assert set(bundle.item_ids) <= set(truth.item_index)  # the same i0..i399 catalog
    users = SimulatedUsers(
        truth,
        base_url=server.url,
        api_key=KEY,
        click_model=ClickModel(attraction_scale=1.0, position_decay=0.0),
        seed=0,
    )
    try:
        result = users.run(40)
    finally:
        users.close()
    assert result.answers == 40 and result.by_variant["champion"]["answers"] == 40
    assert result.clicks > 0 and not users.pending  # all sent, none refused
    assert result.experiments == {"none": 40}  # no challenger loaded: no experiment
