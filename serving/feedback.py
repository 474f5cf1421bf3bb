"""``POST /feedback`` -> the Kafka events topic (keyed by user id, like every producer).

Publishing is bounded and guarded like online-store reads (:mod:`rtrec.serving.breaker`):
a dead broker must cost a feedback request a few hundred milliseconds and a 503, never a
30-second hang and never BentoML's 504. While the breaker is open requests answer 503 at
once; a probe, running only then, closes it as soon as a broker accepts TCP connections.

Every event is stamped with who sent it (:func:`stamp`): ``context.source_key`` is the
name of the API key, whatever the client put there, so a bad feed can be traced to its
key and a key limited to some users (``users`` in its settings) cannot write for others.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from rtrec.serving.auth import ANONYMOUS, Principal
from rtrec.serving.breaker import Breaker

from rtrec.config import Settings, host_port
from rtrec.errors import Unavailable
from rtrec.logging import redact_id

logger = logging.getLogger(__name__)


SOURCE_KEY = "source_key"
"""The context field that names the sender of an event: an API key's name, or
``anonymous:<redacted client address>`` when the service runs without keys."""


def source_name(principal: Principal) -> str:
    """What :func:`stamp` writes for ``principal`` (no raw client address)."""
    if principal.client is None:
        return principal.name
    if principal.client == ANONYMOUS:
        return ANONYMOUS
    return f"{ANONYMOUS}:{redact_id(principal.client)}"


def stamp(event: dict[str, Any], source: str) -> dict[str, Any]:
    """``event`` (a decoded event) with ``context.source_key`` set to ``source``,
    replacing any value the client sent."""
    return {**event, "context": {**(event.get("context") or {}), SOURCE_KEY: source}}


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    return [host_port(part, 9092) for part in bootstrap.split(",") if part.strip()]


def broker_reachable(bootstrap: str, *, timeout_s: float = 0.2) -> str | None:
    """None when some bootstrap server accepts a TCP connection, else why not."""
    reasons = []
    for host, port in _addresses(bootstrap):
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            return None
        except OSError as exc:
            reasons.append(f"{host}:{port}: {exc}")
    return "no bootstrap server reachable (" + "; ".join(reasons or [bootstrap]) + ")"


class Publisher(Breaker):
    """Sends validated interactions and waits for the broker's acknowledgement.

    The producer is created on first use (a dead broker must not stop the service from
    starting) and recreated after a failure.
    """

    def __init__(
        self, settings: Settings, *, timeout_s: float = 2.0, probe_interval_s: float = 0.5
    ) -> None:
        super().__init__(
            "event broker",
            timeout_s=timeout_s,
            probe_interval_s=probe_interval_s,
            timeout_says="did not acknowledge within",
            thread_name="feedback",
        )
        self.settings = settings
        self._producer: Any = None
        self._lock = threading.Lock()

    def __call__(self, events: list[Any]) -> None:
        """Publish ``events``; raises Unavailable within ``timeout_s`` when it cannot."""
        self.call(self._send, events)

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                bootstrap = self.settings.kafka.bootstrap_servers
                unreachable = broker_reachable(bootstrap)
                if unreachable is not None:  # fail in ms, not after a 30 s bootstrap
                    raise Unavailable(f"event broker unavailable: {unreachable}")
                from kafka import KafkaProducer

                self._producer = KafkaProducer(
                    bootstrap_servers=bootstrap,
                    linger_ms=1,
                    max_block_ms=int(self.timeout_s * 1000),
                )
            return self._producer

    def _send(self, events: list[Any]) -> None:
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
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"event broker unavailable: {exc}") from exc

    def probe(self) -> str | None:
        return broker_reachable(self.settings.kafka.bootstrap_servers)
