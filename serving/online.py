"""Bounded reads of the online store, behind a circuit breaker (``rtrec.serving.breaker``).

While the breaker is open requests skip the store at once (the caller serves its flagged
fallback). The probe pings Redis all the time, so an outage opens the breaker before
requests run into it, and closes it as soon as Redis answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from rtrec.serving.breaker import Breaker

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

Fetch = Callable[[list[str]], list[dict[str, Any]]]


class GuardedFeatures(Breaker):
    """``__call__(user_ids)`` like :func:`rtrec.features.online_features`, bounded and guarded."""

    def __init__(
        self,
        settings: Settings,
        fetch: Fetch | None = None,
        *,
        timeout_s: float = 0.25,
        probe_interval_s: float = 0.5,
        trip_after_timeouts: int = 3,
    ) -> None:
        from rtrec.features import online_features

        super().__init__(
            "online store",
            timeout_s=timeout_s,
            probe_interval_s=probe_interval_s,
            timeout_says="read exceeded",
            trip_after_timeouts=trip_after_timeouts,
            probe_while_closed=True,
            workers=4,
            thread_name="online-features",
        )
        self.settings = settings
        self._fetch: Fetch = fetch or (lambda ids: online_features(settings, ids))
        self._default_fetch = fetch is None

    def __call__(self, user_ids: list[str]) -> list[dict[str, Any]]:
        return self.call(self._fetch, user_ids)

    def warm(self, *, timeout_s: float = 30.0) -> bool:
        """Build the Feast store now (seconds) rather than on the first request.

        Bounded: if the store does not answer in time the service starts anyway and
        serves fallbacks until the probe sees the store.
        """
        future = self._pool.submit(self._first_read)
        try:
            future.result(timeout=timeout_s)
            return True
        except FutureTimeout:
            logger.warning("online store not ready after %.0f s; starting degraded", timeout_s)
        except Unavailable as exc:
            self.trip(str(exc))
        return False

    def _first_read(self) -> None:
        from pathlib import Path

        repo = Path(str(self.settings.feast.repo_path))
        if self._default_fetch and not (repo / "registry.db").exists():
            # Register the feature repo through rtrec.features.apply directly: get_store's own
            # apply-on-first-use path deadlocks on its lock (reported to its owner).
            from rtrec.features import apply

            apply(self.settings)
        self._fetch(["warmup"])

    def start(self) -> None:
        if self.settings.feast.online_store == "redis":  # the local store has nothing to ping
            super().start()

    def probe(self) -> str | None:
        """None when Redis answers a PING within 200 ms, else the reason."""
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(
                self.settings.redis.url,
                socket_timeout=0.2,
                socket_connect_timeout=0.2,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                client.ping()
            finally:
                client.close()
            return None
        except Exception as exc:  # any failure means "not usable now"
            return f"redis ping failed: {exc}"
