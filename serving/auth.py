"""API keys and per-key rate limits."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time


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
