"""Point-in-time retrieval from the offline store (duckdb over parquet), no services needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rtrec.features import apply, historical_features, write_offline_metadata

from rtrec.config import load_settings

DAY = 86_400_000


def test_historical_features_are_point_in_time(tmp_path: Path) -> None:
    # Offline retrieval needs no Redis: an explicit SQLite online store, duckdb offline.
    settings = load_settings(work_dir=tmp_path, feast={"online_store": "sqlite"})
    t0 = 1_750_000_000_000
    items = pd.DataFrame(
        {
            "item_id": ["a", "b"],
            "title": ["A", "B"],
            "categories": [["drama"], ["comedy"]],
            "created_ts": [t0, t0 + 10 * DAY],
        }
    )
    users = pd.DataFrame(
        {"user_id": ["u1"], "age": [30], "gender": ["F"], "occupation": ["x"], "signup_ts": [t0]}
    )
    write_offline_metadata(settings, items, users)
    apply(settings)
    entity = pd.DataFrame(
        {
            "item_id": ["a", "b", "b"],
            "event_timestamp": pd.to_datetime(
                [t0 + DAY, t0 + DAY, t0 + 11 * DAY], unit="ms", utc=True
            ),
        }
    )
    out = historical_features(
        settings, entity, ["item_metadata:title", "item_metadata:categories"]
    ).sort_values(["item_id", "event_timestamp"])
    titles = out["title"].tolist()
    # 'b' did not exist at t0 + 1 day: no value leaks back from its later creation.
    assert titles[0] == "A"
    assert pd.isna(titles[1])
    assert titles[2] == "B"
    assert list(out["categories"].iloc[2]) == ["comedy"]
