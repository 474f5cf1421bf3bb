"""A small client of a running Airflow's REST API (``/api/v2``) over HTTP, with its token.

Airflow 3's API server takes a JWT bearer token. The auth manager issues it at
``POST /auth/token`` for a user name and password (the simple auth manager's route,
``airflow.api_fastapi.auth.managers.simple.routes.login``: 201 with ``access_token``). The
token expires (``[api_auth] jwt_expiration_time``, an hour by default), so a 401 gets one
fresh token and the request is sent once more. An Airflow without login (the embedded one
binds loopback and makes every caller an admin) takes requests without a token: no user
name, no login. Nothing here reads settings or files: the caller hands over the address
and the credentials (:func:`rtrec.app.cluster_airflow.api`,
:func:`rtrec.app.embedded_airflow.api`).

:meth:`AirflowApi.trigger` names the run it creates, so a trigger whose answer is lost (a
read timeout on a loaded machine) is sent again without risk of running the DAG twice.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

TIMEOUT_S = 90.0
"""Seconds to wait for an answer. Above the embedded metadata DB's own wait for its write
lock (60 s, ``rtrec.app.embedded_airflow.SQLITE_CONNECT_ARGS``): a client that gave up
sooner would abandon requests the server is still entitled to finish."""

TRIGGER_ATTEMPTS = 3
"""Sends of one trigger when the answer is lost or the server fails (5xx)."""

RETRY_PAUSE_S = 2.0
"""Pause before a trigger is sent again (doubled each time)."""


def segment(part: str) -> str:
    """One path segment of a REST URL (run ids hold ``:`` and ``+``)."""
    return quote(part, safe="~")


class AirflowApi:
    """``get``/``post``/``patch``/``trigger`` on ``<base_url>/api/v2`` as ``username``
    (without a token when ``username`` is None)."""

    def __init__(
        self,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = {"username": username, "password": password}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)
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
        try:
            return self._send(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"Airflow API {method} {path} failed: {exc}") from exc

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        extra = kwargs.pop("headers", {})
        if self._credentials["username"] is None:
            return self._http.request(method, f"/api/v2{path}", headers=extra, **kwargs)
        for attempt in (1, 2):
            token = self._token if self._token is not None and attempt == 1 else self._login()
            headers = {"Authorization": f"Bearer {token}", **extra}
            resp = self._http.request(method, f"/api/v2{path}", headers=headers, **kwargs)
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

    def trigger(
        self, dag_id: str, conf: dict[str, Any], *, run_id: str | None = None
    ) -> dict[str, Any]:
        """Create a run of ``dag_id`` (``POST /dags/{id}/dagRuns``, what the UI's trigger
        button sends); the run as the API returns it.

        The run id is chosen here (``manual__rtrec_<uuid>`` unless given), which makes the
        call safe to repeat: when the answer is lost (timeout, dropped connection) or the
        server fails (5xx), the same request is sent again, up to ``TRIGGER_ATTEMPTS``
        times, and a 409 then means an earlier send created the run, which is read back.
        Each repeat is logged at WARNING; a 4xx other than that 409 raises at once.
        """
        run_id = run_id or f"manual__rtrec_{uuid.uuid4().hex}"
        path = f"/dags/{segment(dag_id)}/dagRuns"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        for attempt in itertools.count(1):  # the last send returns or raises
            last = attempt >= TRIGGER_ATTEMPTS
            try:
                resp = self._send("POST", path, json=body)
            except httpx.TransportError as exc:
                if last:
                    raise Unavailable(
                        f"Airflow API POST {path} failed {attempt} times: {exc!r}"
                    ) from exc
                problem = repr(exc)
            except httpx.HTTPError as exc:  # not a lost answer: sending again would not help
                raise Unavailable(f"Airflow API POST {path} failed: {exc!r}") from exc
            else:
                if resp.status_code == 409 and attempt > 1:
                    logger.warning("run %s of %s was created by an earlier send", run_id, dag_id)
                    return self.get(f"{path}/{segment(run_id)}")
                if resp.status_code < 500 or last:
                    return self._json(resp, f"POST {path}", (200, 201))
                problem = f"{resp.status_code} {resp.text[:200]}"
            logger.warning(
                "trigger of %s (run %s) sent again (%d of %d): %s",
                dag_id,
                run_id,
                attempt + 1,
                TRIGGER_ATTEMPTS,
                problem,
            )
            time.sleep(RETRY_PAUSE_S * 2 ** (attempt - 1))

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
