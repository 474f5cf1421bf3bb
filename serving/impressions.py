"""Impressions: every ``/recommend`` answer, logged on Kafka for experiment readouts.

An impression says what one answer showed: its ``request_id``, the variant and model
version that served it, the experiment it belongs to (``<champion>-vs-<challenger>``
versions, null without an A/B split), the items with their positions and scores, whether it was a
fallback and why (the reason's label, ``cold user``), the k asked for and when. Later,
feedback (which carries the raw user id) is attributed to the answers it follows.

**Records and redaction.** Impressions travel in batches: one record per round of the
background thread (:func:`rtrec.events.pack_impressions`, at most
:data:`rtrec.serving.impression_sender.RECORD_ITEMS` shown items each), unkeyed, because
the producer's cost is per record and one record per answer made it the larger part of
the service's CPU. Each impression carries the raw ``user_id`` (as the events topic does:
attribution joins it to the user's feedback) and the redacted ``user_id_hash``, the
token ``/recommend`` answers with; readouts, logs and dashboards built from the topic use
only the latter.

**Never on the request path.** :meth:`ImpressionLog.record` appends a reference to the
answer (already built for the response) to a bounded in-memory queue: no I/O, no JSON.
A background thread takes up to ``batch_size`` impressions at a time every
``interval_s`` and hands them to a ``KafkaProducer`` in a child process
(:mod:`rtrec.serving.impression_sender`, ``serving.impression_sender``), waiting for
the broker's acknowledgement behind a circuit breaker (:mod:`rtrec.serving.breaker`): a
broker that fails or does not answer within ``timeout_s`` opens it, and a probe closes
it once the broker accepts connections again. A full queue, an open breaker, a failed
batch or a stop that outlasts its flush drop impressions: each counted by reason in
``rtrec_serving_impressions_dropped_total`` and ``/status`` and logged at WARNING at most
every 30 s per reason (:class:`rtrec.serving.degradation.Degradations`). An answer is
never slowed or failed by the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rtrec.serving.breaker import Breaker
from rtrec.serving.degradation import Degradations
from rtrec.serving.feedback import broker_reachable
from rtrec.serving.impression_sender import (
    Entry,
    ProcessSender,
    send_batch,
)
from rtrec.serving.metrics import IMPRESSIONS, IMPRESSIONS_DROPPED

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

QUEUE_ITEMS = 50_000
"""Queue bound, in items plus one per answer: about 15 MB of answers at most, a couple of
seconds at 1,000 answers/s of k=10, more than a broker deadline (``timeout_s``) lasts."""
BATCH_SIZE = 500
"""Most impressions per producer round (one acknowledgement wait)."""
INTERVAL_S = 0.25
"""How often the background thread sends what is queued. Each round costs the producer
about the same whatever it carries (a record, a flush, the acknowledgement), so rounds
are few: at 200 answers/s, 4 rounds a second instead of 20 took the log's CPU per answer
from about 0.2 to 0.17 ms, and attribution does not mind a quarter second."""
FLUSH_S = 3.0
"""How long a stopping service keeps sending what is queued."""

QUEUE_FULL = "impression queue full"
BROKER_DOWN = "impression broker down"
STOPPED = "impression log stopped"
"""Reasons for dropped impressions (the metric's ``reason`` label, ``/status`` counts)."""


def kafka_producer(bootstrap: str, timeout_s: float) -> Any:
    """The producer: batches per partition (``linger_ms``, ``batch_size``); its own waits
    bounded by ``timeout_s`` (the breaker's deadline bounds the rest)."""
    unreachable = broker_reachable(bootstrap)
    if unreachable is not None:  # fail in ms, not after kafka-python's 30 s bootstrap
        raise Unavailable(f"impression broker unavailable: {unreachable}")
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=10,
        batch_size=256 * 1024,
        max_block_ms=int(timeout_s * 1000),
        request_timeout_ms=int(timeout_s * 1000),
    )


class ImpressionLog(Breaker):
    """The bounded queue, the thread that drains it and the producer it sends with.

    ``producer`` builds the producer from (bootstrap servers, timeout); it is called on
    first use and again after a failure, so a dead broker cannot stop the service from
    starting. :meth:`record` runs on the event loop; the rest on this log's threads.
    """

    def __init__(
        self,
        settings: Settings,
        degradations: Degradations,
        *,
        queue_items: int = QUEUE_ITEMS,
        batch_size: int = BATCH_SIZE,
        interval_s: float = INTERVAL_S,
        timeout_s: float = 2.0,
        probe_interval_s: float = 0.5,
        producer: Callable[[str, float], Any] | None = None,
    ) -> None:
        super().__init__(
            "impression broker",
            timeout_s=timeout_s,
            probe_interval_s=probe_interval_s,
            timeout_says="did not acknowledge within",
            thread_name="impressions",
            workers=1,
        )
        self.topic = settings.kafka.impressions_topic
        self.bootstrap = settings.kafka.bootstrap_servers
        self.degradations = degradations
        self.queue_items = queue_items
        self.batch_size = batch_size
        self.interval_s = interval_s
        # A producer factory runs the Kafka client in this process (tests pass stand-ins);
        # by default a child process sends (rtrec.serving.impression_sender).
        in_process = producer is not None or settings.serving.impression_sender == "thread"
        self._make_producer = producer or kafka_producer
        self._sender = None if in_process else ProcessSender(self.bootstrap, self.topic, timeout_s)
        self._producer: Any = None
        self._queue: deque[Entry] = deque()
        self._queued = 0  # items + 1 per answer, under _lock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._drainer = threading.Thread(target=self._run, name="impressions-drain", daemon=True)

    @classmethod
    def started(cls, settings: Settings, degradations: Degradations) -> ImpressionLog:
        """A log with the default bounds, its threads running (what the service uses)."""
        log = cls(settings, degradations)
        log.start()
        return log

    # -- the request path -----------------------------------------------------------
    def record(self, user_id: str, k: int, answer: dict[str, Any], label: str | None) -> None:
        """Queue ``answer`` (not copied: it is not changed once answered) or drop it."""
        if self.down_reason is not None:
            self._dropped(BROKER_DOWN, 1, self.down_reason)
            return
        if self._stopping.is_set():  # shutdown has taken the queue's last batch
            self._dropped(STOPPED, 1, "answered while the service stopped")
            return
        entry = (int(time.time() * 1000), user_id, k, label, answer)
        cost = len(answer["items"]) + 1
        with self._lock:
            room = self._queued + cost <= self.queue_items
            if room:
                self._queue.append(entry)
                self._queued += cost
        if not room:
            self._dropped(QUEUE_FULL, 1, f"{self.queue_items} items queued")

    def _dropped(self, reason: str, n: int, detail: str) -> None:
        self.degradations.record(reason, detail, metric=IMPRESSIONS_DROPPED, count=n)

    # -- the background thread ------------------------------------------------------
    def start(self) -> None:
        """Start draining the queue, and the probe that closes the breaker."""
        super().start()
        if self._sender is not None:
            try:
                self._sender.start()
            except Unavailable as exc:  # each round starts it again (dropped ones counted)
                logger.warning("impression sender not started: %s; the next round retries", exc)
        self._drainer.start()

    def shutdown(self, flush_s: float = FLUSH_S) -> None:
        """Send what is queued for up to ``flush_s``, drop and count the rest, close the
        producer. Bounded: the background thread's batch in flight and the last batch
        started here can each add one broker deadline (``timeout_s``)."""
        self._stopping.set()
        self.stop()
        if self._drainer.is_alive():
            self._drainer.join(self.timeout_s + 1)  # it stops after the batch in flight
        self._drain(until=time.monotonic() + flush_s)
        left = self._take(len(self._queue))
        if left:
            self._dropped(STOPPED, len(left), f"{len(left)} not sent within {flush_s:g} s")
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=1)
        if self._sender is not None:
            self._sender.close()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self._drain()
            except Exception:  # a bug here must not end the thread and fill the queue
                logger.exception("impression log: draining the queue failed; continuing")

    def _drain(self, until: float | None = None) -> None:
        """Ship batches until the queue is empty; the background thread (no ``until``)
        stops early when shutdown begins, which then ships the rest by its deadline."""
        while self._draining(until):
            batch = self._take(self.batch_size)
            if not batch:
                return
            self._ship(batch)

    def _draining(self, until: float | None) -> bool:
        if until is None:
            return not self._stopping.is_set()
        return time.monotonic() < until

    def _take(self, n: int) -> list[Entry]:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(n, len(self._queue)))]
            self._queued -= sum(len(e[4]["items"]) + 1 for e in batch)
        return batch

    def _ship(self, batch: list[Entry]) -> None:
        try:
            self.call(self._send, batch)
        except Unavailable as exc:
            self._dropped(BROKER_DOWN, len(batch), str(exc))
            return
        IMPRESSIONS.inc(len(batch))

    def _send(self, batch: list[Entry]) -> None:
        """Produce ``batch`` and wait for the broker's acknowledgement of every record:
        through the child process, or with this process's own producer."""
        if self._sender is not None:
            self._sender.send(batch)
            return
        try:
            if self._producer is None:
                self._producer = self._make_producer(self.bootstrap, self.timeout_s)
            send_batch(self._producer, self.topic, batch, self.timeout_s)
        except Exception as exc:
            broken, self._producer = self._producer, None
            if broken is not None:
                broken.close(timeout=0)
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"impression broker unavailable: {exc}") from exc

    def probe(self) -> str | None:
        return broker_reachable(self.bootstrap)
