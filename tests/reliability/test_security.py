"""Security over real HTTP against a real ``bentoml serve`` with API keys configured: every
endpoint refuses a missing or wrong key and says which, per-key rate limits hold under
many concurrent clients on one key without touching another key, and no raw user id
reaches the server's logs or any file under its work dir, error paths included.

The server has a work dir of its own (so everything it writes can be searched) and a
feedback topic of its own (so its events never reach other tests' processors).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from rtrec.config import Settings
from tests.conftest import free_port

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

KEY, OTHER, LIMITED = "sec-key-main", "sec-key-other", "sec-key-limited"
RATE = 20.0
"""Per-key rate: requests/s sustained, and the burst (one second's worth)."""
TOPIC = "rtrec.events.security"
SECRET_USER = "raw-user-Zq81xK"
"""A user id distinctive enough that any occurrence in a file is a leak."""
ENDPOINTS = [
    ("POST", "/recommend", {"user_id": "u1"}),
    ("GET", "/similar/i1", None),
    (
        "POST",
        "/feedback",
        {"events": [{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1}]},
    ),
    ("GET", "/status", None),
]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's own work dir: everything it writes lands here."""
    return tmp_path_factory.mktemp("security-work")


@pytest.fixture(scope="module")
def server(stack: Settings, work_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from rtrec.serving.process import running_server
    from rtrec.serving.synthetic import synthetic_bundle

    from rtrec.app.stack import ensure_topics

    topic_settings = stack.model_copy(deep=True)
    topic_settings.kafka.events_topic = TOPIC
    ensure_topics(topic_settings)
    bundle = synthetic_bundle(tmp_path_factory.mktemp("security") / "b", n_items=200, seed=6)
    work = work_dir
    env = {
        "RTREC_WORK_DIR": str(work),
        "RTREC_SERVING__BUNDLE_PATH": str(bundle),
        "RTREC_SERVING__API_KEYS": f'["{KEY}", "{OTHER}", "{LIMITED}"]',
        "RTREC_SERVING__RATE_LIMIT_PER_S": str(RATE),
        "RTREC_KAFKA__EVENTS_TOPIC": TOPIC,
    }
    with running_server(free_port(), env=env, log=work / "logs" / "serving.log") as srv:
        yield srv


def test_every_endpoint_rejects_missing_and_wrong_keys_naming_the_problem(server) -> None:
    bad_keys = {
        "missing X-API-Key header": [{}, {"X-API-Key": ""}, {"Authorization": f"Bearer {KEY}"}],
        "invalid X-API-Key": [
            {"X-API-Key": "wrong"},
            {"X-API-Key": KEY.upper()},
            {"X-API-Key": KEY + "x"},
            {"X-API-Key": KEY[:-1]},
        ],
    }
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for method, path, body in ENDPOINTS:
            for problem, variants in bad_keys.items():
                for headers in variants:
                    resp = c.request(method, path, json=body, headers=headers)
                    assert resp.status_code == 401, (method, path, headers, resp.text)
                    out = resp.json()
                    assert out == {"error": problem, "field": "X-API-Key"}, (path, headers)
                    assert KEY not in resp.text
            # A key in the query string is not a key.
            resp = c.request(method, path, json=body, params={"api_key": KEY})
            assert resp.status_code == 401, path
            ok = c.request(method, path, json=body, headers={"X-API-Key": KEY})
            assert ok.status_code in (200, 202), (path, ok.text)


def test_rate_limit_holds_per_key_under_concurrent_clients(server) -> None:
    """Twelve threads hammer one key for 4 s: about RATE/s plus one burst get through,
    the rest 429; a second key, used meanwhile at half its rate, never sees a 429."""
    duration = 4.0
    codes: Counter[int] = Counter()
    other: list[int] = []
    bad_429: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": LIMITED}, timeout=10) as c:
            while not stop.is_set():
                resp = c.post("/recommend", json={"user_id": "u2", "k": 5})
                with lock:
                    codes[resp.status_code] += 1
                if resp.status_code == 429 and (
                    resp.headers.get("retry-after") != "1" or resp.json()["field"] != "X-API-Key"
                ):
                    bad_429.append(f"{resp.headers} {resp.text}")

    def polite() -> None:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": OTHER}, timeout=10) as c:
            while not stop.is_set():
                other.append(c.post("/recommend", json={"user_id": "u3"}).status_code)
                time.sleep(2 / RATE)

    threads = [threading.Thread(target=hammer) for _ in range(12)]
    threads.append(threading.Thread(target=polite))
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - start

    assert set(codes) == {200, 429}, codes
    assert not bad_429, bad_429[:3]  # each 429 names the key and says when to retry
    allowed = RATE * elapsed + RATE  # sustained rate over the run plus one burst
    assert codes[200] <= allowed + 2, (codes, elapsed)
    assert codes[200] >= min(RATE * duration, 0.5 * allowed), (codes, elapsed)
    assert codes[429] > codes[200], codes  # the clients really outpaced the limit
    assert other and set(other) == {200}, Counter(other)


def test_logs_and_files_never_hold_a_raw_user_id(server, work_dir: Path) -> None:
    """Requests carrying a distinctive user id through the success and the error paths,
    then every file the server wrote (its log included) is searched for the id."""
    user = SECRET_USER
    future_ms = int(time.time() * 1000) + 10 * 86_400_000
    requests: list[tuple[str, str, object, int]] = [
        ("POST", "/recommend", {"user_id": user}, 200),  # a cold user: fallback path
        ("POST", "/recommend", {"user_id": "u1", "context": {"uid": user}}, 200),
        ("POST", "/recommend", {"user_id": user, "k": 0}, 422),
        ("POST", "/recommend", {"user_id": user + "x" * 200}, 422),
        ("POST", "/recommend", {"user_id": user, "filters": {"include_categories": user}}, 422),
        ("POST", "/recommend", {"user_id": user, "unknown": user}, 422),
        ("POST", "/recommend", f'{{"user_id": "{user}", '.encode(), 422),  # broken JSON
        ("POST", "/recommend", {"user_id": user, "context": {"x": "y" * 70_000}}, 413),
        ("POST", "/feedback", {"events": [{"user_id": user, "item_id": "i1", "ts": 1}]}, 422),
        (
            "POST",
            "/feedback",
            {
                "events": [
                    {"user_id": user, "item_id": "i1", "event_type": "click", "ts": future_ms}
                ]
            },
            422,
        ),
        (
            "POST",
            "/feedback",
            {"events": [{"user_id": user, "item_id": "i1", "event_type": "rating", "ts": 1}]},
            422,
        ),
        (
            "POST",
            "/feedback",
            {"events": [{"user_id": user, "item_id": "i1", "event_type": "click", "ts": 1}]},
            202,
        ),
        ("GET", f"/similar/{user}", None, 404),
    ]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=10) as c:
        for method, path, body, expected in requests:
            if isinstance(body, bytes):
                resp = c.request(method, path, content=body)
            else:
                resp = c.request(method, path, json=body)
            assert resp.status_code == expected, (path, body, resp.text[:300])
            if path != f"/similar/{user}":  # that one names the (item) id it did not find
                assert user not in resp.text, (path, resp.text[:300])
        for key in ({}, {"X-API-Key": "nope"}):  # refused before the body is read
            c.post("/recommend", json={"user_id": user}, headers=key)
    time.sleep(1)  # let the log handlers flush

    files = [p for p in work_dir.rglob("*") if p.is_file()]
    log = server.log_text()
    assert "service started" in log  # the captured output is the server's
    leaks = [str(p) for p in files if user.encode() in p.read_bytes()]
    assert not leaks, f"raw user id written to {leaks}"
    assert any(p.suffix == ".log" for p in files)
    # Per-request metrics are labelled by route, not by the path asked for.
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'endpoint="/similar/{item_id}"' in metrics and 'endpoint="/recommend"' in metrics
