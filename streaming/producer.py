"""Replay a data set onto the events topic, keyed by user id.

At a target rate, as fast as possible, or re-timed from the events' own timestamps
(``speedup``: 60 = an hour of events per minute).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from rtrec.config import Settings


def make_producer(settings: Settings) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=10,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


def publish(
    settings: Settings,
    pairs: Iterable[tuple[bytes, bytes]],
    *,
    total: int | None = None,
    rate: float | None = None,
    timestamps: Iterable[int] | None = None,
    speedup: float | None = None,
    progress: bool = True,
    producer: Any = None,
) -> dict[str, float]:
    """Send ``(key, value)`` pairs; pace by ``rate`` (events/s) or by ``timestamps``/``speedup``."""
    own = producer is None
    producer = producer or make_producer(settings)
    topic = settings.kafka.events_topic
    ts_iter = iter(timestamps) if timestamps is not None and speedup else None
    start = time.perf_counter()
    first_ts: int | None = None
    n = 0
    with tqdm(total=total, desc="replay", unit="ev", disable=not progress, leave=False) as bar:
        for key, value in pairs:
            if rate:
                lag = start + n / rate - time.perf_counter()
                if lag > 0:
                    time.sleep(lag)
            elif ts_iter is not None:
                ts = next(ts_iter)
                first_ts = ts if first_ts is None else first_ts
                lag = start + (ts - first_ts) / 1000 / float(speedup or 1) - time.perf_counter()
                if lag > 0:
                    time.sleep(lag)
            producer.send(topic, key=key, value=value)
            n += 1
            if n % 2000 == 0:
                bar.update(2000)
        producer.flush()
        bar.update(n - bar.n)
    seconds = time.perf_counter() - start
    if own:
        producer.close()
    return {"published": n, "seconds": seconds, "events_per_s": n / seconds if seconds else 0.0}


def publish_catalog(settings: Settings, dataset: Any) -> None:
    """Items and user profiles into the offline store (training's join tables, Feast's
    batch views); catalog data is reference data, not an event stream."""
    from rtrec.features import write_offline_metadata

    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("items", dataset.items), ("users", dataset.users)):
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False),
            settings.offline_dir / f"{name}.parquet",
        )
    write_offline_metadata(settings, dataset.items, dataset.users)


def replay_dataset(
    settings: Settings,
    dataset: Any,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Publish the catalog, then every event of ``dataset`` in time order."""
    publish_catalog(settings, dataset)
    return publish(
        settings,
        dataset.iter_keyed_event_json(),
        total=len(dataset.events),
        rate=rate,
        timestamps=dataset.events["ts"].tolist() if speedup else None,
        speedup=speedup,
        progress=progress,
    )
