"""Protections in front of routing: a deadline on request headers, a JSON answer for
paths the router cannot match, and metric labels that cannot grow without bound.

Header deadline (slowloris). uvicorn, under BentoML, closes idle keep-alive connections
but never a request whose headers are still arriving: its keep-alive timer is cancelled
by every byte received, a new connection starts with no timer at all, and the
application (and so the body deadline in :mod:`rtrec.serving.auth`) only sees a request once
its headers are complete. A client that trickles one header byte a second, or connects
and sends nothing, holds a connection and a file descriptor forever; enough of them
exhaust the process's descriptors and nobody else gets in. BentoML exposes no uvicorn
option for this, so :func:`bound_header_time` wraps three callbacks of uvicorn's
httptools protocol (the one uvicorn picks when httptools is installed, as it is here):
arm a timer when a connection opens and after each response, cancel it when a request's
headers are complete, and answer 408 and close the connection if it fires first.

Control characters in paths. BentoML mounts the API under its own router, whose catch-
all mount pattern does not match a path with a newline in it (``%0A`` in an item id):
the request never reaches the API and gets BentoML's plain-text 404, which no client can
parse as the documented error. :class:`RejectControlPaths` answers those with the
documented 422 before routing.

Metric labels: see :func:`template_metric_paths`.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

logger = logging.getLogger(__name__)

_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def _expire(protocol: Any, timeout_s: float) -> None:
    protocol._rtrec_header_timer = None
    transport = protocol.transport
    cycle = getattr(protocol, "cycle", None)
    if transport.is_closing() or (cycle is not None and not cycle.response_complete):
        return  # a request is being answered: never cut into its response
    body = b'{"error": "request headers not received within %g s", "field": "headers"}' % timeout_s
    transport.write(_RESPONSE % (len(body), body))
    transport.close()


def _arm(protocol: Any, timeout_s: float) -> None:
    _disarm(protocol)
    protocol._rtrec_header_timer = protocol.loop.call_later(timeout_s, _expire, protocol, timeout_s)


def _disarm(protocol: Any) -> None:
    timer = getattr(protocol, "_rtrec_header_timer", None)
    if timer is not None:
        timer.cancel()
        protocol._rtrec_header_timer = None


def bound_header_time(timeout_s: float = 10.0) -> bool:
    """Give every new connection ``timeout_s`` per request to finish sending its headers.

    Idempotent; returns False (and logs) where uvicorn's httptools protocol is not there
    to wrap, so the service still starts, without the deadline.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError as exc:  # uvicorn falls back to h11: no deadline, say so
        logger.warning("no header deadline: uvicorn's httptools protocol unavailable (%s)", exc)
        return False
    if getattr(HttpToolsProtocol, "_rtrec_header_deadline", None) is not None:
        HttpToolsProtocol._rtrec_header_deadline = timeout_s
        return True
    made = HttpToolsProtocol.connection_made
    headers_done = HttpToolsProtocol.on_headers_complete
    response_done = HttpToolsProtocol.on_response_complete
    lost = HttpToolsProtocol.connection_lost

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        _arm(self, HttpToolsProtocol._rtrec_header_deadline)

    def on_headers_complete(self: Any) -> None:
        _disarm(self)
        headers_done(self)

    def on_response_complete(self: Any) -> None:
        pipelined = bool(self.pipeline)  # a queued request already has its headers
        response_done(self)
        if not self.transport.is_closing() and not pipelined:
            _arm(self, HttpToolsProtocol._rtrec_header_deadline)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        lost(self, exc)

    HttpToolsProtocol._rtrec_header_deadline = timeout_s
    HttpToolsProtocol.connection_made = connection_made
    HttpToolsProtocol.on_headers_complete = on_headers_complete
    HttpToolsProtocol.on_response_complete = on_response_complete
    HttpToolsProtocol.connection_lost = connection_lost
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


def template_metric_paths(app: Any, *, keep: frozenset[str] = frozenset()) -> bool:
    """Label BentoML's per-request metrics with route templates, not raw paths.

    BentoML's traffic middleware labels every request with ``scope["path"]``: each item
    id asked of ``/similar/{item_id}`` and each path a scanner tries becomes a new time
    series, so the metrics files, ``/metrics`` and the process's memory grow without
    bound, and ids end up in the metrics. This wraps that middleware so it sees the
    matching route's template (``/similar/{item_id}``), ``keep``'s paths as they are,
    and ``other`` for anything else; the application still gets the real path.
    Returns False (and logs) if BentoML's middleware is not where it was.
    """
    try:
        from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    except ImportError as exc:
        logger.warning("metric paths not templated: %s", exc)
        return False
    routes = [r for r in app.routes if hasattr(r, "path_regex")]
    static = {r.path for r in routes if "{" not in r.path} | set(keep)

    def label(path: str) -> str:
        if path in static:
            return path
        for route in routes:
            if route.path_regex.match(path):
                return route.path
        return "other"

    cls = RunnerTrafficMetricsMiddleware
    if getattr(cls, "_rtrec_label", None) is not None:
        cls._rtrec_label = staticmethod(label)
        return True
    original = cls.__call__

    async def labelled_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not getattr(self, "_rtrec_restores", False):
            inner = self.app

            async def restore(s: dict[str, Any], r: Any, snd: Any) -> None:
                raw = s.pop("rtrec.raw_path", None)
                if raw is not None:
                    s["path"] = raw
                await inner(s, r, snd)

            self.app, self._rtrec_restores = restore, True
        if scope["type"] == "http":
            name = cls._rtrec_label(scope["path"])
            if name != scope["path"]:
                scope = {**scope, "path": name, "rtrec.raw_path": scope["path"]}
        await original(self, scope, receive, send)

    cls._rtrec_label = staticmethod(label)
    cls.__call__ = labelled_call
    return True
