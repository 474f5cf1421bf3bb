"""Spark training sets: point-in-time features leak nothing from the example's future.

One real local SparkSession serves the whole module (~6 s to start).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rtrec.training.dataset import (
    COUNT_WINDOWS_MS,
    SplitConfig,
    TrainingSets,
    build_training_sets,
    count_columns,
    point_in_time_features,
    spark_session,
    stop_spark,
    write_event_log,
)

from rtrec.config import Settings, load_settings
from rtrec.data import Dataset
from rtrec.errors import InvalidInput, NotFound
from rtrec.events import EVENT_TYPES

pytestmark = pytest.mark.timeout(300)

T0 = 1_750_000_000_000
HOUR = 3_600_000


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = load_settings(work_dir=tmp_path_factory.mktemp("work"))
    s.spark.master = "local[2]"
    s.spark.driver_memory = "1g"
    yield s
    stop_spark()


def _events(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])
    frame["value"] = np.where(frame["event_type"] == "rating", 4.0, np.nan)
    return frame


def _dataset(events: pd.DataFrame) -> Dataset:
    users = pd.DataFrame({"user_id": sorted(events["user_id"].unique())})
    users = users.assign(age=30, gender="f", occupation="other", signup_ts=0)
    items = pd.DataFrame({"item_id": sorted(events["item_id"].unique())})
    items = items.assign(title="t", categories=[["books"]] * len(items), created_ts=0)
    return Dataset(users, items, events)


def _random_events(seed: int, n: int = 800) -> pd.DataFrame:
    """Events with many simultaneous ones per user and a few exact duplicates."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 25, n)
    ts = T0 + rng.integers(0, 400, n) * 1_800_000 + rng.integers(0, 3, n) * 1000
    frame = _events(
        [
            (f"u{u}", f"i{i}", EVENT_TYPES[t], int(s))
            for u, i, t, s in zip(
                users, rng.integers(0, 40, n), rng.integers(0, len(EVENT_TYPES), n), ts, strict=True
            )
        ]
    )
    return pd.concat([frame, frame.iloc[:20]], ignore_index=True)  # at-least-once duplicates


def _reference(events: pd.DataFrame, history_len: int) -> pd.DataFrame:
    """Brute force: for each event, look at the same user's events strictly before it."""
    ev = events.drop_duplicates(["user_id", "item_id", "event_type", "ts"])
    out = []
    for user, grp in ev.groupby("user_id"):
        for _, row in grp.iterrows():
            prior = grp[grp["ts"] < row["ts"]]
            hist: list[str] = []
            for _, same_ts in sorted(prior.groupby("ts"), key=lambda kv: -kv[0]):
                hist += sorted(same_ts["item_id"])[:history_len][::-1]
            feats = {"user_id": user, "item_id": row["item_id"], "event_type": row["event_type"]}
            feats |= {"ts": row["ts"], "hist": hist[:history_len], "n_prev": len(prior)}
            for t in EVENT_TYPES:
                for w, ms in COUNT_WINDOWS_MS.items():
                    recent = prior[(prior["ts"] >= row["ts"] - ms) & (prior["event_type"] == t)]
                    feats[f"cnt_{t}_{w}"] = len(recent)
            gaps = row["ts"] - prior["ts"]
            feats["secs"] = gaps.min() / 1000.0 if len(prior) else None
            out.append(feats)
    return pd.DataFrame(out)


def test_features_match_brute_force_point_in_time(settings: Settings) -> None:
    events = _random_events(seed=1).drop_duplicates()  # deduplication is the reader's job
    spark = spark_session(settings)
    got = point_in_time_features(spark.createDataFrame(events), history_len=5).toPandas()
    want = _reference(events, history_len=5)
    merged = want.merge(got, on=["user_id", "item_id", "event_type", "ts"], validate="1:1")
    assert len(merged) == len(want) == len(got)
    assert [list(h) for h in merged["hist_item_ids"]] == merged["hist"].tolist()
    assert (merged["n_prev_events"] == merged["n_prev"]).all()
    for col in count_columns():
        assert (merged[col + "_x"] == merged[col + "_y"]).all(), col
    assert merged["secs_since_prev"].isna().equals(merged["secs"].isna())
    both = merged["secs"].notna()
    assert np.allclose(merged.loc[both, "secs_since_prev"], merged.loc[both, "secs"].astype(float))


def test_event_at_or_after_t_never_reaches_example_at_t(settings: Settings) -> None:
    t = T0 + 10 * HOUR
    events = _events(
        [
            ("u1", "a", "view", t - HOUR // 2),
            ("u1", "b", "click", t),
            ("u1", "c", "purchase", t),  # same instant as the example: not "before"
            ("u1", "d", "view", t + 1),  # one ms later
            ("u2", "x", "view", t - 1),  # another user
        ]
    )
    spark = spark_session(settings)
    rows = point_in_time_features(spark.createDataFrame(events), history_len=10).toPandas()
    at_t = rows[(rows["user_id"] == "u1") & (rows["item_id"] == "b")].iloc[0]
    assert list(at_t["hist_item_ids"]) == ["a"]
    assert at_t["cnt_view_1h"] == 1 and at_t["cnt_purchase_1h"] == 0 and at_t["cnt_view_7d"] == 1
    assert at_t["n_prev_events"] == 1
    assert at_t["secs_since_prev"] == pytest.approx(HOUR / 2 / 1000)
    later = rows[rows["item_id"] == "d"].iloc[0]
    assert list(later["hist_item_ids"]) == ["c", "b", "a"]
    assert later["cnt_purchase_1h"] == 1 and later["secs_since_prev"] == pytest.approx(0.001)
    first = rows[rows["item_id"] == "a"].iloc[0]
    assert list(first["hist_item_ids"]) == [] and pd.isna(first["secs_since_prev"])


def test_appending_future_events_leaves_past_examples_unchanged(
    settings: Settings, tmp_path: Path
) -> None:
    """The metamorphic form of no-leakage: later events change no earlier example."""
    events = _random_events(seed=2, n=400)
    cut = int(events["ts"].quantile(0.6))
    future = _random_events(seed=3, n=300)
    future["ts"] = future["ts"] - future["ts"].min() + cut + 1  # all strictly after the cut
    cfg = SplitConfig(protocol="random", valid_frac=0.0, test_frac=0.25, history_len=5)

    def examples_up_to_cut(frame: pd.DataFrame, name: str) -> pd.DataFrame:
        root = write_event_log(_dataset(frame), tmp_path / name / "log")
        out = tmp_path / name / "sets"
        sets = build_training_sets(settings, source=root, out_dir=out, config=cfg)
        both = pd.concat([sets.read(s) for s in ("train", "validation", "test")])
        both = both[both["ts"] <= cut].drop(columns=["event_time"])
        both["hist_item_ids"] = both["hist_item_ids"].map(list)
        both["item_categories"] = both["item_categories"].map(list)
        return both.sort_values(["user_id", "ts", "item_id", "event_type"]).reset_index(drop=True)

    before = examples_up_to_cut(events, "before")
    after = examples_up_to_cut(pd.concat([events, future], ignore_index=True), "after")
    assert len(before) > 200
    pd.testing.assert_frame_equal(before, after)


def test_temporal_split_cuts_global_time_and_keeps_every_event(
    settings: Settings, tmp_path: Path
) -> None:
    events = _random_events(seed=4)
    root = write_event_log(_dataset(events), tmp_path / "log")
    sets = build_training_sets(settings, source=root, out_dir=tmp_path / "sets")
    train, valid, test = (sets.read(s) for s in ("train", "validation", "test"))
    assert train["ts"].max() < valid["ts"].min() and valid["ts"].max() < test["ts"].min()
    # No gate slice in the benchmark split: its cut coincides with test's.
    assert sets.cut_ts == [int(valid["ts"].min()), int(test["ts"].min()), int(test["ts"].min())]
    assert sets.read("gate").empty and list(sets.read("gate").columns) == list(test.columns)
    n_unique = len(events.drop_duplicates())
    assert len(train) + len(valid) + len(test) == n_unique == sum(sets.counts.values())
    assert 0.05 < len(test) / n_unique < 0.15 and 0.7 < len(train) / n_unique < 0.9
    assert set(count_columns()) <= set(train.columns)
    assert {"user_age", "user_gender", "item_categories", "event_time"} <= set(train.columns)
    assert str(train["event_time"].dtype) == "datetime64[us, UTC]"
    assert (train["event_time"].astype("int64") // 1000 == train["ts"]).all()
    assert TrainingSets.load(sets.root).counts == sets.counts


def test_product_split_ends_with_the_gate_slice_and_records_its_range(
    settings: Settings, tmp_path: Path
) -> None:
    """train | validation | gate in time order, the gate slice the most recent period and
    no test: the slice the promotion gate judges on, touched by no selection step."""
    from rtrec.training.pipeline import split_config

    events = _random_events(seed=6)
    root = write_event_log(_dataset(events), tmp_path / "log")
    cfg = split_config(settings, "temporal")
    sets = build_training_sets(settings, source=root, out_dir=tmp_path / "sets", config=cfg)
    train, valid, gate, test = (sets.read(s) for s in ("train", "validation", "gate", "test"))
    assert test.empty and not gate.empty
    assert train["ts"].max() < valid["ts"].min() and valid["ts"].max() < gate["ts"].min()
    assert gate["ts"].max() == events["ts"].max()
    assert sets.cut_ts[:2] == [int(valid["ts"].min()), int(gate["ts"].min())]
    assert sets.ts_range["gate"] == [int(gate["ts"].min()), int(gate["ts"].max())]
    n_unique = len(events.drop_duplicates())
    assert 0.05 < len(gate) / n_unique < 0.15
    assert TrainingSets.load(sets.root).ts_range == sets.ts_range


def test_random_split_is_per_user_75_25_and_disjoint(settings: Settings, tmp_path: Path) -> None:
    events = _random_events(seed=5)
    root = write_event_log(_dataset(events), tmp_path / "log")
    cfg = SplitConfig.published(history_len=5)
    sets = build_training_sets(settings, source=root, out_dir=tmp_path / "sets", config=cfg)
    train, valid, test = (sets.read(s) for s in ("train", "validation", "test"))
    assert len(valid) == 0
    key = ["user_id", "item_id", "event_type", "ts"]
    assert train.merge(test, on=key).empty
    per_user = test.groupby("user_id").size() / (
        train.groupby("user_id").size() + test.groupby("user_id").size()
    )
    assert per_user.between(0.15, 0.35).all(), per_user.describe()
    again = build_training_sets(settings, source=root, out_dir=tmp_path / "again", config=cfg)
    assert again.read("test")[key].equals(test[key])  # seeded: same split every time


def test_missing_event_log_and_bad_config_fail_by_name(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="event log"):
        build_training_sets(settings, source=tmp_path / "nothing", out_dir=tmp_path / "o")
    with pytest.raises(InvalidInput, match="protocol"):
        SplitConfig(protocol="weekly")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        SplitConfig(valid_frac=0.5, test_frac=0.5)
    with pytest.raises(InvalidInput, match="held-out"):
        SplitConfig(test_frac=0.0, gate_frac=0.0)
