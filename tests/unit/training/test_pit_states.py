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
