"""The stream processor as a long-running process: signals, metrics endpoint, collector.

``rtrec stream run`` calls :func:`run_forever`; the settings here are process-wide (signal
handlers, the garbage collector), so they belong to the entry point, not to
:class:`rtrec.streaming.processor.StreamProcessor`, which tests and benchmarks also run
inside their own processes.
"""

from __future__ import annotations

import gc
import signal
import threading

from rtrec.streaming import metrics
from rtrec.streaming.batch import BatchResult
from rtrec.streaming.experiment_join import ExperimentJoin
from rtrec.streaming.processor import StreamProcessor

from rtrec.config import Settings

GC_THRESHOLDS = (50_000, 50, 100)
"""Allocations between young collections, and young (middle) collections between older
ones. The processor allocates a few short-lived objects per event and keeps every active
user's state; at Python's default (700, 10, 10) the collector rescanned that state so
often that it took a third of the time (bench/streaming.py: 21k -> 33k events/s)."""


def tune_gc() -> None:
    """Collector settings for a long-running processor: what exists once it has started
    (modules, the feature store, the consumer) is frozen out of collections, and
    collections run at :data:`GC_THRESHOLDS`. Process-wide, hence called by the entry
    point (:func:`run_forever`), not by :class:`StreamProcessor`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_forever(
    settings: Settings,
    *,
    metrics_port: int | None = None,
    stop: threading.Event | None = None,
) -> BatchResult:
    """Entry point of ``rtrec stream run``: process until SIGTERM/SIGINT, then stop cleanly;
    the experiment join runs beside the processor and stops with it.

    ``stop``: an event the caller's signal handlers already set (so a signal during
    start-up is not lost); without one, handlers are installed here.
    """
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    if metrics_port:
        metrics.serve(metrics_port)
    if stop.is_set():
        return BatchResult()
    processor = StreamProcessor(settings, stop=stop)
    # Impressions joined to outcomes for the experiment readout: its own consumer and
    # state (rtrec.streaming.experiment_join), on a thread beside the feature processor.
    join = ExperimentJoin(settings, stop=stop)
    joiner = threading.Thread(target=join.run, name="experiment-join", daemon=True)
    tune_gc()
    joiner.start()
    try:
        return processor.run()
    finally:
        stop.set()
        joiner.join(timeout=30)
