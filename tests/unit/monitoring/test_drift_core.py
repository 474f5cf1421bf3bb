"""Drift verdicts on generated data: shifted windows alert, stationary ones do not."""

from __future__ import annotations

from pathlib import Path

import pytest
from rtrec.monitoring import check, drift_report, panel_titles, popularity_ranks, window_features
from rtrec.monitoring.dashboards import PANEL_TITLES
from rtrec.monitoring.drift import MIN_ROWS, outcome_drift

from rtrec.config import load_settings
from rtrec.data import ShiftConfig, SyntheticConfig, generate

DAY = 86_400_000


@pytest.fixture(scope="module")
def stationary():
    return generate(SyntheticConfig.small(seed=7, n_events=150_000))


@pytest.fixture(scope="module")
def shifted():
    return generate(
        SyntheticConfig.small(seed=7, n_events=150_000, shift=ShiftConfig(at_fraction=0.6))
    )


def _verdict(ds, day: int):
    ev, t0 = ds.events, int(ds.events.ts.min())
    ref = ev[(ev.ts >= t0 + (day - 7) * DAY) & (ev.ts < t0 + day * DAY)]
    cur = ev[(ev.ts >= t0 + day * DAY) & (ev.ts < t0 + (day + 1) * DAY)]
    ranks = popularity_ranks(ref)
    return drift_report(
        window_features(ref, ds.items, popularity_rank=ranks),
        window_features(cur, ds.items, popularity_rank=ranks),
    )


def test_stationary_windows_do_not_alert(stationary) -> None:
    verdicts = [_verdict(stationary, d) for d in range(7, 29, 3)]
    assert not any(v.drifted for v in verdicts), [v.reason for v in verdicts if v.drifted]
    assert all(v.current_rows >= MIN_ROWS for v in verdicts)


def test_shift_is_detected_on_the_first_window_after_it(shifted) -> None:
    shift_day = (shifted.meta["shift_ts"] - int(shifted.events.ts.min())) / DAY
    first = int(shift_day) + (shift_day % 1 > 0)
    before = _verdict(shifted, first - 2)
    after = _verdict(shifted, first)
    assert not before.drifted
    assert after.drifted, after.reason
    assert "item_pop_rank" in after.drifted_columns
    assert after.to_dict()["drifted_columns"] == after.drifted_columns


def test_small_windows_are_not_judged(stationary) -> None:
    ev = stationary.events
    f = window_features(ev.head(50), stationary.items)
    v = drift_report(f, f)
    assert not v.drifted and "not judged" in v.reason
    assert not v.judged and v.status == "not judged"
    out = v.to_dict()  # what the DAG's XCom carries
    assert out["status"] == "not judged" and out["judged"] is False
    assert out["summary"] == "not judged: windows have 50 and 50 rows (need 200)"


def test_outcome_rate_test() -> None:
    assert not outcome_drift((100, 1000), (104, 1000)).drifted
    moved = outcome_drift((100, 10_000), (300, 10_000))
    assert moved.drifted and moved.current_rate == pytest.approx(0.03)


def test_check_records_snapshot_and_dashboard(tmp_path: Path, shifted) -> None:
    settings = load_settings(work_dir=tmp_path)
    verdict = check(settings, events=shifted.events, items=shifted.items, alert=False)
    assert verdict.snapshot is not None
    assert panel_titles(settings) == list(PANEL_TITLES)
    runs = list((tmp_path / "evidently").rglob("snapshots/*.json"))
    assert len(runs) == 1
    check(settings, events=shifted.events, items=shifted.items, alert=False)
    assert len(list((tmp_path / "evidently").rglob("snapshots/*.json"))) == 2
    assert panel_titles(settings) == list(PANEL_TITLES)  # panels are not duplicated
