"""By-design degradations of the service, made visible.

A fallback list for a cold user, a Redis outage that turns every request into one, a
trending refresh that keeps the last list: the service answers on purpose, but never
silently. Each occurrence is counted in Prometheus with its reason, kept for ``/status``
(count per reason since start, the last one and when), and logged at WARNING at most
once per ``log_every_s`` per reason with the count since the previous line, so an
outage that degrades every request does not flood the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
"""Longest silence in the log for a reason that keeps occurring."""


class Degradations:
    """Counts, last occurrence and rate-limited WARNING lines, per reason."""

    def __init__(
        self,
        *,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_every_s = log_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        self._last: dict[str, Any] | None = None

    def record(
        self, reason: str, detail: str = "", *, metric: Any, log: bool = True, count: int = 1
    ) -> None:
        """One degraded answer or step (``count`` of them at once: a batch of impressions
        dropped). ``reason`` is a short fixed phrase (the metric's label: keep it
        low-cardinality); ``detail`` the variable part (no user ids). ``metric``: a counter
        with one label that takes ``reason``. ``log=False`` where the caller logs the
        occurrence itself (an internal error, at ERROR with its traceback)."""
        metric.labels(reason).inc(count)
        now = self._clock()
        with self._lock:
            total = self._counts[reason] = self._counts.get(reason, 0) + count
            self._last = {
                "reason": reason,
                "detail": detail[:300],
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
            unlogged = self._unlogged.get(reason, 0) + count
            due = log and now - self._logged_at.get(reason, -1e18) >= self.log_every_s
            self._unlogged[reason] = 0 if due else unlogged
            if due:
                self._logged_at[reason] = now
        if due:
            logger.warning(
                "degraded: %s%s (%d since the last report, %d since start)",
                reason,
                f": {detail[:300]}" if detail else "",
                unlogged,
                total,
            )

    def status(self) -> dict[str, Any]:
        """``{"counts": {reason: n}, "last": {"reason", "detail", "at"} | None}``."""
        with self._lock:
            return {"counts": dict(self._counts), "last": dict(self._last) if self._last else None}
