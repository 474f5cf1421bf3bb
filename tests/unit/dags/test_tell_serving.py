"""``tell_serving``: what it waits for, and for how long, when serving is pinned or keyed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rtrec.dags.steps import tell_serving

from rtrec.config import load_settings

ADMIN, READER = "admin-secret-1", "reader-secret-2"


@pytest.fixture
def status_server() -> Iterator[tuple[int, list[str | None]]]:
    """A stand-in /status that answers v7 as champion only to the admin key (else 401)."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            key = self.headers.get("X-API-Key")
            seen.append(key)
            ok = key == ADMIN
            body = {"models": {"champion": {"version": "7"}}} if ok else {"error": "no key"}
            data = json.dumps(body).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()


def test_a_pinned_bundle_is_not_waited_for(tmp_path: Path) -> None:
    settings = load_settings(work_dir=tmp_path, serving={"bundle_path": str(tmp_path / "b")})
    started = time.monotonic()
    out = tell_serving(settings, version="3", timeout_s=30)
    assert time.monotonic() - started < 1.0
    assert out["notified"] is False and "bundle_path" in out["reason"]


def test_keyed_status_is_read_with_an_admin_key(
    tmp_path: Path, status_server: tuple[int, list[str | None]]
) -> None:
    port, seen = status_server
    keys = [
        {"name": "reader", "key": READER, "scopes": ["recommend"]},
        {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
    ]
    settings = load_settings(work_dir=tmp_path, serving={"port": port, "api_keys": keys})
    out = tell_serving(settings, version="7", timeout_s=5)
    assert out == {"notified": True, "serving_version": "7", "reason": "swapped"}
    assert seen == [ADMIN]
