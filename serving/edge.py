"""Protections in front of routing: a deadline on request headers, a JSON answer for
paths the router cannot match, and route-labelled request metrics.

What an ASGI middleware cannot see. uvicorn parses a request's line and headers before
it calls the application: a connection that sends nothing, or trickles one header byte a
second, never reaches any ASGI code, so no middleware can time it out. uvicorn's own
settings do not cover that phase either: ``timeout_keep_alive`` (the only timeout BentoML
passes to uvicorn, ``bentoml serve --timeout-keep-alive``) is armed only after a response
and cancelled by every byte received, so a new connection has no timer at all and a
trickling one keeps resetting it; ``limit_concurrency`` and
``h11_max_incomplete_event_size`` are not passed by BentoML at all, and the second bounds
header size (under h11 only), not time. Left alone, such clients hold a connection and a
file descriptor forever, and enough of them exhaust the process's descriptors.

Header deadline. :class:`HeaderDeadlineProtocol` is our own subclass of uvicorn's public
httptools protocol (the one uvicorn picks when httptools is installed, as it is here): it
arms a timer when a connection opens and after each response, cancels it when a
request's headers are complete, and answers 408 and closes the connection if it fires
first; each override calls uvicorn's method. BentoML builds uvicorn's ``Config`` itself
with ``http="auto"`` and offers no way to pass a protocol class, so
:func:`use_header_deadline` points uvicorn's ``"auto"`` entry of its protocol table at
this class; it must run when the service module is imported, before the worker's uvicorn
loads its configuration. That table entry is the one framework hook left: no public form
exists for this phase.

Body deadline and size. Once headers are complete the request is ASGI's: the size limit
(413 naming ``serving.max_body_bytes``) and the body deadline (408) are our pure ASGI
guard's, :class:`rtrec.serving.auth.Guard`, which wraps ``receive``.

Control characters in paths. BentoML mounts the API under its own router, whose catch-
all mount pattern does not match a path with a newline in it (``%0A`` in an item id):
the request never reaches the API and gets BentoML's plain-text 404, which no client can
parse as the documented error. :class:`RejectControlPaths` answers those with the
documented 422 before routing.

Request metrics: see :class:`RouteMetrics`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from rtrec.serving.metrics import flush, record
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

logger = logging.getLogger(__name__)

_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as exc:  # uvicorn falls back to h11: use_header_deadline says so
    HeaderDeadlineProtocol: Any = None
    _NO_HTTPTOOLS = str(exc)
else:
    _NO_HTTPTOOLS = ""

    class HeaderDeadlineProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol with a deadline on each request's headers: from
        the connection's start, and from the end of each response on a kept-alive one."""

        timeout_s: float = 10.0
        """Set by :func:`use_header_deadline`; read when a timer is armed."""

        _rtrec_header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # a queued request already has its headers
            super().on_response_complete()
            if not self.transport.is_closing() and not pipelined:
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self._rtrec_header_timer = self.loop.call_later(
                self.timeout_s, self._headers_overdue, self.timeout_s
            )

        def _disarm_header_deadline(self) -> None:
            if self._rtrec_header_timer is not None:
                self._rtrec_header_timer.cancel()
                self._rtrec_header_timer = None

        def _headers_overdue(self, timeout_s: float) -> None:
            self._rtrec_header_timer = None
            cycle = self.cycle
            if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
                return  # a request is being answered: never cut into its response
            body = b'{"error": "request headers not received within %g s", "field": "headers"}'
            body %= timeout_s
            self.transport.write(_RESPONSE % (len(body), body))
            self.transport.close()


def use_header_deadline(timeout_s: float = 10.0) -> bool:
    """Make uvicorn's default (``"auto"``) protocol :class:`HeaderDeadlineProtocol`, so
    every connection has ``timeout_s`` per request to finish sending its headers.

    Call it when the service module is imported: uvicorn resolves the protocol when the
    worker's server loads its configuration, after the import and before any request.
    Idempotent; returns False (and logs) where httptools is missing and uvicorn would
    use h11, so the service still starts, without the deadline.
    """
    if HeaderDeadlineProtocol is None:
        logger.warning(
            "no header deadline: uvicorn's httptools protocol unavailable (%s)", _NO_HTTPTOOLS
        )
        return False
    from uvicorn.config import HTTP_PROTOCOLS

    HeaderDeadlineProtocol.timeout_s = timeout_s
    HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderDeadlineProtocol"
    return True


_CONTROL = re.compile(r"[\x00-\x1f]")
"""The characters the item id pattern forbids (DEL is allowed there, and routes fine)."""


class RejectControlPaths:
    """Pure ASGI middleware (added to the BentoML service, so it runs before routing):
    a decoded path with a control character gets 422 naming ``path``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _CONTROL.search(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {"error": "invalid request: path: control characters are not allowed", "field": "path"}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 422, "headers": headers})
        await send({"type": "http.response.body", "body": body})


REQUESTS = Counter(
    "rtrec_serving_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "rtrec_serving_http_request_seconds",
    "Time from a request reaching the service to its response's last byte, by route "
    "template, method and status",
    ["endpoint", "method", "status"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
)


def route_labeller(api: Any, *, keep: frozenset[str] = frozenset()) -> Callable[[str], str]:
    """A path -> label function: the matching route's template (``/similar/{item_id}``),
    ``keep``'s paths as they are, ``other`` for anything else.

    Raw paths as labels would make each item id asked of ``/similar/{item_id}`` and each
    path a scanner tries a new time series: the metrics files, ``/metrics`` and the
    process's memory would grow without bound, and ids would end up in the metrics.
    """
    routes = [r for r in api.routes if hasattr(r, "path_regex")]
    static = {r.path for r in routes if "{" not in r.path} | set(keep)
    templated = [r for r in routes if "{" in r.path]

    def label(path: str) -> str:
        if path in static:
            return path
        for route in templated:
            if route.path_regex.match(path):
                return route.path
        return "other"

    return label


MULTIPROCESS = values.ValueClass is not values.MutexValue
"""Whether this process's metrics live in ``PROMETHEUS_MULTIPROC_DIR``'s files: decided by
prometheus_client when it was first imported (BentoML sets the variable before its workers
start), not by the variable now. Feast's metrics module sets it when imported later, and the
files then hold Feast's series only."""


def exposition() -> bytes:
    """Every process's metrics in Prometheus' text format.

    Under BentoML each worker writes its metrics to files in ``PROMETHEUS_MULTIPROC_DIR``
    (BentoML sets it for the workers it starts), so they are read back from there;
    without it (a plain process) the default registry is the whole story.
    """
    flush()  # what the request path recorded since the last flush
    if not MULTIPROCESS:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})
"""Methods labelled as they are; any other token a client sends is ``other``, so every
label stays bounded (routes x methods x the statuses the service sends)."""


class RouteMetrics:
    """Pure ASGI middleware (added to the BentoML service: outside the API and the other
    edge middleware, inside BentoML's traffic timeout): counts every request and times
    it, labelled by route template (:func:`route_labeller`), method and status, and
    serves ``GET /metrics``.

    BentoML's own per-request metrics are off (``metrics: enabled: false`` in the service
    config): they label requests with raw paths, and with both on /metrics would show
    each request twice. That setting also removes BentoML's ``/metrics`` route, so this
    middleware answers it, with every metric of the service (:func:`exposition`).
    Probes and ``/metrics`` itself (``skip``) are not counted, as BentoML did not.
    """

    def __init__(self, app: Any, *, api: Any, skip: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.skip = skip
        self.label = route_labeller(api, keep=skip)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics":
            await self._metrics(scope, receive, send)
            return
        if scope["path"] in self.skip:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0  # stays 0 where no response was sent (the client went away first)

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            # Cancelled before answering: BentoML's traffic timeout, which then answers
            # 504 itself, outside this middleware.
            status = status or 504
            raise
        except Exception:
            status = status or 500  # Starlette's error middleware answers 500 outside
            raise
        finally:
            self._observe(scope, status, time.perf_counter() - start)

    @staticmethod
    async def _metrics(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] not in ("GET", "HEAD"):  # as BentoML's route answered
            body = json.dumps({"error": "method not allowed", "field": None})
            await Response(body, 405, {"allow": "GET, HEAD"}, "application/json")(
                scope, receive, send
            )
            return
        body = await run_in_threadpool(exposition)  # reads files: off the event loop
        await Response(body, media_type=CONTENT_TYPE_LATEST)(scope, receive, send)

    def _observe(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"
        labels = (self.label(scope["path"]), method, str(status))
        record(REQUESTS, 1, *labels)
        record(LATENCY, seconds, *labels)


class ReplicaHeader:
    """Names the replica in every response, ``X-Rtrec-Replica: <serving.replica_id>``, so
    a client (or a test) behind a load balancer sees which replica answered. Without a
    replica id (one process, no balancer) it passes requests through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._value: bytes | None = None
        self._read = False

    def _replica(self) -> bytes | None:
        if not self._read:  # settings exist once the worker runs, not at import
            from rtrec.config import get_settings

            replica = get_settings().serving.replica_id
            self._value, self._read = replica.encode() if replica else None, True
        return self._value

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        value = self._replica() if scope["type"] == "http" else None
        if value is None:
            await self.app(scope, receive, send)
            return

        async def send_named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-rtrec-replica", value)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_named)
