"""Every monitor run lands on the dashboard, judged or not, with its check-level values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rtrec.monitoring import check, panel_titles
from rtrec.monitoring.dashboards import (
    CHECK_TAG,
    LAST_CHECK,
    PANEL_TITLES,
    ensure_project,
    threshold_column,
)

from rtrec.config import load_settings
from rtrec.data import ShiftConfig, SyntheticConfig, generate

DAY = 86_400_000


@pytest.fixture(scope="module")
def shifted():
    cfg = SyntheticConfig.small(n_users=500, n_items=300, n_events=20_000, days=14)
    return generate(cfg.model_copy(update={"shift": ShiftConfig(at_fraction=0.7)}))


def _snapshots(settings) -> list[dict]:
    files = Path(str(settings.monitoring.workspace)).rglob("snapshots/*.json")
    return sorted((json.loads(f.read_text()) for f in files), key=lambda s: s["timestamp"])


def _values(snapshot: dict) -> dict[str, float]:
    out = {}
    for result in snapshot["metric_results"].values():
        loc = result["metric_value_location"]["metric"]["params"]
        if loc.get("type", "").endswith("MeanValue") and loc["column"].startswith("check_"):
            out[loc["column"]] = result["value"]
    return out


def test_judged_and_not_judged_checks_both_record_a_snapshot(tmp_path: Path, shifted) -> None:
    settings = load_settings(work_dir=tmp_path)
    judged = check(settings, events=shifted.events, items=shifted.items, alert=False)
    # A current window after the last event: no rows, so the check cannot judge.
    late = int(shifted.events["ts"].max()) + 3 * DAY
    empty = check(settings, events=shifted.events, items=shifted.items, now_ms=late, alert=False)
    assert judged.judged and not empty.judged
    assert panel_titles(settings) == list(PANEL_TITLES)

    first, second = _snapshots(settings)
    assert first["tags"][:2] == [CHECK_TAG, judged.status]
    assert second["tags"][:2] == [CHECK_TAG, "not judged"]
    assert second["tags"][2].startswith("not judged: windows have")
    assert second["metadata"]["current_rows"] == "0"

    v1, v2 = _values(first), _values(second)
    assert v1["check_judged"] == 1.0 and v2["check_judged"] == 0.0
    assert v1["check_drift_share"] == pytest.approx(judged.drift_share)
    assert "check_drift_share" not in v2 and "check_drifted" not in v2  # not judged: no value
    assert v2["check_current_rows"] == 0.0 and v2["check_reference_rows"] > 0
    assert (v1["check_share_floor"], v1["check_share_ceiling"]) == (0.0, 1.0)
    for column in judged.columns:  # each column's own threshold, judged or not
        assert v1[threshold_column(column.column)] == pytest.approx(column.threshold)
        assert v2[threshold_column(column.column)] == pytest.approx(column.threshold)
    # The judged run's snapshot still holds Evidently's own drift results.
    types = {
        r["metric_value_location"]["metric"]["params"]["type"]
        for r in first["metric_results"].values()
    }
    assert any(t.endswith("ValueDrift") for t in types)

    ws, project = ensure_project(settings)
    (last,) = [p for p in ws.get_dashboard(project.id).panels if p.title == LAST_CHECK]
    assert last.subtitle.startswith("not judged: windows have")
    assert "current 0 rows" in last.subtitle


def test_old_panels_are_replaced(tmp_path: Path) -> None:
    from evidently.sdk.models import DashboardModel
    from evidently.sdk.panels import text_panel

    settings = load_settings(work_dir=tmp_path)
    ws, project = ensure_project(settings)
    ws.save_dashboard(project.id, DashboardModel(tabs=[], panels=[text_panel("old")]))
    assert panel_titles(settings) == list(PANEL_TITLES)
    assert len(ws.list_projects()) == 1
