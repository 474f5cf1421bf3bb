"""Event-loop stalls and collector pauses, measured in the service and named when they happen.

Every request of the service runs on one asyncio loop, so anything that holds that loop —
a blocking call on it, a thread that keeps the GIL, a full garbage collection — delays
every request in flight at once. Percentiles show the delay but not its cause; these
two instruments do:

- :class:`LoopWatch` schedules a heartbeat every ``period_s`` on the loop and measures how
  late each one runs (``rtrec_serving_loop_lag_seconds``). A watchdog thread samples the
  loop thread's stack while a heartbeat is overdue, so a stall longer than ``warn_s`` is
  logged at WARNING with the frames that held the loop (or none, when the stack could not
  be sampled because the whole interpreter was stopped: a collection, a GIL held in C).
- :func:`time_collections` times each garbage collection through ``gc.callbacks``
  (``rtrec_serving_gc_pause_seconds`` by generation); one longer than ``warn_s`` is logged
  at WARNING with what it collected.

Both cost a few microseconds per heartbeat or collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback
from typing import Any

from rtrec.serving import metrics
from rtrec.serving.metrics import GC_PAUSE, LOOP_LAG

logger = logging.getLogger(__name__)


class LoopWatch:
    """Heartbeat on the loop plus a watchdog thread that catches what held it."""

    def __init__(self, *, period_s: float = 0.01, warn_s: float = 0.05) -> None:
        self.period_s, self.warn_s = period_s, warn_s
        self.max_lag_s = 0.0
        self.stalls = 0
        self._beat = time.perf_counter()
        self._sampled: list[str] | None = None
        self._loop_thread = 0
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop (call from a coroutine on the service's loop)."""
        self._loop_thread = threading.get_ident()
        self._beat = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())
        threading.Thread(target=self._watchdog, name="loop-watchdog", daemon=True).start()

    def status(self) -> dict[str, float | int]:
        """What /status shows: the worst lag since start and the stalls logged."""
        return {"max_lag_ms": round(self.max_lag_s * 1000, 2), "stalls": self.stalls}

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    async def _heartbeat(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.period_s)
            now = time.perf_counter()
            lag = max(0.0, now - self._beat - self.period_s)
            self._beat = now
            self.record(lag, self._sampled)
            self._sampled = None

    def record(self, lag_s: float, frames: list[str] | None) -> None:
        metrics.record(LOOP_LAG, lag_s)
        self.max_lag_s = max(self.max_lag_s, lag_s)
        if lag_s < self.warn_s:
            return
        self.stalls += 1
        logger.warning(
            "event loop stalled",
            extra={
                "lag_ms": round(lag_s * 1000, 1),
                "held_by": frames or "not sampled (the interpreter itself was stopped)",
            },
        )

    def _watchdog(self) -> None:
        """Sample the loop thread's stack once per overdue heartbeat, at half the warning
        threshold, so the frames are those of the stall and not of what came after."""
        sampled_for = 0.0
        while not self._stop.wait(self.warn_s / 4):
            beat = self._beat
            if beat == sampled_for or time.perf_counter() - beat < self.period_s + self.warn_s / 2:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is not None:
                self._sampled = _summary(frame)
                sampled_for = beat


def _summary(frame: Any, depth: int = 8) -> list[str]:
    stack = traceback.extract_stack(frame)[-depth:]
    return [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in stack]


class _CollectionTimer:
    def __init__(self, warn_s: float) -> None:
        self.warn_s = warn_s
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info.get("generation", -1)
        metrics.record(GC_PAUSE, took, str(generation))  # written out by the next flush
        if took >= self.warn_s:
            logger.warning(
                "garbage collection paused the service",
                extra={
                    "pause_ms": round(took * 1000, 1),
                    "generation": generation,
                    "collected": info.get("collected"),
                },
            )


def time_collections(*, warn_s: float = 0.02) -> None:
    """Time every collection of this process from now on (once per process)."""
    if not any(isinstance(cb, _CollectionTimer) for cb in gc.callbacks):
        gc.callbacks.append(_CollectionTimer(warn_s))


async def heartbeat(
    start: float, stalls: list[tuple[float, float]], *, min_lag_s=0.01, period_s: float = 0.005
) -> None:
    """Append (seconds from ``start``, lag) whenever this loop ran a heartbeat more than
    ``min_lag_s`` late: a load generator's own stalls, told apart from the server's."""
    last = time.perf_counter()
    while True:
        await asyncio.sleep(period_s)
        now = time.perf_counter()
        if now - last - period_s > min_lag_s:
            stalls.append((round(last - start, 4), round(now - last - period_s, 4)))
        last = now
