"""rtrec.serving.edge without a server: the path guard's answers and the metric labels.

The header deadline itself is exercised over real sockets in
``tests/reliability/test_api_fuzz.py`` (slow clients get 408 and others are served).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rtrec.serving.edge import RejectControlPaths, bound_header_time, template_metric_paths


def _call(app: Any, path: str) -> tuple[int, dict | None, bool]:
    sent: list[dict] = []
    reached = []

    async def inner(scope: dict, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    asyncio.run(RejectControlPaths(inner)({"type": "http", "path": path}, receive, send))
    if not sent:
        return 0, None, bool(reached)
    return sent[0]["status"], json.loads(sent[1]["body"]), bool(reached)


def test_control_characters_in_paths_get_a_json_422_before_routing() -> None:
    status, body, reached = _call(None, "/similar/a\nb")
    assert status == 422 and body["field"] == "path" and not reached
    assert _call(None, "/similar/a\x00")[0] == 422
    for fine in ("/similar/i7", "/similar/caf\u00e9", "/similar/a\x7fb", "/recommend"):
        assert _call(None, fine) == (0, None, True), fine


def test_metric_labels_are_route_templates() -> None:
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from rtrec.serving.service import PROBES, app

    assert template_metric_paths(app, keep=PROBES)
    assert template_metric_paths(app, keep=PROBES)  # idempotent: wrapped once
    label = RunnerTrafficMetricsMiddleware._rtrec_label
    assert label("/similar/some-user-or-item") == "/similar/{item_id}"
    assert label("/recommend") == "/recommend" and label("/metrics") == "/metrics"
    assert label("/wp-admin/setup.php") == "other"


def test_header_deadline_installs_once() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert bound_header_time(10.0)
    wrapped = HttpToolsProtocol.connection_made
    assert bound_header_time(7.0) and HttpToolsProtocol.connection_made is wrapped
    assert HttpToolsProtocol._rtrec_header_deadline == 7.0
