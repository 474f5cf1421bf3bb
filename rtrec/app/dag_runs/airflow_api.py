"""A small client of a running Airflow's REST API (``/api/v2``) over HTTP, with its token.

Airflow 3's API server takes a JWT bearer token. The auth manager issues it at
``POST /auth/token`` for a user name and password (the simple auth manager's route,
``airflow.api_fastapi.auth.managers.simple.routes.login``: 201 with ``access_token``). The
token expires (``[api_auth] jwt_expiration_time``, an hour by default), so a 401 gets one
fresh token and the request is sent once more. Nothing here reads settings or files: the
caller hands over the address and the credentials (:func:`rtrec.app.cluster_airflow.api`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from rtrec.errors import Unavailable


def segment(part: str) -> str:
    """One path segment of a REST URL (run ids hold ``:`` and ``+``)."""
    return quote(part, safe="~")


class AirflowApi:
    """``get``/``post``/``patch`` on ``<base_url>/api/v2`` as ``username``."""

    def __init__(
        self, base_url: str, username: str, password: str, *, timeout_s: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = {"username": username, "password": password}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._token: str | None = None

    def _login(self) -> str:
        try:
            resp = self._http.post("/auth/token", json=self._credentials)
        except httpx.HTTPError as exc:
            raise Unavailable(f"Airflow API at {self.base_url} unreachable: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise Unavailable(
                f"Airflow at {self.base_url} refused a token for "
                f"{self._credentials['username']!r}: {resp.status_code} {resp.text[:300]}"
            )
        self._token = str(resp.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request to ``/api/v2<path>``; a 401 renews the token and retries once."""
        extra = kwargs.pop("headers", {})
        for attempt in (1, 2):
            token = self._token if self._token is not None and attempt == 1 else self._login()
            headers = {"Authorization": f"Bearer {token}", **extra}
            try:
                resp = self._http.request(method, f"/api/v2{path}", headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                raise Unavailable(f"Airflow API {method} {path} failed: {exc}") from exc
            if resp.status_code != 401:
                return resp
            self._token = None
        return resp

    def _json(self, resp: httpx.Response, what: str, ok: tuple[int, ...]) -> dict[str, Any]:
        if resp.status_code not in ok:
            raise Unavailable(f"Airflow API {what}: {resp.status_code} {resp.text[:500]}")
        return dict(resp.json())

    def get(self, path: str, *, missing_ok: bool = False, **params: Any) -> dict[str, Any]:
        """One GET; ``missing_ok`` turns a 404 into ``{}``, any other failure raises."""
        resp = self.request("GET", path, params=params)
        if missing_ok and resp.status_code == 404:
            return {}
        return self._json(resp, f"GET {path}", (200,))

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("POST", path, json=body), f"POST {path}", (200, 201))

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("PATCH", path, json=body), f"PATCH {path}", (200,))

    def all(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged list endpoint."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.get(path, **params, limit=100, offset=len(items))
            items += page[key]
            if not page[key] or len(items) >= page["total_entries"]:
                return items

    def health(self) -> dict[str, Any] | None:
        """``/api/v2/monitor/health`` (no token needed), None when it does not answer."""
        try:
            resp = self._http.get("/api/v2/monitor/health")
            return dict(resp.json()) if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
