"""Which path builds the ranker's training states, and that the choice is said."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rtrec.training.candidates import UserState
from rtrec.training.pit_states import EVENT_LOG, FEAST, agreement, choose_path

from rtrec.config import load_settings


def test_feast_only_for_timed_examples_from_the_streams_log_with_its_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from rtrec.features import append_offline_rows
    from rtrec.features.definitions import USER_STREAM_VIEW, count_names

    s = load_settings(work_dir=tmp_path, feast={"online_store": "sqlite"})
    stream_log = str(s.offline_dir)
    random = choose_path(s, stream_log, None)
    assert random.kind == EVENT_LOG and "random split" in random.reason
    other = choose_path(s, str(tmp_path / "movielens"), 5)
    assert other.kind == EVENT_LOG and "not the stream's offline log" in other.reason
    with caplog.at_level(logging.WARNING, logger="rtrec.training.pit_states"):
        bare = choose_path(s, stream_log, 5)
    assert bare.kind == EVENT_LOG and "no user_stream feature rows" in bare.reason
    assert any(r.levelno == logging.WARNING for r in caplog.records)  # a degradation, said
    row = {"recent_items": ["i1"], "last_event_ms": 4, "written_ms": 4}
    row |= {name: 1 for name in count_names()}
    append_offline_rows(s, USER_STREAM_VIEW, [("u1", row, 4)])  # the sink's offline write
    assert choose_path(s, stream_log, 5).kind == FEAST


def test_agreement_counts_states_equal_to_the_event_logs() -> None:
    day = 86_400_000
    events = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "c"],
            "item_id": ["i1", "i2", "i1", "i3", "i4"],
            "ts": [1 * day, 2 * day, 1 * day, 3 * day, 9 * day],
        }
    )
    items = np.array(["i2", "i1"], dtype=object)
    same = UserState("a", items, np.array([2 * day]), (1, 2))
    stale = UserState("b", np.array(["i1"], dtype=object), np.array([1 * day]), (1, 1))
    missing = UserState("c", np.array([], dtype=object), np.array([], np.int64), (0, 0))
    out = agreement([same, stale, missing], events, now=5 * day, limit=None)
    assert out == {"users": 3, "equal_to_event_log": round(2 / 3, 4), "no_row_but_history": 0}
    out = agreement([same, stale, missing], events, now=10 * day, limit=None)
    assert out["no_row_but_history"] == 1 and out["equal_to_event_log"] == round(1 / 3, 4)


def test_states_coarser_than_the_event_log_are_refused_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One offline row per user per flush: rows that all land after the cut (a replay
    faster than the flush) leave the users without a state at the cut; the event log's
    states are used, with the reason, the measured agreement and a WARNING. Rows that
    hold the state at the cut are used."""
    from rtrec.features import append_offline_rows, apply
    from rtrec.features.definitions import USER_STREAM_VIEW, count_names
    from rtrec.training.pit_states import training_states

    s = load_settings(work_dir=tmp_path, feast={"online_store": "sqlite"})
    apply(s)
    day = 86_400_000
    events = pd.DataFrame(
        {
            "user_id": ["a", "b", "a", "b"],
            "item_id": ["i1", "i2", "i3", "i4"],
            "ts": [day, day, 3 * day, 3 * day],
        }
    )

    def row(items: list[str], last: int) -> dict[str, object]:
        # Events one a day: the 24 h and 7 d windows ending at the latest hold one and all.
        counts = {name: 0 for name in count_names()}
        counts |= {"cnt_view_24h": 1, "cnt_view_7d": len(items)}
        return {"recent_items": items, **counts, "last_event_ms": last, "written_ms": last}

    late = [(u, row(["i3", "i1"], 3 * day), 3 * day) for u in ("a", "b")]
    append_offline_rows(s, USER_STREAM_VIEW, late)  # one flush past the cut (2 days)
    with caplog.at_level(logging.WARNING, logger="rtrec.training.pit_states"):
        states_at, info = training_states(s, str(s.offline_dir), 2 * day, ["a", "b"], events, 200)
    assert states_at is None and info["source"] == EVENT_LOG and "too coarse" in info["reason"]
    assert info["agreement"] == {"users": 2, "equal_to_event_log": 0.0, "no_row_but_history": 2}
    assert info["feast_rows"] == 2 and any(r.levelno == logging.WARNING for r in caplog.records)

    exact = [("a", row(["i1"], day), day), ("b", row(["i2"], day), day)]
    append_offline_rows(s, USER_STREAM_VIEW, exact)  # the state at the cut, flushed before
    states_at, info = training_states(s, str(s.offline_dir), 2 * day, ["a", "b"], events, 200)
    assert states_at is not None and info["source"] == FEAST
    assert info["agreement"]["equal_to_event_log"] == 1.0
    assert [list(st.items) for st in states_at(["a", "b"], 2 * day)] == [["i1"], ["i2"]]


def test_the_sink_keeps_every_row_so_a_cut_inside_one_flush_finds_its_state(
    tmp_path: Path,
) -> None:
    """One flush holds two batches of user ``a``, on both sides of the cut: the state the
    online store held at the cut (after the first batch) is what Feast retrieves there, so
    the fit takes Feast's states. Kept as one row per user per flush, ``a`` would have no
    row before the cut (its only row stamped after it)."""
    from rtrec.features import apply
    from rtrec.features.definitions import USER_STREAM_VIEW
    from rtrec.streaming.aggregates import UserState as Folded
    from rtrec.streaming.aggregates import user_feature_row
    from rtrec.streaming.offline import OfflineSink
    from rtrec.training.pit_states import training_states

    class State:  # the Redis state's offline bookkeeping, nothing committed
        committed: dict[int, int] = {}

        def record_offline(self, *_: object, **__: object) -> bool:
            return True

    s = load_settings(work_dir=tmp_path, feast={"online_store": "sqlite"})
    apply(s)
    day = 86_400_000
    events = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["i1", "i2"], "ts": [day, 3 * day]})
    sink = OfflineSink(s, State(), flush_s=60.0, flush_rows=1_000)
    folded = Folded()
    for item, ts in zip(events["item_id"], events["ts"], strict=True):  # one batch each
        folded.apply(item, "view", int(ts))
        sink.remember(USER_STREAM_VIEW, [user_feature_row("a", folded, int(ts))])
    assert sink.start() and sink.collect(wait=True) == {}
    states_at, info = training_states(s, str(s.offline_dir), 2 * day, ["a"], events, 200)
    assert info["source"] == FEAST and info["agreement"]["equal_to_event_log"] == 1.0
    assert states_at is not None and [list(x.items) for x in states_at(["a"], 2 * day)] == [["i1"]]
