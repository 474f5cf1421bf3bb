"""Fallback items: trending (from the item stream features) or the model's popular list.

Refreshed in the background, so a request never waits on Redis for a fallback and a
Redis outage still leaves the last good list in memory.
"""

from __future__ import annotations

import logging
import threading
import time

from rtrec.serving import metrics
from rtrec.serving.degradation import Degradations

from rtrec.config import Settings

logger = logging.getLogger(__name__)


class PopularCache:
    def __init__(
        self,
        settings: Settings,
        *,
        size: int = 500,
        refresh_s: float = 5.0,
        degradations: Degradations | None = None,
    ) -> None:
        self.settings = settings
        self.degradations = degradations or Degradations()
        self.size = size
        self.refresh_s = refresh_s
        self.trending: list[str] = []
        self.popular: list[str] = []
        self.trending_at = 0.0
        self._merged: tuple[list[str], list[str], list[str]] | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self.refresh()
        threading.Thread(target=self._loop, name="popular-cache", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def refresh(self) -> None:
        from rtrec.features import trending_items

        from rtrec.errors import Unavailable

        try:
            items = trending_items(self.settings, self.size)
        except Unavailable as exc:
            self.degradations.record(
                "trending refresh failed",
                f"keeping the cached list ({len(self.trending)} items): {exc}",
                metric=metrics.DEGRADATIONS,
            )
            return
        if items:
            self.trending, self.trending_at = items, time.time()

    def items(self) -> tuple[list[str], str]:
        """(ordered candidates, source): trending first, topped up with the model's popular
        list, so a short trending list (a quiet stream) never leaves a fallback short."""
        trending, popular = self.trending, self.popular
        if not trending:
            return popular, "popular"
        if len(trending) >= self.size or not popular:
            return trending, "trending"
        merged = self._merged
        if merged is None or merged[0] is not trending or merged[1] is not popular:
            seen = set(trending)
            merged = (trending, popular, trending + [i for i in popular if i not in seen])
            self._merged = merged
        return merged[2], "trending+popular"
