"""The API against its own description: schemathesis generates requests for every operation
in the live server's ``/openapi.json`` (valid ones and deliberately invalid ones, bad
keys included), sends them over real HTTP to a real ``bentoml serve`` with keys
configured, and checks each answer: never a 5xx, status codes, content types and bodies
as documented, and the documented key really enforced (schemathesis' ``ignored_auth``
probes each operation without it). Then the
abuse cases: oversized bodies and clients that trickle their headers or body.

Feedback goes to a topic of its own, so the fuzzed events never reach the processors
that other tests start on the session's broker.
"""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time
from collections import Counter

import httpx
import pytest

from rtrec.config import Settings, host_port
from tests.conftest import free_port

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

KEY = "fuzz-key"
TOPIC = "rtrec.events.fuzz"
MIN_CASES = 1000
CONTRACT_RULES = re.compile(r"in the future|rating events need a value")
"""The event contract's rules beyond its JSON Schema (``rtrec.events.parse_event``)."""
BUDGET = {  # examples per (operation, mode): just over MIN_CASES in all
    "POST /recommend": 230,
    "GET /similar/{item_id}": 120,
    "POST /feedback": 160,
    "GET /status": 5,
    "GET /experiments": 5,
}


@pytest.fixture(scope="module")
def server(stack: Settings, tmp_path_factory: pytest.TempPathFactory):
    from rtrec.features import apply
    from rtrec.serving.process import running_server
    from rtrec.serving.synthetic import synthetic_bundle

    from rtrec.app.stack import ensure_topics

    apply(stack)
    fuzz_settings = stack.model_copy(deep=True)
    fuzz_settings.kafka.events_topic = TOPIC
    ensure_topics(fuzz_settings)
    bundle = synthetic_bundle(tmp_path_factory.mktemp("fuzz") / "b", n_items=200, seed=4)
    env = {
        "RTREC_SERVING__BUNDLE_PATH": str(bundle),
        "RTREC_SERVING__API_KEYS": f'["{KEY}"]',
        "RTREC_SERVING__RATE_LIMIT_PER_S": "1000000",
        "RTREC_KAFKA__EVENTS_TOPIC": TOPIC,
    }
    with running_server(free_port(), env=env, log=stack.log_dir / "serving-fuzz.log") as srv:
        yield srv


def fuzz(
    op, mode, *, examples: int, url: str, session, statuses: Counter[int]
) -> tuple[int, list[str]]:
    """Send up to ``examples`` generated cases for one operation in one mode; returns how
    many were sent and every failed check (collected, so one run reports them all)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    sent, failures = 0, []
    semantic = op.label == "POST /feedback" and mode.is_positive

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=os.environ.get("RTREC_FUZZ_RANDOM") is None,  # same cases in CI
        phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        resp = None
        try:
            headers = None
            resp = case.call(base_url=url, session=session, headers=headers, timeout=15)
            statuses[resp.status_code] += 1
            if semantic and resp.status_code == 422:
                # Valid by the schema, refused by a documented rule it cannot express.
                assert CONTRACT_RULES.search(resp.json()["error"]), resp.text
                case.validate_response(
                    resp, headers=headers, excluded_checks=[positive_data_acceptance]
                )
            else:  # every built-in check: response schemas, and the key really enforced
                case.validate_response(resp, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a FailureGroup
            answer = f"{resp.status_code} {resp.text[:200]}" if resp is not None else "no answer"
            first = str(exc).strip().splitlines()
            check = next((ln.strip() for ln in first if ln.strip().startswith("- ST")), first[:1])
            failures.append(f"{op.label} [{mode.value}] {check}: {answer}")

    one()
    return sent, failures


def test_generated_requests_get_documented_answers_and_never_a_5xx(server) -> None:
    import requests
    import schemathesis
    from hypothesis.errors import Unsatisfiable

    spec = httpx.get(f"{server.url}/openapi.json").json()
    # An invalid body may be refused for its size first: 413 is a documented rejection.
    rejected = ["400", "401", "403", "404", "406", "413", "422", "429"]
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"ApiKey": {"api_key": KEY}}},
            "checks": {"negative_data_rejection": {"expected-statuses": rejected}},
        }
    )
    schema = schemathesis.openapi.from_dict(spec, config=config)
    sent: Counter[tuple[str, str]] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == set(BUDGET)
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                n, failed = fuzz(
                    op,
                    mode,
                    examples=BUDGET[op.label],
                    url=server.url,
                    session=session,
                    statuses=statuses,
                )
            except Unsatisfiable:  # only where nothing could be made invalid (no parameters)
                assert op.label in ("GET /status", "GET /experiments") and not mode.is_positive
                continue
            sent[(op.label, mode.value)] = n
            failures += failed

    total = sum(sent.values())
    print(f"fuzzed {total} cases: {dict(sent)}; statuses {dict(statuses)}")
    summary = Counter(f.split(": ", 1)[0] + ": " + f.split(": ", 1)[1][:120] for f in failures)
    assert not failures, f"{len(failures)} of {total} failed:\n" + "\n".join(
        f"{n} x {line}" for line, n in summary.most_common(15)
    )
    assert total >= MIN_CASES, dict(sent)
    assert not [s for s in statuses if s >= 500], statuses
    assert {200, 202, 404, 422} <= set(statuses), statuses  # the API was really exercised


def _raw(url: str) -> socket.socket:
    return socket.create_connection(host_port(url, 80), timeout=30)


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_oversized_bodies_are_413_without_reading_them(server) -> None:
    headers = {"X-API-Key": KEY, "content-type": "application/json"}
    for path in ("/recommend", "/feedback"):
        # Announced: refused from the headers alone (nothing of the 50 MB is sent).
        sock = _raw(server.url)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n".encode()
        )
        assert _read_status(sock) == 413, path
        sock.close()
        # Sent in full, a little over the limit.
        body = b'{"user_id": "u1", "context": {"x": "' + b"y" * 70_000 + b'"}}'
        resp = httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=15)
        assert resp.status_code == 413 and resp.json()["field"] == "body", path
    # Without a key the size check still comes first: no body is read for anyone.
    resp = httpx.post(f"{server.url}/recommend", content=b"x" * 70_000, timeout=15)
    assert resp.status_code == 413


class Trickler(threading.Thread):
    """A client that sends ``fast`` at once, then ``slow`` a few bytes every ``gap_s``,
    stopping as soon as the server answers or hangs up; ``status`` is what it answered."""

    def __init__(self, url: str, fast: bytes, slow: bytes, *, gap_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.url, self.fast, self.slow, self.gap_s = url, fast, slow, gap_s
        self.status: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        sock = _raw(self.url)
        try:
            sock.sendall(self.fast)
            for i in range(0, len(self.slow), 4):
                if select.select([sock], [], [], 0)[0]:  # answered, or closed
                    break
                sock.sendall(self.slow[i : i + 4])
                if self.stop.wait(self.gap_s):
                    return
            self.status = _read_status(sock)
        except OSError:
            self.status = 0  # reset by the server
        finally:
            sock.close()


def test_slow_clients_are_cut_off_and_others_are_served_meanwhile(server) -> None:
    body = b'{"user_id": "u1", "k": 10, "context": {"pad": "' + b"p" * 400 + b'"}}'
    line = b"POST /recommend HTTP/1.1\r\nHost: x\r\n"
    head = (
        line
        + (
            f"X-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
    )
    slow_bodies = [Trickler(server.url, head, body) for _ in range(30)]
    slow_heads = [
        Trickler(server.url, line, b"X-Pad: " + b"h" * 400 + b"\r\n\r\n") for _ in range(30)
    ]
    silent = [Trickler(server.url, b"", b"") for _ in range(10)]
    everyone = slow_bodies + slow_heads + silent
    for t in everyone:
        t.start()
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=10) as c:
            codes, took = [], []
            for n in range(150):  # about 3 s of ordinary traffic while they stall
                t = time.monotonic()
                try:
                    codes.append(c.post("/recommend", json={"user_id": f"u{n % 20}"}).status_code)
                except httpx.HTTPError as exc:  # say which request, when, and what the server saw
                    raise AssertionError(
                        f"ordinary request {n} failed after {time.monotonic() - t:.1f} s "
                        f"({exc!r}); earlier ones took up to {max(took, default=0):.3f} s; "
                        f"slow clients answered so far: "
                        f"{[x.status for x in everyone if x.status is not None]}; "
                        f"server log tail:\n{server.log_text()[-3000:]}"
                    ) from exc
                took.append(time.monotonic() - t)
                time.sleep(0.02)
        assert codes == [200] * 150
        for t in everyone:
            t.join(timeout=60)
        assert not [t for t in everyone if t.is_alive()], "a slow client was never cut off"
        # Stalled bodies get the guard's 408 (5 s); stalled or missing headers get the
        # connection deadline's 408 (10 s). None of them was served.
        assert {t.status for t in slow_bodies} == {408}
        assert {t.status for t in slow_heads + silent} == {408}
    finally:
        for t in everyone:
            t.stop.set()
    assert httpx.get(f"{server.url}/readyz").status_code == 200
