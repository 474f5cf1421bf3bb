"""Dataset: schema, wire JSON round trip, parquet round trip, slicing, load_dataset."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtrec.data import Dataset, ShiftConfig, SyntheticConfig, generate, load_dataset
from rtrec.errors import InvalidInput, NotFound
from rtrec.events import EVENT_TYPES, parse_event


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(SyntheticConfig.small(n_events=20_000, shift=ShiftConfig()))


def tiny(**event_overrides: list) -> Dataset:
    users = pd.DataFrame(
        {
            "user_id": ['u"1', "ü2"],
            "age": [30, None],
            "gender": ["F", None],
            "occupation": [None, "x"],
            "signup_ts": [0, 5],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": ["i\\1", "i2"],
            "title": ["a", "b"],
            "categories": [["c"], []],
            "created_ts": [0, 0],
        }
    )
    events = {
        "user_id": ["ü2", 'u"1', 'u"1'],
        "item_id": ["i2", "i\\1", "i2"],
        "event_type": ["rating", "view", "purchase"],
        "ts": [30, 10, 20],
        "value": [4.5, np.nan, 19.99],
    }
    events.update(event_overrides)
    return Dataset(users, items, pd.DataFrame(events))


def test_schema_dtypes(ds: Dataset) -> None:
    assert list(ds.users.columns) == ["user_id", "age", "gender", "occupation", "signup_ts"]
    assert list(ds.items.columns) == ["item_id", "title", "categories", "created_ts"]
    assert list(ds.events.columns) == ["user_id", "item_id", "event_type", "ts", "value"]
    assert str(ds.users["age"].dtype) == "Int64" and ds.users["age"].isna().any()
    assert ds.users["signup_ts"].dtype == np.int64 and ds.items["created_ts"].dtype == np.int64
    assert ds.events["ts"].dtype == np.int64 and ds.events["value"].dtype == np.float64
    assert all(isinstance(c, list) for c in ds.items["categories"])
    assert isinstance(ds.events["user_id"].iloc[0], str)
    assert ds.users["gender"].isna().any() and ds.users["gender"].dropna().map(type).eq(str).all()


def test_events_are_sorted_stably_on_construction() -> None:
    d = tiny()
    assert list(d.events["ts"]) == [10, 20, 30]
    assert list(d.events["event_type"]) == ["view", "purchase", "rating"]


def test_event_json_round_trips_through_parse_event(ds: Dataset) -> None:
    payloads = list(ds.iter_event_json())
    assert len(payloads) == len(ds.events)
    parsed = [parse_event(p) for p in payloads]
    assert [e.user_id for e in parsed] == ds.events["user_id"].tolist()
    assert [e.item_id for e in parsed] == ds.events["item_id"].tolist()
    assert [e.event_type.value for e in parsed] == ds.events["event_type"].tolist()
    assert [e.ts for e in parsed] == ds.events["ts"].tolist()
    values = [math.nan if e.value is None else e.value for e in parsed]
    np.testing.assert_array_equal(np.array(values), ds.events["value"].to_numpy())
    assert parsed[:50] == list(ds.iter_interactions())[:50]


def test_event_json_escapes_ids_and_keys_by_user() -> None:
    pairs = list(tiny().iter_keyed_event_json())
    events = [parse_event(v) for _, v in pairs]
    assert [e.user_id for e in events] == ['u"1', 'u"1', "ü2"]
    assert [e.item_id for e in events] == ["i\\1", "i2", "i2"]
    assert [k.decode() for k, _ in pairs] == ['u"1', 'u"1', "ü2"]
    assert events[0].value is None and "value" not in json.loads(pairs[0][1])
    assert events[2].value == 4.5


def test_event_json_is_fast(ds: Dataset) -> None:
    t0 = time.perf_counter()
    n = sum(1 for _ in ds.iter_event_json())
    rate = n / (time.perf_counter() - t0)
    assert rate > 100_000  # the producer needs >= 50k/s; measured ~1M/s


def test_save_load_round_trip(ds: Dataset, tmp_path: Path) -> None:
    back = Dataset.load(ds.save(tmp_path / "d"))
    for name in ("users", "items", "events"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(ds, name))
    assert back.meta["shift_ts"] == ds.meta["shift_ts"]
    odd = tiny()
    back = Dataset.load(odd.save(tmp_path / "odd"))
    pd.testing.assert_frame_equal(back.users, odd.users)
    assert back.users["gender"].tolist() == ["F", None]
    assert back.items["categories"].tolist() == [["c"], []]


def test_parquet_has_plain_int64_timestamps(ds: Dataset, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    ds.save(tmp_path)
    schema = pq.read_schema(tmp_path / "events.parquet")
    assert str(schema.field("ts").type) == "int64"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"users\.parquet"):
        Dataset.load(tmp_path)


def test_validate_names_the_problem() -> None:
    with pytest.raises(InvalidInput, match="unknown event_type 'like'"):
        tiny(event_type=["rating", "like", "view"]).validate()
    with pytest.raises(InvalidInput, match="item_id 'i9' is not in the table"):
        tiny(item_id=["i2", "i9", "i2"]).validate()
    with pytest.raises(InvalidInput, match="rating without a value"):
        tiny(value=[np.nan, np.nan, 1.0]).validate()
    with pytest.raises(InvalidInput, match="lacks column"):
        Dataset(tiny().users, tiny().items, tiny().events.drop(columns="value"))


def test_summary(ds: Dataset) -> None:
    s = ds.summary()
    assert s["n_events"] == 20_000 and s["n_users"] == 2_000
    assert set(s["event_types"]) <= set(EVENT_TYPES)
    assert sum(s["event_types"].values()) == 20_000
    assert 0.0 < s["top1pct_item_share"] < 1.0
    assert s["start_ts"] <= s["end_ts"] and s["source"] == "synthetic"
    json.dumps(s)  # reports embed it


def test_time_slice(ds: Dataset) -> None:
    mid = ds.meta["shift_ts"]
    before, after = ds.time_slice(None, mid), ds.time_slice(mid, None)
    assert len(before.events) + len(after.events) == len(ds.events)
    assert before.events["ts"].max() < mid <= after.events["ts"].min()
    # Items created at the shift are not in the catalog known before it.
    new = set(ds.items.loc[ds.items["created_ts"] >= mid, "item_id"])
    assert new and not new & set(before.items["item_id"])
    before.validate()
    after.validate()


def test_load_dataset_sources(tmp_path: Path) -> None:
    small = load_dataset("synthetic:small", n_events=1_000, seed=3)
    assert len(small.events) == 1_000 and small.meta["config"]["seed"] == 3
    saved = small.save(tmp_path / "saved")
    pd.testing.assert_frame_equal(load_dataset(saved).events, small.events)
    with pytest.raises(InvalidInput, match="unknown synthetic preset"):
        load_dataset("synthetic:huge")
    with pytest.raises(InvalidInput, match="only apply to synthetic"):
        load_dataset(saved, seed=1)
    with pytest.raises(NotFound, match="neither"):
        load_dataset(tmp_path / "missing")
