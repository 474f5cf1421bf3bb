"""Airflow's stable REST API (``/api/v2``) inside the DAG runner's process.

The runner has no API server to call (the standalone may not be up), so it mounts
Airflow's own API application in process: the same endpoints, the same metadata DB, and
the public form of every read (run and task states, XComs, queued runs) instead of
Airflow's ORM models, which change between releases.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote


def segment(part: str) -> str:
    """One path segment of a REST URL (run ids hold ``:`` and ``+``)."""
    return quote(part, safe="~")


def when(text: str) -> datetime:
    """A timestamp of the REST API (ISO 8601, ``Z`` for UTC) as an aware datetime."""
    return datetime.fromisoformat(text)


class RestApi:
    """Airflow's REST API application served over ASGI in this process.

    The embedded environment makes every caller an admin (loopback only), so no token.
    """

    def __init__(self) -> None:
        import asyncio

        import httpx
        from airflow.api_fastapi.app import create_app

        self._loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=create_app("core"))
        self._client = httpx.AsyncClient(transport=transport, base_url="http://airflow/api/v2")

    def _call(self, method: str, path: str, params: dict[str, Any]) -> Any:
        return self._loop.run_until_complete(self._client.request(method, path, params=params))

    def get(self, path: str, *, missing_ok: bool = False, **params: Any) -> dict[str, Any]:
        """One GET; ``missing_ok`` turns a 404 into ``{}``, any other failure raises."""
        resp = self._call("GET", path, params)
        if missing_ok and resp.status_code == 404:
            return {}
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path}: {resp.status_code} {resp.text[:500]}")
        return resp.json()

    def all(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged list endpoint."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.get(path, **params, limit=100, offset=len(items))
            items += page[key]
            if not page[key] or len(items) >= page["total_entries"]:
                return items

    def delete(self, path: str) -> None:
        """One DELETE; anything but 200/204 raises."""
        resp = self._call("DELETE", path, {})
        if resp.status_code not in (200, 204):
            raise RuntimeError(f"DELETE {path}: {resp.status_code} {resp.text[:500]}")
