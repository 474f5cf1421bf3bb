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


def test_historical_user_rows_are_online_shaped_point_in_time_and_never_expire(
    tmp_path: Path,
) -> None:
    """A user's stream rows as the sink writes them offline, read back at several times:
    the row stamped at or before each time, in the online read's types (ints, a list,
    None for every field where there is no row), however old the row (no TTL: serving
    reads an idle user's row too)."""
    from rtrec.features import append_offline_rows, has_offline_user_rows, historical_user_rows
    from rtrec.features.definitions import USER_STREAM_VIEW, count_names

    settings = load_settings(work_dir=tmp_path, feast={"online_store": "sqlite"})
    apply(settings)
    assert not has_offline_user_rows(settings)
    t1, t2 = 1_750_000_000_123, 1_750_000_000_123 + 3 * DAY

    def row(items: list[str], last: int, n: int) -> dict[str, object]:
        counts = {name: n + j for j, name in enumerate(count_names())}
        return {"recent_items": items, **counts, "last_event_ms": last, "written_ms": last + 5}

    first, second = row(["i2", "i1"], t1, 1), row(["i3", "i2", "i1"], t2, 7)
    append_offline_rows(settings, USER_STREAM_VIEW, [("u1", first, t1)])
    append_offline_rows(settings, USER_STREAM_VIEW, [("u1", second, t2), ("u2", first, t1)])
    assert has_offline_user_rows(settings)
    asked = [("u1", t1 - 1), ("u1", t1), ("u1", t2 - 1), ("u1", t2 + 400 * DAY), ("u9", t2)]
    got = historical_user_rows(settings, [u for u, _ in asked], [t for _, t in asked])
    assert got[0] == {name: None for name in first} and got[4] == got[0]
    assert got[1] == first and got[2] == first  # stamped at t1: held from t1 on
    assert got[3] == second  # 400 days idle: still the user's row
    assert all(type(got[1][n]) is int for n in count_names()) and got[1]["recent_items"] == [
        "i2",
        "i1",
    ]
