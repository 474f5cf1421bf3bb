"""Feast's offline side of the stream views: historical retrieval is point in time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features import count_names, historical_features
from rtrec.config import Settings
from rtrec.data import SyntheticConfig, generate
from streaming import publish
from streaming.processor import StreamProcessor
from tests.stream_helpers import isolated, reference

pytestmark = pytest.mark.integration


def test_historical_stream_features_are_point_in_time(stack: Settings, tmp_path: Path) -> None:
    s = isolated(stack, tmp_path)
    data = generate(SyntheticConfig.small(seed=11, n_users=80, n_items=60, n_events=4000))
    events = data.events.reset_index(drop=True)
    assert events["ts"].is_monotonic_increasing
    pairs = list(data.iter_keyed_event_json())
    cut = len(pairs) // 2
    # Two runs, each ending with a flush: every user active in both halves has two
    # offline rows, the state after the first half and the state after everything.
    for part in (pairs[:cut], pairs[cut:]):
        publish(s, part, progress=False)
        StreamProcessor(s).run(max_idle_s=2)
    boundary = int(events["ts"].iloc[cut - 1])
    early, final = reference(events.iloc[:cut]), reference(events)
    first_ts = events.groupby("user_id")["ts"].min()
    rows = []
    for user in final:
        rows += [
            (user, int(first_ts[user]) - 1, None),  # before any event: nothing
            (user, boundary, early.get(user)),  # between the runs: the first run's state
            (user, final[user]["last_event_ms"] + 1, final[user]),  # after: everything
        ]
    entity = pd.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "event_timestamp": pd.to_datetime([t for _, t, _ in rows], unit="ms", utc=True),
        }
    )
    names = ["recent_items", "last_event_ms", *count_names()]
    out = historical_features(s, entity, [f"user_stream:{n}" for n in names])
    got = {(r.user_id, int(r.event_timestamp.value // 1_000_000)): r for r in out.itertuples()}
    for user, at, want in rows:
        row = got[(user, at)]
        if want is None:
            assert pd.isna(row.last_event_ms), (user, at)
            continue
        assert int(row.last_event_ms) <= at  # never a value from the future
        have = {n: getattr(row, n) for n in names}
        have["recent_items"] = list(have["recent_items"])
        have = {k: v if k == "recent_items" else int(v) for k, v in have.items()}
        assert have == want, (user, at)
