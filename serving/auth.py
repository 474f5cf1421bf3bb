"""API keys with scopes, per-key rate limits and the ASGI guard that applies them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

from rtrec.apikeys import SCOPES, ApiKey, Scope
from rtrec.config import Settings


class RateLimiter:
    """Token bucket per key: ``rate`` tokens/s, bursts up to one second's worth; per
    process (``serving.rate_limit_backend: memory``)."""

    def __init__(self, rate: float, clock: Any = None) -> None:
        self.rate = rate
        self._clock = clock
        """None: ``time.monotonic``, looked up at each call."""
        self.capacity = max(rate, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self._clock() if self._clock is not None else time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True


def limiter_for(settings: Settings, degradations: Any) -> Any:
    """The limiter ``serving.rate_limit_backend`` names: this process's token buckets, or
    the limit shared by all replicas through Redis (``rtrec.serving.ratelimit``)."""
    rate = settings.serving.rate_limit_per_s
    if settings.serving.rate_limit_backend == "memory":
        return RateLimiter(rate)
    from functools import partial

    from rtrec.serving.ratelimit import RedisQuota, SharedRateLimiter

    from rtrec.redis_clients import async_redis_client

    quota = RedisQuota(settings.redis.url, connect=partial(async_redis_client, settings))
    return SharedRateLimiter(rate, quota, degradations)


ROUTE_SCOPES: dict[str, Scope] = {
    "/recommend": "recommend",
    "/similar": "recommend",
    "/feedback": "feedback",
    "/status": "admin",
    "/experiments": "admin",
}
"""The scope each route needs, by its first path segment. A path not listed needs
``admin``: a route added without an entry here is closed to ordinary keys."""


def scope_for(path: str) -> Scope:
    """The scope a request path needs (``/similar/i7`` -> ``recommend``)."""
    end = path.find("/", 1)
    return ROUTE_SCOPES.get(path if end < 0 else path[:end], "admin")


ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Who sent a request: a key by name, or an anonymous client when auth is off."""

    name: str
    """The key's name; ``anonymous`` when auth is off."""
    scopes: frozenset[str]
    users: tuple[str, ...] | None = None
    """Feedback restriction: exact user ids and ``prefix*`` rules; None: any user."""
    client: str | None = None
    """The client address, for anonymous principals (their rate bucket)."""

    @property
    def bucket(self) -> str:
        return self.name if self.client is None else f"client:{self.client}"

    def may_write(self, user_id: str) -> bool:
        """Whether this principal may send feedback on behalf of ``user_id``."""
        if self.users is None:
            return True
        return any(
            user_id.startswith(rule[:-1]) if rule.endswith("*") else user_id == rule
            for rule in self.users
        )


class ApiKeys:
    """Checks ``X-API-Key`` in constant time; no keys configured means auth is off."""

    def __init__(self, keys: Sequence[ApiKey | str]) -> None:
        entries = [ApiKey.plain(k) if isinstance(k, str) else k for k in keys]
        self._known = [
            (hashlib.sha256(k.get_secret_value().encode()).digest(), _principal(k)) for k in entries
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._known)

    @property
    def names(self) -> list[str]:
        return [p.name for _, p in self._known]

    def check(self, presented: str | None, client: str | None = None) -> Principal | None:
        """The key's principal when valid (an anonymous one, every scope, when auth is
        off), else None. Every configured key is compared, whichever matches."""
        if not self.enabled:
            return Principal(ANONYMOUS, frozenset(SCOPES), client=client or ANONYMOUS)
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for d, principal in self._known:
            if hmac.compare_digest(d, digest):
                found = principal
        return found


def _principal(key: ApiKey) -> Principal:
    users = None if key.users is None else tuple(key.users)  # []: nobody, not anybody
    return Principal(key.name, frozenset(key.scopes), users)


class Guard:
    """Pure ASGI middleware: not ready yet (503), body size (413), API key (401), the
    key's scope for the route (403), per-key rate (429), in order, then a body that is
    too large (413) or too slow (408) while it is being read. It passes the request on
    with its :class:`Principal` in ``scope["rtrec.principal"]``.

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    runs every request through an extra task and memory streams, which costs more than
    the whole retrieval on this path. Its limits come from ``app.state`` (set by the
    service at start); until they are there every request but the open paths gets 503,
    never a pass: a request must not slip through unchecked while the service starts.
    """

    def __init__(
        self, app: Any, *, open_paths: frozenset[str] = frozenset(), body_timeout_s: float = 5.0
    ) -> None:
        self.app = app
        self.open_paths = open_paths
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        state = getattr(scope.get("app"), "state", None)
        keys: ApiKeys | None = getattr(state, "keys", None)
        if keys is None:
            await _reject(send, 503, "service is starting: not ready for requests", None, 1)
            return
        headers = dict(scope["headers"])
        max_body: int = state.max_body
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > max_body:
            await _reject(send, 413, f"body of {int(length)} bytes exceeds {max_body}", "body")
            return
        presented = headers.get(b"x-api-key", b"").decode("latin-1") or None
        principal = keys.check(presented, (scope.get("client") or (None,))[0])
        if principal is None:
            # Say which problem it is (a client with no key and one with a stale key need
            # different fixes); never echo the presented value.
            problem = "missing X-API-Key header" if presented is None else "invalid X-API-Key"
            await _reject(send, 401, problem, "X-API-Key")
            return
        needed = scope_for(scope["path"])
        if needed not in principal.scopes:
            why = f"API key '{principal.name}' lacks the '{needed}' scope this route needs"
            await _reject(send, 403, why, "X-API-Key")
            return
        allowed = state.limiter.allow(principal.bucket)
        if allowed is None:  # the shared limiter's lease ran out: awaited, the loop runs on
            allowed = await state.limiter.refill(principal.bucket)
        if not allowed:
            await _reject(send, 429, "rate limit exceeded for this API key", "X-API-Key", 1)
            return
        scope["rtrec.principal"] = principal
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
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                message = await receive()
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
    send: Any, status: int, message: str, field: str | None, retry_after: int | None = None
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
