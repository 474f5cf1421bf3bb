"""``POST /feedback`` -> the Kafka events topic (keyed by user id, like every producer).

Publishing is bounded the way online-store reads are (see :mod:`rtrec.serving.online`): a
dead broker must cost a feedback request a few hundred milliseconds and a 503, never a
30-second hang (kafka-python's bootstrap against a dead broker waits that long whatever
``max_block_ms`` says) and never BentoML's 504. Sends run on a small pool with a
deadline; a failure opens a breaker so later requests answer 503 at once, and a probe
closes it as soon as a broker accepts TCP connections again.
"""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


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


class Publisher:
    """Sends validated interactions and waits for the broker's acknowledgement.

    The producer is created on first use (a dead broker must not stop the service from
    starting) and recreated after a failure.
    """

    def __init__(
        self, settings: Settings, *, timeout_s: float = 2.0, probe_interval_s: float = 0.5
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        self.down_reason: str | None = None
        self._producer: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="feedback")
        self._stop = threading.Event()

    def __call__(self, events: list[Any]) -> None:
        """Publish ``events``; raises Unavailable within ``timeout_s`` when it cannot."""
        reason = self.down_reason
        if reason is not None:
            raise Unavailable(f"event broker marked down: {reason}")
        future = self._pool.submit(self._send, events)
        try:
            future.result(timeout=self.timeout_s)
        except FutureTimeout:
            msg = f"event broker did not acknowledge within {self.timeout_s * 1000:.0f} ms"
            self.trip(msg)
            raise Unavailable(msg) from None
        except Unavailable as exc:
            self.trip(str(exc))
            raise

    def trip(self, reason: str) -> None:
        if self.down_reason is None:
            logger.warning("event broker breaker open: %s", reason[:200])
        self.down_reason = reason[:200]

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

    # -- probing ----------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._loop, name="broker-probe", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            if self.down_reason is None:
                continue
            if broker_reachable(self.settings.kafka.bootstrap_servers) is None:
                logger.info("event broker reachable again; breaker closed")
                self.down_reason = None
