"""Streaming: events onto Kafka, and the processor that turns them into features.

Public API::

    replay_dataset(settings, dataset, rate=..., speedup=...)   # producer
    publish(settings, pairs, ...)
    StreamProcessor(settings).run()                            # consumer-group member
    read_events(dir)                                            # the offline event log
    write_events(dir, frame)                                    # ... a frame that did not stream
    offline_coverage(settings, until_ms=...) -> OfflineCoverage  # does the log hold it all?
    wait_for_offline_log(settings, until_ms=..., timeout_s=...)  # ... wait until it does
    covered_rows(events, coverage)                              # rows the watermark vouches for

Offline event log (``<offline_dir>/events/*.parquet``, read by ``rtrec.training.dataset``):
user_id, item_id, event_type, ts (ms), event_time (UTC), value, partition, offset.
It is written a couple of seconds behind the online store; its watermark in Redis says
how far it covers the topic (offsets, event time), so readers judge complete data.
"""

from rtrec.streaming.coverage import (
    OfflineCoverage,
    covered_rows,
    offline_coverage,
    wait_for_offline_log,
)
from rtrec.streaming.offline import OfflineLog, read_events, write_events
from rtrec.streaming.producer import publish, publish_catalog, replay_dataset

__all__ = [
    "OfflineCoverage",
    "OfflineLog",
    "StreamProcessor",
    "covered_rows",
    "offline_coverage",
    "publish",
    "publish_catalog",
    "read_events",
    "replay_dataset",
    "run_forever",
    "wait_for_offline_log",
    "write_events",
]


def __getattr__(name: str):  # the processor pulls in Feast; import it only when asked
    if name == "StreamProcessor":
        from rtrec.streaming.processor import StreamProcessor

        return StreamProcessor
    if name == "run_forever":  # ``rtrec stream run``: the processor as a process
        from rtrec.streaming.service import run_forever

        return run_forever
    raise AttributeError(name)
