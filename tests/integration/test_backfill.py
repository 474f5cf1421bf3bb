"""The backfill rebuilds what the stream wrote: the same events streamed through the real
processor into one Redis db and backfilled from its offline log into another give the
same stream features, key by key and value by value (real broker, Redis and Feast)."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rtrec.features import (
    TRENDING_EPOCH_KEY,
    TRENDING_KEY,
    count_names,
    item_features,
    online_features,
)
from rtrec.features.store import TRENDING_HALF_LIFE_MS
from rtrec.streaming import StreamProcessor, backfill_online_store, publish, read_events

from rtrec.config import Settings
from rtrec.data import Dataset, SyntheticConfig, generate
from tests.stream_helpers import isolated, wait_applied

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
HOURS = [0, 1, 5, 23, 24, 30, 100, 167, 168, 190, 215]
"""Event hours, counted from the first: neighbours and gaps around the 1 h, 24 h and 7 d
windows, so counts leave windows and the oldest item hour buckets age out."""
USER_KEYS = ["recent_items", "last_event_ms", *count_names()]
ITEM_COUNTS = ["item_cnt_1h", "item_cnt_24h", "item_cnt_7d"]


def in_hours(data: Dataset) -> Dataset:
    """The data set's events, in order, spread over :data:`HOURS` (a few hundred each)."""
    ev = data.events.sort_values("ts", kind="stable").reset_index(drop=True)
    base = int(ev["ts"].iloc[0]) // HOUR_MS * HOUR_MS
    parts = np.array_split(np.arange(len(ev)), len(HOURS))
    ts = np.empty(len(ev), dtype=np.int64)
    for hour, rows in zip(HOURS, parts, strict=True):
        # Distinct, ascending times within the hour (ties would leave order to chance).
        ts[rows] = base + hour * HOUR_MS + np.arange(len(rows)) * (HOUR_MS // (len(rows) + 1))
    return dataclasses.replace(data, events=ev.assign(ts=ts))


def stream_hour_by_hour(settings: Settings, data: Dataset) -> None:
    """Publish an event hour at a time, each applied before the next is sent: the
    processor's batches each lie within one hour, as in a live stream."""
    stop = threading.Event()
    processor = StreamProcessor(settings, stop=stop)
    runner = threading.Thread(target=processor.run, name="processor", daemon=True)
    runner.start()
    try:
        sent = 0
        events = data.events
        for _, chunk in events.groupby(events["ts"] // HOUR_MS, sort=True):
            hour = dataclasses.replace(data, events=chunk)
            publish(settings, hour.iter_keyed_event_json(), progress=False)
            sent += len(chunk)
            wait_applied(settings, sent, timeout=90)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive(), "the processor did not stop"


def feature_keys(client: Any) -> set[bytes]:
    """The online store's entity keys (Feast's, binary), without rtrec's own keys."""
    return {k for k in client.scan_iter(count=1000) if not k.startswith((b"rtrec:", b"{rtrec:"))}


def trending(client: Any) -> tuple[int, dict[str, float]]:
    epoch = int(client.get(TRENDING_EPOCH_KEY))
    return epoch, {m.decode(): s for m, s in client.zrange(TRENDING_KEY, 0, -1, withscores=True)}


def rescale(score: float, epoch: int, to: int) -> float:
    """A trending score relative to ``epoch`` as relative to ``to`` (scores are sums of
    2^((ts - epoch) / half-life))."""
    return score * 2.0 ** ((epoch - to) / TRENDING_HALF_LIFE_MS)


def assert_same_features(streamed: Settings, backfilled: Settings, events: pd.DataFrame) -> None:
    import redis

    a = redis.Redis.from_url(streamed.redis.url)
    b = redis.Redis.from_url(backfilled.redis.url)
    keys = feature_keys(a)
    assert keys and keys == feature_keys(b)
    for key in keys:
        assert set(a.hkeys(key)) == set(b.hkeys(key)), key

    users = sorted(events["user_id"].astype(str).unique())
    for user, x, y in zip(
        users, online_features(streamed, users), online_features(backfilled, users), strict=True
    ):
        assert {k: x[k] for k in USER_KEYS} == {k: y[k] for k in USER_KEYS}, user

    epoch_a, scores_a = trending(a)
    epoch_b, scores_b = trending(b)
    assert scores_a.keys() == scores_b.keys() == set(events["item_id"].astype(str))
    for item, score in scores_a.items():
        assert rescale(score, epoch_a, epoch_b) == pytest.approx(scores_b[item], rel=1e-9), item

    items = sorted(scores_a)
    aged = 0
    for item, x, y in zip(
        items, item_features(streamed, items), item_features(backfilled, items), strict=True
    ):
        assert {k: x[k] for k in ITEM_COUNTS} == {k: y[k] for k in ITEM_COUNTS}, item
        assert rescale(x["trending_score"], epoch_a, epoch_b) == pytest.approx(
            y["trending_score"], rel=1e-9
        ), item
        aged += x["item_cnt_7d"] < int((events["item_id"] == item).sum())
    assert aged, "no item had events leave its 7-day window: the hours test nothing"


def test_backfill_writes_what_the_stream_wrote(stack: Settings, tmp_path: Path) -> None:
    import redis

    config = SyntheticConfig.small(seed=11, n_users=150, n_items=90, n_events=3300)
    data = in_hours(generate(config))
    streamed = isolated(stack, tmp_path / "stream")
    stream_hour_by_hour(streamed, data)
    log_dir = streamed.offline_dir / "events"
    assert len(read_events(log_dir)) == len(data.events)

    backfilled = isolated(stack, tmp_path / "backfill")
    shutil.copytree(log_dir, backfilled.offline_dir / "events")
    result = backfill_online_store(backfilled)
    assert (result.events, result.hours) == (len(data.events), len(HOURS))
    assert result.users == data.events["user_id"].nunique()
    assert result.items == data.events["item_id"].nunique()
    client = redis.Redis.from_url(backfilled.redis.url)
    rtrec_keys = {k for k in client.scan_iter(count=1000) if k.startswith((b"rtrec:", b"{rtrec:"))}
    assert rtrec_keys == {TRENDING_KEY.encode(), TRENDING_EPOCH_KEY.encode()}  # no scratch left
    assert_same_features(streamed, backfilled, data.events)

    # Over the processor's own store: its state stays as it was, and the features too.
    live = redis.Redis.from_url(streamed.redis.url)
    state_keys = sorted(
        k
        for k in live.scan_iter(count=1000)
        if k.startswith((b"rtrec:", b"{rtrec:")) and b"trending" not in k
    )
    before = {k: live.dump(k) for k in state_keys}
    again = backfill_online_store(streamed)
    assert again.trending_epoch_ms == int(live.get(TRENDING_EPOCH_KEY))  # the processor's
    assert {k: live.dump(k) for k in state_keys} == before
    assert_same_features(streamed, backfilled, data.events)
