"""The circuit breaker in front of the service's dependencies (online store, event broker).

A dead dependency must cost a request a bounded wait and then nothing at all: a Feast
read against a dead Redis blocks for about ten seconds (redis-py retries with backoff),
kafka-python's bootstrap against a dead broker for thirty, whatever ``max_block_ms``
says. So calls run on a small thread pool with a deadline; a failure opens the breaker,
and while it is open calls raise :class:`rtrec.errors.Unavailable` at once. A background
probe with sub-second timeouts closes it as soon as the dependency answers again.

Both breakers report alike: ``down_reason`` (``/status``), a WARNING when one opens, an
INFO line when it closes, and the ``rtrec_serving_breaker_open`` gauge and
``rtrec_serving_breaker_trips_total`` counter labelled by dependency.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from rtrec.serving.metrics import BREAKER_OPEN, BREAKER_TRIPS

from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Breaker:
    """Bounded, guarded calls to one dependency; subclasses say how to :meth:`probe` it.

    ``name`` is the dependency in words ("online store"): messages start with it and the
    metrics' ``dependency`` label is it with underscores. ``timeout_says`` words a missed
    deadline ("read exceeded" -> "online store read exceeded 250 ms").
    ``trip_after_timeouts`` consecutive missed deadlines open the breaker (a failure
    raised as ``Unavailable`` opens it at once). With ``probe_while_closed`` the probe
    runs all the time and also opens the breaker before a request finds the dependency
    dead; otherwise it runs only while the breaker is open.
    """

    def __init__(
        self,
        name: str,
        *,
        timeout_s: float,
        probe_interval_s: float,
        timeout_says: str,
        trip_after_timeouts: int = 1,
        probe_while_closed: bool = False,
        workers: int = 2,
        thread_name: str,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        self.timeout_says = timeout_says
        self.trip_after_timeouts = trip_after_timeouts
        self.probe_while_closed = probe_while_closed
        self.thread_name = thread_name
        self.down_reason: str | None = None
        self._label = name.replace(" ", "_")
        self._timeouts = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name)
        self._stop = threading.Event()
        BREAKER_OPEN.labels(self._label).set(0)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the pool within ``timeout_s``; raises Unavailable otherwise."""
        self._raise_if_open()
        future = self._pool.submit(fn, *args)
        try:
            out = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            raise self._missed_deadline() from None
        except Unavailable as exc:
            self.trip(str(exc))
            raise
        self._timeouts = 0
        return out

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """``await fn(*args)`` within ``timeout_s``, as :meth:`call` does for blocking
        functions: the event loop keeps serving other requests while it waits, and a missed
        deadline cancels the call (redis-py then drops the connection it was using)."""
        self._raise_if_open()
        try:
            async with asyncio.timeout(self.timeout_s):  # no task per call, as wait_for has
                out = await fn(*args)
        except TimeoutError:
            raise self._missed_deadline() from None
        except Unavailable as exc:
            self.trip(str(exc))
            raise
        self._timeouts = 0
        return out

    def _raise_if_open(self) -> None:
        reason = self.down_reason
        if reason is not None:
            raise Unavailable(f"{self.name} marked down: {reason}")

    def _missed_deadline(self) -> Unavailable:
        self._timeouts += 1
        msg = f"{self.name} {self.timeout_says} {self.timeout_s * 1000:.0f} ms"
        if self._timeouts >= self.trip_after_timeouts:
            self.trip(msg)
        return Unavailable(msg)

    def trip(self, reason: str) -> None:
        """Open the breaker (again) with ``reason``; later calls fail at once."""
        if self.down_reason is None:
            logger.warning("%s breaker open: %s", self.name, reason[:200])
            BREAKER_TRIPS.labels(self._label).inc()
            BREAKER_OPEN.labels(self._label).set(1)
        self.down_reason = reason[:200]

    def close(self) -> None:
        """The dependency answers again: let calls through."""
        logger.info("%s reachable again; breaker closed", self.name)
        self._timeouts = 0
        self.down_reason = None
        BREAKER_OPEN.labels(self._label).set(0)

    def probe(self) -> str | None:
        """None when the dependency answers within a fraction of a second, else why not."""
        raise NotImplementedError

    # -- probing ----------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._loop, name=f"{self.thread_name}-probe", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            if self.down_reason is None and not self.probe_while_closed:
                continue
            error = self.probe()
            if error is None and self.down_reason is not None:
                self.close()
            elif error is not None and self.probe_while_closed:
                self.trip(error)
