"""rtrec.serving.edge without BentoML: the path guard's answers, the metric labels, and the
header deadline on a real uvicorn server over real sockets.

Under the full service the deadline is exercised in ``tests/reliability/test_api_fuzz.py``
(slow clients get 408 and others are served meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from rtrec.serving import metrics
from rtrec.serving.edge import (
    HeaderDeadlineProtocol,
    RejectControlPaths,
    RouteMetrics,
    route_labeller,
    use_header_deadline,
)


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
    from rtrec.serving.service import PROBES, app

    label = route_labeller(app, keep=PROBES)
    assert label("/similar/some-user-or-item") == "/similar/{item_id}"
    assert label("/recommend") == "/recommend" and label("/metrics") == "/metrics"
    assert label("/wp-admin/setup.php") == "other"


def _count(endpoint: str, method: str, status: str) -> float:
    labels = {"endpoint": endpoint, "method": method, "status": status}
    metrics.flush()  # the request path records in memory; a scrape flushes first
    return REGISTRY.get_sample_value("rtrec_serving_http_requests_total", labels) or 0.0


def _seconds_count(endpoint: str, method: str, status: str) -> float:
    labels = {"endpoint": endpoint, "method": method, "status": status}
    metrics.flush()
    return REGISTRY.get_sample_value("rtrec_serving_http_request_seconds_count", labels) or 0.0


async def _through(
    middleware: RouteMetrics, method: str, path: str
) -> tuple[list[dict], BaseException | None]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    try:
        await middleware(scope, receive, send)
    except Exception as exc:
        return sent, exc
    return sent, None


def test_route_metrics_count_and_time_by_template_method_and_status() -> None:
    """Requests are counted and timed under their route template, once each; an error
    raised inside counts as the 500 Starlette answers; probes are not counted; /metrics
    is answered here, with the series just recorded."""
    from rtrec.serving.service import PROBES, app

    async def inner(scope: dict, receive: Any, send: Any) -> None:
        if scope["path"] == "/feedback":
            raise RuntimeError("boom")
        status = 200 if scope["path"] != "/nowhere" else 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    mw = RouteMetrics(inner, api=app, skip=PROBES)
    before = {
        "similar": _count("/similar/{item_id}", "GET", "200"),
        "other": _count("other", "GET", "404"),
        "boom": _count("/feedback", "POST", "500"),
        "timed": _seconds_count("/similar/{item_id}", "GET", "200"),
        "probe": _count("/readyz", "GET", "200"),
        "odd method": _count("/recommend", "other", "200"),
    }
    for item in ("i1", "i2", "i3"):
        assert asyncio.run(_through(mw, "GET", f"/similar/{item}"))[1] is None
    asyncio.run(_through(mw, "GET", "/nowhere"))
    asyncio.run(_through(mw, "GET", "/readyz"))
    asyncio.run(_through(mw, "BREW", "/recommend"))  # a method token of the client's own
    _, raised = asyncio.run(_through(mw, "POST", "/feedback"))
    assert isinstance(raised, RuntimeError)  # re-raised for Starlette to answer

    assert _count("/similar/{item_id}", "GET", "200") == before["similar"] + 3
    assert _seconds_count("/similar/{item_id}", "GET", "200") == before["timed"] + 3
    assert _count("other", "GET", "404") == before["other"] + 1
    assert _count("/feedback", "POST", "500") == before["boom"] + 1
    assert _count("/readyz", "GET", "200") == before["probe"]  # probes are not counted
    assert _count("/recommend", "other", "200") == before["odd method"] + 1

    sent, raised = asyncio.run(_through(mw, "GET", "/metrics"))
    assert raised is None and sent[0]["status"] == 200
    text = b"".join(m.get("body", b"") for m in sent).decode()
    assert 'endpoint="/similar/{item_id}"' in text and "i1" not in text
    assert sent[1:] and _count("/metrics", "GET", "200") == 0  # scrapes are not counted
    sent, _ = asyncio.run(_through(mw, "POST", "/metrics"))
    assert sent[0]["status"] == 405 and (b"allow", b"GET, HEAD") in sent[0]["headers"]


def test_exposition_reads_the_metrics_every_process_wrote(tmp_path: Path) -> None:
    """As under BentoML (``PROMETHEUS_MULTIPROC_DIR`` set before a worker imports
    anything): what one process recorded is in the files and in the exposition."""
    code = (
        "from rtrec.serving.edge import LATENCY, exposition\n"
        "LATENCY.labels('/recommend', 'POST', '200').observe(0.003)\n"
        "print(exposition().decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.glob("histogram_*.db"))  # written to the shared folder
    series = '{endpoint="/recommend",le="0.005",method="POST",status="200"}'
    assert f"rtrec_serving_http_request_seconds_bucket{series} 1.0" in out.stdout, out.stdout
    count = 'rtrec_serving_http_request_seconds_count{endpoint="/recommend",method="POST"'
    assert count + ',status="200"} 1.0' in out.stdout, out.stdout
    # Read back from the files, not this process's registry: another reader sees it too.
    reread = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rtrec.serving.edge import exposition\nprint(exposition().decode())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"rtrec_serving_http_request_seconds_bucket{series} 1.0" in reread.stdout


DEADLINE_S = 0.5


async def _hello(scope: dict, receive: Any, send: Any) -> None:
    """A plain ASGI app; ``/slow`` takes longer than the header deadline to answer."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(DEADLINE_S * 3)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


async def _answer(
    reader: asyncio.StreamReader, trickle: asyncio.StreamWriter | None = None
) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or 5 s pass), and when it closed;
    with ``trickle``, a header line goes out every 0.1 s meanwhile (never the blank line
    that would end the headers)."""
    start = time.monotonic()
    read = asyncio.ensure_future(asyncio.wait_for(reader.read(), 5))
    while trickle is not None and not read.done():
        trickle.write(b"X-Pad: h\r\n")
        await asyncio.sleep(0.1)
    data = await read
    return data, time.monotonic() - start


async def _scenarios() -> dict[str, tuple[bytes, float]]:
    import uvicorn

    config = uvicorn.Config(_hello, host="127.0.0.1", port=0, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    assert config.http_protocol_class is HeaderDeadlineProtocol
    port = server.servers[0].sockets[0].getsockname()[1]
    out: dict[str, tuple[bytes, float]] = {}
    try:
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        out["silent"] = await _answer(reader)

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        out["trickle"] = await _answer(reader, trickle=writer)

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        out["slow answer, then idle"] = await _answer(reader)
    finally:
        server.should_exit = True
        await task
    return out


def test_header_deadline_answers_408_and_closes_over_real_sockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Silent and trickling clients get 408 naming ``headers`` and are closed at the
    deadline; a response slower than the deadline is never cut, and the kept-alive
    connection after it gets a fresh deadline."""
    from uvicorn.config import HTTP_PROTOCOLS

    monkeypatch.setitem(HTTP_PROTOCOLS, "auto", HTTP_PROTOCOLS["auto"])  # restored after
    monkeypatch.setattr(HeaderDeadlineProtocol, "timeout_s", HeaderDeadlineProtocol.timeout_s)
    assert use_header_deadline(DEADLINE_S)
    assert use_header_deadline(DEADLINE_S)  # idempotent
    out = asyncio.run(_scenarios())
    for name in ("silent", "trickle"):
        data, closed_after = out[name]
        assert data.startswith(b"HTTP/1.1 408 "), (name, data)
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["field"] == "headers", name
        assert DEADLINE_S * 0.8 <= closed_after < DEADLINE_S + 2, (name, closed_after)
    data, closed_after = out["slow answer, then idle"]
    assert data.startswith(b"HTTP/1.1 200 "), data  # answered in full, past the deadline
    assert data.index(b"HTTP/1.1 408 ") > data.index(b"hi"), data  # then the idle one's 408
    assert closed_after >= DEADLINE_S * 3 + DEADLINE_S * 0.8, closed_after
