"""API keys, per-key rate limits and the ASGI guard that applies them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from typing import Any

from starlette.exceptions import HTTPException


class RateLimiter:
    """Token bucket per key: ``rate`` tokens/s, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True


class ApiKeys:
    """Checks ``X-API-Key`` in constant time; no keys configured means auth is off."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str | None) -> str | None:
        """The key's bucket name when valid ("anonymous" when auth is off), else None."""
        if not self.enabled:
            return "anonymous"
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        for d in self._digests:
            if hmac.compare_digest(d, digest):
                return d.hex()[:12]
        return None


class Guard:
    """Pure ASGI middleware: body size (413), API key (401), per-key rate (429), in order,
    then a body that is too large (413) or too slow (408) while it is being read.

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    runs every request through an extra task and memory streams, which costs more than
    the whole retrieval on this path. Its limits come from ``app.state`` (set by the
    service at start); with no state yet (start-up), requests pass through.
    """

    def __init__(
        self, app: Any, *, open_paths: frozenset[str] = frozenset(), body_timeout_s: float = 5.0
    ) -> None:
        self.app = app
        self.open_paths = open_paths
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = getattr(scope.get("app"), "state", None)
        keys = getattr(state, "keys", None)
        if scope["type"] != "http" or keys is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        max_body: int = state.max_body
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > max_body:
            await _reject(send, 413, f"body of {int(length)} bytes exceeds {max_body}", "body")
            return
        presented = headers.get(b"x-api-key", b"").decode("latin-1") or None
        bucket = keys.check(presented)
        if bucket is None:
            # Say which problem it is (a client with no key and one with a stale key need
            # different fixes); never echo the presented value.
            problem = "missing X-API-Key header" if presented is None else "invalid X-API-Key"
            await _reject(send, 401, problem, "X-API-Key")
            return
        if not state.limiter.allow(bucket):
            await _reject(
                send, 429, "rate limit exceeded for this API key", "X-API-Key", retry_after=1
            )
            return
        await self.app(scope, _bounded(receive, max_body, self.body_timeout_s), send)


def _bounded(receive: Any, limit: int, timeout_s: float) -> Any:
    """The body, cut off past ``limit`` bytes (chunked bodies have no Content-Length to
    check up front) or ``timeout_s`` seconds (a slow client must not hold a slot until
    BentoML's own timeout answers 504). Once the body is complete, receive() passes
    through untimed: waiting for a disconnect is not reading a body."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    done = False

    async def wrapped() -> dict[str, Any]:
        nonlocal seen, done
        if done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise BodyTooSlow(timeout_s) from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            done = not message.get("more_body", False)
        return message

    return wrapped


class BodyTooLarge(HTTPException):
    """A chunked body ran past the limit while being read: 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body exceeds {limit} bytes")


class BodyTooSlow(HTTPException):
    """The body did not arrive in time: 408 (FastAPI re-raises HTTPExceptions as they are)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"body not received within {timeout_s:g} s")


async def _reject(
    send: Any, status: int, message: str, field: str, *, retry_after: int | None = None
) -> None:
    body = json.dumps({"error": message, "field": field}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:  # a well-behaved client backs off instead of hammering
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
