"""rtrec's Airflow REST client: a trigger whose answer is lost is sent again under the same
run id and never starts the DAG twice; failures it cannot mend raise with the reason.

The server here is a small in-memory stand-in for Airflow's ``dagRuns`` endpoints (an
``httpx.MockTransport``): what is tested is the client's own logic. The integration suite
(``tests/integration/test_airflow_scheduler.py``) triggers a real Airflow through it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from rtrec.app.dag_runs import airflow_api
from rtrec.app.dag_runs.airflow_api import AirflowApi
from rtrec.errors import Unavailable


class FakeAirflow:
    """``POST``/``GET`` of DAG runs, each POST answered as ``script`` says in turn:
    ``"ok"``, ``"lost"`` (the run is created, the answer times out), ``"down"`` (nothing
    created, the connection is refused), ``"500"`` (nothing created, a server error)."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.runs: dict[str, dict[str, Any]] = {}
        self.posts = 0
        self.auth: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.auth.append(request.headers.get("Authorization"))
        prefix = "/api/v2/dags/my_dag/dagRuns"
        if request.method == "GET":
            run_id = request.url.path.removeprefix(prefix + "/")
            if run_id not in self.runs:
                return httpx.Response(404, json={"detail": "not found"})
            return httpx.Response(200, json=self.runs[run_id])
        assert request.method == "POST" and request.url.path == prefix
        self.posts += 1
        body = json.loads(request.content)
        what = self.script.pop(0)
        if what == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if what == "500":
            return httpx.Response(500, json={"detail": "database is locked"})
        if body["dag_run_id"] in self.runs:
            return httpx.Response(409, json={"detail": "run exists"})
        run = {"dag_run_id": body["dag_run_id"], "conf": body["conf"], "state": "queued"}
        self.runs[body["dag_run_id"]] = run
        if what == "lost":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json=run)


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(airflow_api, "RETRY_PAUSE_S", 0.0)


def _client(server: FakeAirflow) -> AirflowApi:
    return AirflowApi("http://airflow", transport=httpx.MockTransport(server))


def test_a_trigger_names_its_run_and_sends_no_token_without_a_user() -> None:
    server = FakeAirflow("ok")
    run = _client(server).trigger("my_dag", {"epochs": 1})
    assert run["dag_run_id"].startswith("manual__rtrec_") and run["conf"] == {"epochs": 1}
    assert server.posts == 1 and server.auth == [None]


def test_a_lost_answer_is_sent_again_and_the_run_created_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeAirflow("lost", "ok")
    with caplog.at_level(logging.WARNING, logger=airflow_api.__name__):
        run = _client(server).trigger("my_dag", {"a": 1}, run_id="r1")
    assert list(server.runs) == ["r1"] and server.posts == 2
    assert run == server.runs["r1"]
    warned = [r.getMessage() for r in caplog.records]
    assert any("sent again (2 of 3)" in m and "ReadTimeout" in m for m in warned), warned
    assert any("created by an earlier send" in m for m in warned), warned


@pytest.mark.parametrize("first", ["down", "500"])
def test_a_send_that_created_nothing_is_sent_again(first: str) -> None:
    server = FakeAirflow(first, "ok")
    run = _client(server).trigger("my_dag", {}, run_id="r2")
    assert run["dag_run_id"] == "r2" and list(server.runs) == ["r2"] and server.posts == 2


def test_a_server_that_never_answers_fails_with_the_reason() -> None:
    server = FakeAirflow("down", "down", "down")
    with pytest.raises(Unavailable, match="failed 3 times: ConnectError"):
        _client(server).trigger("my_dag", {})
    assert server.posts == airflow_api.TRIGGER_ATTEMPTS


def test_a_run_id_taken_before_the_first_send_is_refused_not_read_back() -> None:
    """A 409 on the first send is somebody else's run of that id: never adopted."""
    server = FakeAirflow("ok", "ok")
    client = _client(server)
    client.trigger("my_dag", {"mine": False}, run_id="taken")
    with pytest.raises(Unavailable, match="409"):
        client.trigger("my_dag", {"mine": True}, run_id="taken")
    assert server.runs["taken"]["conf"] == {"mine": False}


def test_the_client_waits_longer_than_the_embedded_db_lock() -> None:
    from rtrec.app.embedded_airflow import SQLITE_CONNECT_ARGS

    assert float(SQLITE_CONNECT_ARGS["timeout"]) < airflow_api.TIMEOUT_S  # type: ignore[arg-type]
