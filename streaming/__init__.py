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
    run_forever(settings, metrics_port=..., stop=...)           # `rtrec stream run`
    backfill_online_store(settings, end_ms=..., days=...)     # the log -> online store
    ExperimentJoin(settings).run()                              # impressions x outcomes
    experiment_keys(settings), arm_keys(prefix, exp, variant)   # ... its Redis aggregates
    read_arm_rows(settings)                                     # ... and its offline rows

Offline event log (``<offline_dir>/events/*.parquet``, read by ``rtrec.training.dataset``):
user_id, item_id, event_type, ts (ms), event_time (UTC), value, partition, offset.
It is written a couple of seconds behind the online store; its watermark in Redis says
how far it covers the topic (offsets, event time), so readers judge complete data.
"""

from rtrec.lazy import lazy_exports

_EXPORTS = {
    "backfill_online_store": "rtrec.streaming.backfill",
    "OfflineCoverage": "rtrec.streaming.coverage",
    "covered_rows": "rtrec.streaming.coverage",
    "offline_coverage": "rtrec.streaming.coverage",
    "wait_for_offline_log": "rtrec.streaming.coverage",
    "OfflineLog": "rtrec.streaming.offline",
    "read_events": "rtrec.streaming.event_log",
    "write_events": "rtrec.streaming.event_log",
    "StreamProcessor": "rtrec.streaming.processor",
    "ExperimentJoin": "rtrec.streaming.experiment_join",
    "NO_EXPERIMENT": "rtrec.streaming.attribution",
    "arm_keys": "rtrec.streaming.experiment_state",
    "arm_user_key": "rtrec.streaming.experiment_state",
    "arm_row": "rtrec.streaming.experiment_state",
    "experiment_keys": "rtrec.streaming.experiment_state",
    "read_arm_rows": "rtrec.streaming.experiment_store",
    "publish": "rtrec.streaming.producer",
    "publish_catalog": "rtrec.streaming.producer",
    "replay_dataset": "rtrec.streaming.producer",
    "run_forever": "rtrec.streaming.service",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
