"""Helpers shared by the tests that talk to a real BentoML server over HTTP
(``tests/integration/test_serving*.py``, ``tests/reliability/``).

Fixtures stay in the test modules (each starts its server with its own settings); what
lives here is what several of them do the same way: post a recommendation, seed a
user's history in the online store, drive steady traffic, wait for a condition, register
a bundle in MLflow and damage one on purpose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from rtrec.config import Settings

UNREACHABLE = {
    "RTREC_MLFLOW__TRACKING_URI": "http://127.0.0.1:9",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
}
"""Server environment whose MLflow tracking URI points at a dead address (fails fast)."""


def recommend(client: httpx.Client, user_id: str, **body: Any) -> dict:
    """``POST /recommend``; asserts a 200 and returns the body."""
    resp = client.post("/recommend", json={"user_id": user_id, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def write_history(settings: Settings, user_id: str, items: list[str]) -> None:
    """Put a user's recent items (newest first) into the online store, as the processor does."""
    import pandas as pd
    from rtrec.features import count_names, write_user_features

    now = int(time.time() * 1000)
    row = {"user_id": user_id, "recent_items": items, "last_event_ms": now, "written_ms": now}
    frame = pd.DataFrame([{**row, **dict.fromkeys(count_names(), 1)}])
    frame["event_timestamp"] = pd.to_datetime(frame["last_event_ms"], unit="ms", utc=True)
    write_user_features(settings, frame)


def wait_for(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``pred`` every 0.1 s; True as soon as it holds, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


class SteadyClient(threading.Thread):
    """Sends /recommend at a steady pace, recording status, latency and model version."""

    def __init__(
        self, url: str, rate: float = 50.0, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.period, self.headers = url, 1.0 / rate, headers or {}
        self.results: list[tuple[float, int, float, str | None, str]] = []
        """(sent, status, seconds, model version, fallback reason or \"\")."""
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers=self.headers) as c:
            n = 0
            while not self.stop.is_set():
                t = time.perf_counter()
                try:
                    r = c.post("/recommend", json={"user_id": f"u{n % 40}", "k": 10})
                    body = r.json() if r.status_code == 200 else {}
                    row = (
                        t,
                        r.status_code,
                        time.perf_counter() - t,
                        body.get("model_version"),
                        body.get("fallback_reason") or "" if body else "no answer",
                    )
                except httpx.HTTPError:
                    row = (t, 0, time.perf_counter() - t, None, "no answer")
                self.results.append(row)
                n += 1
                time.sleep(max(0.0, self.period - (time.perf_counter() - t)))

    def finish(self) -> None:
        """Stop sending and wait for the last request."""
        self.stop.set()
        self.join()

    def versions(self) -> list[str | None]:
        return [r[3] for r in self.results]

    def statuses(self) -> list[int]:
        return [r[1] for r in self.results]


def register(registry: Any, bundle: Path) -> str:
    """Log ``bundle`` as a training run and register it; returns the new version."""
    _, version = registry.log_and_register(
        bundle, params={"synthetic": 1}, metrics={"val_ndcg@10": 0.1}
    )
    return version


def flip_bytes(path: Path, *, at: float = 0.5, count: int = 16) -> None:
    """Corrupt a file in place: invert ``count`` bytes starting at ``at`` (share of its size).

    Unlike a truncation, the file keeps its size, so only content checks can notice.
    """
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * at), max(len(data) - count, 0))
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples ``name{labels...}`` in an exposition ``text`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
