"""``POST /feedback`` -> the Kafka events topic (keyed by user id, like every producer)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)


class Publisher:
    """Sends validated interactions and waits for the broker's acknowledgement.

    The producer is created on first use (a dead broker must not stop the service from
    starting) and recreated after a failure.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(
                    bootstrap_servers=self.settings.kafka.bootstrap_servers,
                    linger_ms=1,
                    max_block_ms=int(self.timeout_s * 1000),
                )
            return self._producer

    def __call__(self, events: list[Any]) -> None:
        topic = self.settings.kafka.events_topic
        try:
            producer = self._get()
            futures = [
                producer.send(topic, key=e.user_id.encode(), value=e.to_json()) for e in events
            ]
            for f in futures:
                f.get(timeout=self.timeout_s)
        except Exception as exc:
            with self._lock:
                broken, self._producer = self._producer, None
            if broken is not None:
                broken.close(timeout=1)
            logger.warning("feedback publish failed: %s", exc)
            raise Unavailable(f"event broker unavailable: {exc}") from exc
