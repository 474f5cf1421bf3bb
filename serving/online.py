"""Bounded reads of the online store, behind a circuit breaker.

With Redis down, one Feast read blocks for about ten seconds (redis-py retries with
backoff). A request must never wait that long, and the event loop must never block, so
reads run on a small thread pool with a deadline; a failure opens the breaker, and
while it is open requests skip the store at once (the caller serves its flagged
fallback). A background probe pings Redis with sub-second timeouts and closes the
breaker as soon as Redis answers again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

Fetch = Callable[[list[str]], list[dict[str, Any]]]


class GuardedFeatures:
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

        self.settings = settings
        self._fetch: Fetch = fetch or (lambda ids: online_features(settings, ids))
        self._default_fetch = fetch is None
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        self.trip_after_timeouts = trip_after_timeouts
        self.down_reason: str | None = None
        self._timeouts = 0
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="online-features")
        self._stop = threading.Event()

    def __call__(self, user_ids: list[str]) -> list[dict[str, Any]]:
        reason = self.down_reason
        if reason is not None:
            raise Unavailable(f"online store marked down: {reason}")
        future = self._pool.submit(self._fetch, user_ids)
        try:
            out = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._timeouts += 1
            msg = f"online store read exceeded {self.timeout_s * 1000:.0f} ms"
            if self._timeouts >= self.trip_after_timeouts:
                self.trip(msg)
            raise Unavailable(msg) from None
        except Unavailable as exc:
            self.trip(str(exc))
            raise
        self._timeouts = 0
        return out

    def trip(self, reason: str) -> None:
        if self.down_reason is None:
            logger.warning("online store breaker open: %s", reason[:200])
        self.down_reason = reason[:200]

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

    # -- probing ----------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.feast.online_store == "redis":
            threading.Thread(target=self._loop, name="online-probe", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            error = self.probe()
            if error is None and self.down_reason is not None:
                logger.info("online store reachable again; breaker closed")
                self._timeouts = 0
                self.down_reason = None
            elif error is not None:
                self.trip(error)

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
