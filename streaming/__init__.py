"""Streaming: events onto Kafka, and the processor that turns them into features.

Public API::

    replay_dataset(settings, dataset, rate=..., speedup=...)   # producer
    publish(settings, pairs, ...)
    StreamProcessor(settings).run()                            # consumer-group member
    read_events(dir)                                            # the offline event log

Offline event log (``<offline_dir>/events/*.parquet``, read by ``training.dataset``):
user_id, item_id, event_type, ts (ms), event_time (UTC), value, partition, offset.
"""

from streaming.offline import OfflineLog, read_events
from streaming.producer import publish, publish_catalog, replay_dataset

__all__ = [
    "OfflineLog",
    "StreamProcessor",
    "publish",
    "publish_catalog",
    "read_events",
    "replay_dataset",
]


def __getattr__(name: str):  # the processor pulls in Feast; import it only when asked
    if name == "StreamProcessor":
        from streaming.processor import StreamProcessor

        return StreamProcessor
    raise AttributeError(name)
